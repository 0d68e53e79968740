"""The Tensor-Core PTX layer on a real GPU: one Numba ``@intrinsic`` per PTX instruction, each one ``ir.InlineAsm``.

Import these through :mod:`flashllm_nb.kernels.ptx`, which binds this module when the CUDA simulator is off and
the Python twins of :mod:`flashllm_nb.kernels.ptx_sim` when it is on. Modelled on numba-cuda's
``numba/cuda/cache_hints.py``.

PTX ISA references (https://docs.nvidia.com/cuda/parallel-thread-execution/index.html#...):

- ``warp-level-matrix-instructions-mma``, "Matrix multiply-accumulate operation using mma instruction", and
  ``warp-level-matrix-fragment-mma-16816-float``, "Matrix Fragments for mma.m16n8k16 with floating point type"
- ``warp-level-matrix-instructions-ldmatrix``, "Warp-level matrix load instruction: ldmatrix"
- ``data-movement-and-conversion-instructions-cp-async``, ``...-cp-async-commit-group``,
  ``...-cp-async-wait-group`` ("Non-bulk asynchronous copy")
- ``data-movement-and-conversion-instructions-ld-global-nc``, ``...-cvta``, ``...-cvt``, ``...-mov``
- ``parallel-synchronization-and-communication-instructions-mbarrier`` ("mbarrier.init", "mbarrier.arrive",
  "mbarrier.test_wait/mbarrier.try_wait")

How the compiler is told what each instruction does (LLVM sees inline asm as an opaque call):

- *Pure* register instructions (``mma``, ``mov``, ``cvt``, ``cvta``) are ``readnone``: LLVM may schedule, CSE or
  drop them like arithmetic.
- Instructions that read or write memory another thread or the async-copy unit also touches (``ldmatrix``,
  ``cp.async*``, ``st.shared``, ``mbarrier.*``) are ``sideeffect`` with a ``~{memory}`` clobber: they are never dropped,
  duplicated or moved across each other, ``__syncthreads`` or ordinary loads and stores. This costs little: ptxas
  schedules the SASS again, with real dependency information.
- Warp-collective instructions (``.sync.aligned``: ``mma``, ``ldmatrix``) are ``convergent``: LLVM must not make
  them depend on more control flow (sink them into a branch some lanes skip).
- ``ld.global.nc`` reads memory that is read-only for the whole kernel (that is its contract), so it is
  ``readonly`` without side effects.

Global-memory operands are passed as generic 64-bit addresses: the global window of the generic address space
is the identity, which numba-cuda's ``cache_hints`` and CUTLASS rely on too. Shared-memory operands are 32-bit
``.shared`` addresses made with ``cvta.to.shared``, as CUTLASS does, so the instructions use the short form.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.cuda.core.errors import NumbaTypeError
from numba.cuda.extending import intrinsic

__all__ = [
    "shared_addr",
    "mma_m16n8k16_f16",
    "mma_m16n8k16_bf16",
    "ldmatrix_x1",
    "ldmatrix_x2",
    "ldmatrix_x4",
    "ldmatrix_x1_trans",
    "ldmatrix_x2_trans",
    "ldmatrix_x4_trans",
    "cp_async_16",
    "cp_async_commit",
    "cp_async_wait_group",
    "cp_async_wait_all",
    "ld_global_nc_v4_u32",
    "st_shared_v4_u32",
    "pack_u16x2",
    "unpack_u16x2",
    "f32_to_f16_bits",
    "f32_to_bf16_bits",
    "f16_bits_to_f32",
    "bf16_bits_to_f32",
    "wgmma_m64n8k16_f16",
    "wgmma_m64n16k16_f16",
    "wgmma_m64n32k16_f16",
    "wgmma_m64n64k16_f16",
    "wgmma_m64n8k16_bf16",
    "wgmma_m64n16k16_bf16",
    "wgmma_m64n32k16_bf16",
    "wgmma_m64n64k16_bf16",
    "wgmma_fence",
    "wgmma_commit_group",
    "wgmma_wait_group",
    "fence_proxy_async_shared",
    "warp_sync",
    "mbarrier_init",
    "mbarrier_arrive",
    "mbarrier_wait_parity",
]

_I16, _I32, _I64, _F32 = ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()

# Call-site attributes for the three kinds of instruction described in the module docstring.
_PURE = ("nounwind", "readnone")
_WARP_PURE = ("convergent", "nounwind", "readnone")
_READ_ONLY = ("nounwind", "readonly")
_MEMORY = ()  # a sideeffect asm without attributes: may read and write any memory
_WARP_MEMORY = ("convergent",)


# --- typing checks: every message names the instruction, what was expected and what was given --------------------


def _fail(instruction: str, what: str, expected: str, got) -> NumbaTypeError:
    return NumbaTypeError(f"{instruction}: {what} must be {expected}, got {got}")


def _check_integer(instruction: str, name: str, ty) -> None:
    if not isinstance(ty, types.Integer):
        raise _fail(instruction, name, "an integer", ty)


def _check_float32(instruction: str, name: str, ty) -> None:
    if ty != types.float32:
        raise _fail(instruction, name, "a float32 (write np.float32(x); a Python float is float64)", ty)


def _check_array(instruction: str, name: str, ty, dtype=None) -> None:
    """A C-contiguous array (so that a flat element index is an address), optionally of one dtype."""
    if not isinstance(ty, types.Array) or ty.layout != "C":
        raise _fail(instruction, name, "a C-contiguous array (shared or device)", ty)
    if dtype is not None and ty.dtype != dtype:
        raise _fail(instruction, f"the dtype of {name}", str(dtype), ty.dtype)


# --- code generation helpers --------------------------------------------------------------------------------------


def _asm(builder, ret, args, text: str, constraints: str, attrs=_PURE, side_effect: bool = False):
    """Emit one ``call asm``; ``args`` are ``(llvm type, value)`` pairs."""
    fnty = ir.FunctionType(ret, [ty for ty, _ in args])
    asm = ir.InlineAsm(fnty, text, constraints, side_effect=side_effect)
    return builder.call(asm, [value for _, value in args], attrs=attrs)


def _unpack(context, builder, struct, tuple_type):
    """The one place a multi-output instruction's LLVM struct becomes a Numba ``UniTuple``."""
    values = [builder.extract_value(struct, i) for i in range(tuple_type.count)]
    return context.make_tuple(builder, tuple_type, values)


def _as_int(context, builder, value, ty, bits: int):
    """An integer argument of any width, truncated or extended to ``bits`` (the PTX register width)."""
    target = types.uint32 if bits == 32 else types.uint16
    return context.cast(builder, value, ty, target)


def _element_address(context, builder, array_type, array, index_type, index):
    """The generic 64-bit address of the element at flat ``index`` of a C-contiguous array."""
    data = context.make_array(array_type)(context, builder, value=array).data
    offset = context.cast(builder, index, index_type, types.intp)
    return builder.ptrtoint(builder.gep(data, [offset]), _I64)


def _shared_address(context, builder, array_type, array, index_type, index):
    """The 32-bit ``.shared`` address of element ``index`` (what ``ldmatrix`` and ``cp.async`` take).

    Computed as cvta(array base) + 32-bit byte offset, not as cvta(base + 64-bit offset): the base is the same for
    every call on one array, so LLVM computes it once per kernel, and the index arithmetic, truncated to 32 bits
    here, is narrowed by LLVM to 32-bit instructions (shared memory is far below 4 GiB, so the truncation is exact
    for every valid index). With the 64-bit form each ``ldmatrix`` cost about seven 64-bit address instructions.
    """
    return builder.add(_shared_base(context, builder, array_type, array),
                       _byte_offset(context, builder, array_type, index_type, index))


def _shared_base(context, builder, array_type, array):
    """The 32-bit ``.shared`` address of the array's first element (``readnone``: LLVM computes it once)."""
    data = context.make_array(array_type)(context, builder, value=array).data
    return _asm(
        builder,
        _I32,
        [(_I64, builder.ptrtoint(data, _I64))],
        "{ .reg .u64 %smem_addr; cvta.to.shared.u64 %smem_addr, $1; cvt.u32.u64 $0, %smem_addr; }",
        "=r,l",
    )


def _byte_offset(context, builder, array_type, index_type, index):
    """``index`` times the array's item size, as a 32-bit integer (shared memory is far below 4 GiB)."""
    itemsize = context.get_abi_sizeof(context.get_data_type(array_type.dtype))
    return builder.mul(_as_int(context, builder, index, index_type, 32), ir.Constant(_I32, itemsize))


# --- shared_addr ---------------------------------------------------------------------------------------------------


@intrinsic
def shared_addr(typingctx, arr, index):
    """``cvta.to.shared.u64`` + ``cvt.u32.u64``: the 32-bit shared-state-space address of ``arr[index]``.

    PTX ISA: "cvta" (Data Movement and Conversion Instructions). ``arr`` is a ``cuda.shared.array`` (any ndim,
    C-contiguous), ``index`` its flat element index. Returns uint32. The other wrappers take ``(arr, index)`` and
    convert themselves; this is for address arithmetic and debugging.
    """
    _check_array("cvta.to.shared", "arr", arr)
    _check_integer("cvta.to.shared", "index", index)

    def codegen(context, builder, sig, args):
        return _shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])

    return types.uint32(arr, index), codegen


# --- mma.sync.aligned.m16n8k16 ---------------------------------------------------------------------------------------


def _make_mma(ab: str):
    instruction = f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32"
    result = types.UniTuple(types.float32, 4)

    def typer(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        for name, ty in zip(("a0", "a1", "a2", "a3", "b0", "b1"), (a0, a1, a2, a3, b0, b1)):
            if not isinstance(ty, types.Integer):
                raise _fail(instruction, name, f"a 32-bit integer holding two packed .{ab} values", ty)
        for name, ty in zip(("c0", "c1", "c2", "c3"), (c0, c1, c2, c3)):
            _check_float32(instruction, name, ty)

        def codegen(context, builder, sig, args):
            ab_regs = [
                (_I32, _as_int(context, builder, value, ty, 32)) for value, ty in zip(args[:6], sig.args[:6])
            ]
            c_regs = [(_F32, value) for value in args[6:]]
            struct = _asm(
                builder,
                ir.LiteralStructType([_F32] * 4),
                ab_regs + c_regs,
                f"{instruction} {{$0, $1, $2, $3}}, {{$4, $5, $6, $7}}, {{$8, $9}}, {{$10, $11, $12, $13}};",
                "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f",
                attrs=_WARP_PURE,
            )
            return _unpack(context, builder, struct, result)

        return result(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3), codegen

    typer.__name__ = typer.__qualname__ = f"mma_m16n8k16_{ab}"
    typer.__doc__ = f"""``{instruction}``: D (16 x 8) = A (16 x 16) @ B (16 x 8) + C, fp32 accumulate, one warp.

    PTX ISA: "Matrix multiply-accumulate operation using mma instruction"; fragments: "Matrix Fragments for
    mma.m16n8k16 with floating point type". Call as ``d0, d1, d2, d3 = {typer.__name__}(a0, a1, a2, a3, b0, b1,
    c0, c1, c2, c3)`` from all 32 lanes of a warp (``.sync.aligned``). With ``g = lane // 4``, ``t = lane % 4``:

    - ``a0..a3`` (uint32, two .{ab} each, low half = lower column): A[g, 2t:2t+2], A[g+8, 2t:2t+2],
      A[g, 2t+8:2t+10], A[g+8, 2t+8:2t+10];
    - ``b0, b1`` (uint32, two .{ab} each, low half = lower k): B[2t:2t+2, g], B[2t+8:2t+10, g];
    - ``c0..c3``, ``d0..d3`` (float32): C[g, 2t], C[g, 2t+1], C[g+8, 2t], C[g+8, 2t+1].

    Why: the largest fp16/bf16 Tensor-Core step on sm_80/sm_90 that ``mma.sync`` offers; fp32 accumulation keeps
    long K sums accurate. :mod:`flashllm_nb.reference.fragments` is the executable spec of these layouts.
    """
    return intrinsic(typer)


mma_m16n8k16_f16 = _make_mma("f16")
mma_m16n8k16_bf16 = _make_mma("bf16")


# --- ldmatrix.sync.aligned.m8n8 ------------------------------------------------------------------------------------


def _make_ldmatrix(num: int, trans: bool):
    suffix = ".trans" if trans else ""
    instruction = f"ldmatrix.sync.aligned.m8n8.x{num}{suffix}.shared.b16"
    result = types.uint32 if num == 1 else types.UniTuple(types.uint32, num)
    rows = {1: "0-7", 2: "0-15", 4: "0-31"}[num]
    outputs = ", ".join(f"${i}" for i in range(num))

    def typer(typingctx, arr, index):
        _check_array(instruction, "arr", arr)
        _check_integer(instruction, "index", index)

        def codegen(context, builder, sig, args):
            address = _shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            ret = _I32 if num == 1 else ir.LiteralStructType([_I32] * num)
            value = _asm(
                builder,
                ret,
                [(_I32, address)],
                f"{instruction} {{{outputs}}}, [${num}];",
                ",".join(["=r"] * num + ["r", "~{memory}"]),
                attrs=_WARP_MEMORY,
                side_effect=True,
            )
            return value if num == 1 else _unpack(context, builder, value, result)

        return result(arr, index), codegen

    if trans:
        received = "M_j[2(l % 4), l // 4] (low half) and M_j[2(l % 4) + 1, l // 4] (high half)"
        why_trans = "; ``.trans`` reads a K x N row-major B as the column-major operand ``mma`` wants"
    else:
        received = "M_j[l // 4, 2(l % 4)] (low half) and M_j[l // 4, 2(l % 4) + 1] (high half)"
        why_trans = ""
    typer.__name__ = typer.__qualname__ = f"ldmatrix_x{num}{'_trans' if trans else ''}"
    typer.__doc__ = f"""``{instruction}``: {num} 8 x 8 matrices of 16-bit elements from shared memory into registers.

    PTX ISA: "Warp-level matrix load instruction: ldmatrix". Every lane of the warp calls it with ``(arr, index)``:
    a ``cuda.shared.array`` and the flat element index of the 16-byte row (8 x 16 bit) that lane supplies. Lanes
    {rows} supply rows: row r of matrix M_j is the row given by lane 8j + r; other lanes' addresses are ignored
    (pass any valid index). Rows must be 16-byte aligned: allocate with ``alignment=SHARED_ALIGN`` (imported from
    ``ptx`` by name). Result j of lane l holds {received}.

    Why: one instruction moves a whole mma operand fragment (x4: all of A; x2: all of B) from shared memory, 16
    bytes per lane, instead of eight 16-bit loads per lane{why_trans}. ``sideeffect`` + ``~{{memory}}``: it reads
    shared memory that other lanes wrote.
    """
    return intrinsic(typer)


ldmatrix_x1 = _make_ldmatrix(1, False)
ldmatrix_x2 = _make_ldmatrix(2, False)
ldmatrix_x4 = _make_ldmatrix(4, False)
ldmatrix_x1_trans = _make_ldmatrix(1, True)
ldmatrix_x2_trans = _make_ldmatrix(2, True)
ldmatrix_x4_trans = _make_ldmatrix(4, True)


# --- cp.async -------------------------------------------------------------------------------------------------------


@intrinsic
def cp_async_16(typingctx, dst_arr, dst_index, src_arr, src_index, src_bytes):
    """``cp.async.cg.shared.global [dst], [src], 16, src_bytes``: an asynchronous 16-byte global-to-shared copy.

    PTX ISA: "Data Movement and Conversion Instructions: cp.async". ``dst_arr`` is a ``cuda.shared.array``,
    ``src_arr`` a device array (kernel argument); any dtypes; ``dst_index``/``src_index`` are flat element
    indices and both addresses must be 16-byte aligned. ``src_bytes`` (0..16) bytes are read from ``src``; the rest
    of the 16 destination bytes are zero-filled. ``src_bytes == 0`` reads nothing (a predicated-off load: on an
    H200, compute-sanitizer saw no access for a source far out of bounds); pass any valid ``src_index`` all the
    same. The copy completes only after ``cp_async_commit()`` and a ``cp_async_wait_group(n)`` /
    ``cp_async_wait_all()`` that covers it, followed by ``cuda.syncthreads()`` when other threads read the data.

    Why: the dense operand X streams into shared memory while the warps compute on the previous tile, without
    occupying registers; ``.cg`` caches in L2 only (each X tile is read once per block); the ``src_bytes`` form
    zero-fills ragged edges of X (K or N not a multiple of the tile) without a branch. ``sideeffect`` +
    ``~{memory}``: it writes shared memory behind the compiler's back.
    """
    instruction = "cp.async.cg.shared.global"
    _check_array(instruction, "dst_arr", dst_arr)
    _check_integer(instruction, "dst_index", dst_index)
    _check_array(instruction, "src_arr", src_arr)
    _check_integer(instruction, "src_index", src_index)
    _check_integer(instruction, "src_bytes", src_bytes)

    def codegen(context, builder, sig, args):
        dst = _shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        src = _element_address(context, builder, sig.args[2], args[2], sig.args[3], args[3])
        size = _as_int(context, builder, args[4], sig.args[4], 32)
        _asm(
            builder,
            ir.VoidType(),
            [(_I32, dst), (_I64, src), (_I32, size)],
            f"{instruction} [$0], [$1], 16, $2;",
            "r,l,r,~{memory}",
            attrs=_MEMORY,
            side_effect=True,
        )

    return types.void(dst_arr, dst_index, src_arr, src_index, src_bytes), codegen


@intrinsic
def cp_async_commit(typingctx):
    """``cp.async.commit_group``: close the group of this thread's ``cp.async`` issued since the last commit.

    PTX ISA: "cp.async.commit_group". Why: groups let ``cp_async_wait_group(n)`` wait for all but the newest ``n``
    tiles of the software pipeline. ``sideeffect`` + ``~{memory}`` keep it in program order with the copies.
    """

    def codegen(context, builder, sig, args):
        _asm(builder, ir.VoidType(), [], "cp.async.commit_group;", "~{memory}", attrs=_MEMORY, side_effect=True)

    return types.void(), codegen


@intrinsic
def cp_async_wait_group(typingctx, n):
    """``cp.async.wait_group n``: wait until at most ``n`` of this thread's committed groups are still pending.

    PTX ISA: "cp.async.wait_group". ``n`` must be a compile-time integer literal (PTX takes an immediate): a
    literal or a Python ``int`` global / closure variable of the kernel factory, not a value computed in the kernel.
    Why: the pipeline waits for the oldest tile only, keeping the newer copies in flight. ``sideeffect`` +
    ``~{memory}``: shared-memory loads after it must not be hoisted above it.
    """
    instruction = "cp.async.wait_group"
    if not isinstance(n, types.IntegerLiteral):
        raise _fail(instruction, "n", "a compile-time integer literal (a Python int constant)", n)
    if n.literal_value < 0:
        raise _fail(instruction, "n", "a non-negative integer", n.literal_value)
    text = f"{instruction} {n.literal_value};"

    def codegen(context, builder, sig, args):
        _asm(builder, ir.VoidType(), [], text, "~{memory}", attrs=_MEMORY, side_effect=True)

    return types.void(n), codegen


@intrinsic
def cp_async_wait_all(typingctx):
    """``cp.async.wait_all``: wait for all of this thread's ``cp.async`` (committed or not).

    PTX ISA: "cp.async.wait_all". Why: drains the pipeline at the last k-tile. ``sideeffect`` + ``~{memory}``.
    """

    def codegen(context, builder, sig, args):
        _asm(builder, ir.VoidType(), [], "cp.async.wait_all;", "~{memory}", attrs=_MEMORY, side_effect=True)

    return types.void(), codegen


# --- ld.global.nc ---------------------------------------------------------------------------------------------------


@intrinsic
def ld_global_nc_v4_u32(typingctx, arr, index):
    """``ld.global.nc.L1::no_allocate.v4.u32``: four uint32 from global memory in one 16-byte load, not kept in L1.

    PTX ISA: "Data Movement and Conversion Instructions: ld.global.nc". ``arr`` is a uint32 device array,
    ``index`` a flat element index, a multiple of 4 (16-byte aligned). Returns ``(w0, w1, w2, w3)``.

    Why: the Tiled-CSL nonzeros are read exactly once, so they should neither occupy L1 (``no_allocate``) nor go
    through the coherent path (``.nc``: the array must not be written during the kernel); 16 bytes per lane is the
    widest load. Without side effects: under the ``.nc`` contract nothing can change what it reads.
    """
    instruction = "ld.global.nc.L1::no_allocate.v4.u32"
    _check_array(instruction, "arr", arr, types.uint32)
    _check_integer(instruction, "index", index)
    result = types.UniTuple(types.uint32, 4)

    def codegen(context, builder, sig, args):
        address = _element_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        struct = _asm(
            builder,
            ir.LiteralStructType([_I32] * 4),
            [(_I64, address)],
            f"{instruction} {{$0, $1, $2, $3}}, [$4];",
            "=r,=r,=r,=r,l",
            attrs=_READ_ONLY,
        )
        return _unpack(context, builder, struct, result)

    return result(arr, index), codegen


# --- st.shared.v4 ---------------------------------------------------------------------------------------------------


@intrinsic
def st_shared_v4_u32(typingctx, arr, index, w0, w1, w2, w3):
    """``st.shared.v4.u32 [addr], {w0, w1, w2, w3}``: 16 bytes into shared memory in one store.

    PTX ISA: "Data Movement and Conversion Instructions: st". ``arr`` is a ``cuda.shared.array`` of any dtype,
    ``index`` the flat element index of a 16-byte aligned destination; ``w0`` goes to the lowest address. Integers
    are truncated to 32 bits. Why: zeroing or filling an A tile takes a quarter of the store instructions of 32-bit
    stores. ``sideeffect`` + ``~{memory}``: a store the compiler does not see through.
    """
    instruction = "st.shared.v4.u32"
    _check_array(instruction, "arr", arr)
    _check_integer(instruction, "index", index)
    for name, ty in zip(("w0", "w1", "w2", "w3"), (w0, w1, w2, w3)):
        _check_integer(instruction, name, ty)

    def codegen(context, builder, sig, args):
        address = _shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        words = [(_I32, _as_int(context, builder, v, ty, 32)) for v, ty in zip(args[2:], sig.args[2:])]
        _asm(
            builder,
            ir.VoidType(),
            [(_I32, address)] + words,
            f"{instruction} [$0], {{$1, $2, $3, $4}};",
            "r,r,r,r,r,~{memory}",
            attrs=_MEMORY,
            side_effect=True,
        )

    return types.void(arr, index, w0, w1, w2, w3), codegen


# --- packing and conversions ----------------------------------------------------------------------------------------


@intrinsic
def pack_u16x2(typingctx, lo, hi):
    """``mov.b32 d, {lo, hi}``: two 16-bit values into one 32-bit register, ``lo`` in bits 0-15.

    PTX ISA: "mov" (vector form). Integers of any width are truncated to their low 16 bits. Returns uint32.
    Why: builds an mma A/B register (two .f16/.bf16, lower index in the low half) without shifts and masks.
    """
    _check_integer("mov.b32 (pack)", "lo", lo)
    _check_integer("mov.b32 (pack)", "hi", hi)

    def codegen(context, builder, sig, args):
        halves = [(_I16, _as_int(context, builder, v, ty, 16)) for v, ty in zip(args, sig.args)]
        return _asm(builder, _I32, halves, "mov.b32 $0, {$1, $2};", "=r,h,h")

    return types.uint32(lo, hi), codegen


@intrinsic
def unpack_u16x2(typingctx, x):
    """``mov.b32 {lo, hi}, x``: one 32-bit register into its two 16-bit halves, returned as ``(lo, hi)`` uint16.

    PTX ISA: "mov" (vector form). Integers wider than 32 bits are truncated to their low 32 bits.
    Why: splits a Tiled-CSL word (value in bits 0-15, position in bits 16-31) or an mma register in one move.
    """
    _check_integer("mov.b32 (unpack)", "x", x)
    result = types.UniTuple(types.uint16, 2)

    def codegen(context, builder, sig, args):
        word = _as_int(context, builder, args[0], sig.args[0], 32)
        struct = _asm(builder, ir.LiteralStructType([_I16, _I16]), [(_I32, word)], "mov.b32 {$0, $1}, $2;", "=h,=h,r")
        return _unpack(context, builder, struct, result)

    return result(x), codegen


def _make_f32_to_16(kind: str):
    instruction = f"cvt.rn.{kind}.f32"

    def typer(typingctx, x):
        _check_float32(instruction, "x", x)

        def codegen(context, builder, sig, args):
            return _asm(builder, _I16, [(_F32, args[0])], f"{instruction} $0, $1;", "=h,f")

        return types.uint16(x), codegen

    typer.__name__ = typer.__qualname__ = f"f32_to_{kind}_bits"
    typer.__doc__ = f"""``{instruction}``: float32 to the bit pattern of the nearest .{kind} (ties to even), as uint16.

    PTX ISA: "cvt". Overflow gives +-Inf, any NaN the canonical NaN 0x7FFF (seen on an H200; the twin does the
    same), subnormal results are kept. Why: the output tile is rounded to .{kind} exactly
    once, from the fp32 accumulators{"; needs sm_80" if kind == "bf16" else ""}.
    """
    return intrinsic(typer)


f32_to_f16_bits = _make_f32_to_16("f16")
f32_to_bf16_bits = _make_f32_to_16("bf16")


@intrinsic
def f16_bits_to_f32(typingctx, b):
    """``cvt.f32.f16``: the float32 value of an f16 bit pattern (exact; any NaN gives 0x7FFFFFFF, seen on an H200).
    Integers are truncated to 16 bits.

    PTX ISA: "cvt". Why: epilogues and tests that read fp16 bit patterns (e.g. a Tiled-CSL word's low half).
    """
    _check_integer("cvt.f32.f16", "b", b)

    def codegen(context, builder, sig, args):
        bits = _as_int(context, builder, args[0], sig.args[0], 16)
        return _asm(builder, _F32, [(_I16, bits)], "cvt.f32.f16 $0, $1;", "=f,h")

    return types.float32(b), codegen


@intrinsic
def bf16_bits_to_f32(typingctx, b):
    """The float32 value of a bf16 bit pattern (exact, NaN payload kept): the bits shifted into the high half.

    No PTX instruction: ``cvt.f32.bf16`` exists only from sm_90, and bf16 is by definition the upper 16 bits of a
    float32, so ``zext``, ``shl 16``, ``bitcast`` is the conversion on every architecture. Integers are truncated to
    16 bits.
    """
    _check_integer("bf16 to f32 (shl 16)", "b", b)

    def codegen(context, builder, sig, args):
        bits = builder.zext(_as_int(context, builder, args[0], sig.args[0], 16), _I32)
        return builder.bitcast(builder.shl(bits, ir.Constant(_I32, 16)), _F32)

    return types.float32(b), codegen


# --- wgmma (sm_90a) ---------------------------------------------------------------------------------------------------
#
# PTX ISA: "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions" (``#asynchronous-warpgroup-level-
# matrix-instructions``): "wgmma.mma_async", "Matrix Descriptor Format", "Shared Memory Matrix Layout" (the 128-byte
# swizzle), "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group"; and "Memory Consistency Model: Proxies"
# ("fence.proxy.async"). Only on sm_90a: numba-cuda compiles for sm_90a on a cc 9.x device, and
# ``compile_ptx(..., cc=(9, 0, "a"))`` does so without one.

# The one shared-memory operand layout the wrappers describe (both operands "K-major", i.e. k is the contiguous
# dimension, which is the Tiled-CSL format's and the "nk" activations' own order): rows of 64 16-bit values (128 B),
# the 16-byte chunk of column c stored at chunk (c // 8) ^ (row % 8), eight rows (1024 B) per swizzle atom, atoms
# 1024-byte aligned and consecutive. That is exactly the A-tile layout the format's positions already name.
# Descriptor fields (64 bits): start address >> 4 in bits 0-13, leading byte offset >> 4 in 16-29 (unused by a
# swizzled K-major operand whose k16 slice lies inside one 128-byte row; 1 by convention), stride byte offset >> 4
# in 32-45 (1024 B from one 8-row atom to the next), base offset 0 in 49-51 (atoms are 1024-byte aligned), layout
# type in 62-63 (1 = 128-byte swizzle).
_WGMMA_SW128_FIELDS = (1 << 62) | ((1024 >> 4) << 32) | (1 << 16)


def _sw128_descriptor(context, builder, array_type, array, index_type, index):
    """The wgmma matrix descriptor of the K-major 128-byte-swizzled operand whose first row starts at ``index``.

    Computed as (descriptor of the array's first element) + (byte offset >> 4), not from the element's address:
    the first part is the same for every call on one array, so LLVM computes it once per kernel, and what is left
    per call is a shift and an add of the (normally warp-uniform) index. The split is exact because the operand
    start is 16-byte aligned (the low 4 bits of the offset are zero) and every shared address is below 256 KiB, so
    the 14-bit start field never carries into the leading-byte-offset field (ncu, H100: the per-call form cost six
    instructions per descriptor, 2 of every 10 the k-loop issued)."""
    base = _shared_base(context, builder, array_type, array)
    first = builder.or_(builder.lshr(builder.and_(base, ir.Constant(_I32, 0x3FFFF)), ir.Constant(_I32, 4)),
                        ir.Constant(_I32, _WGMMA_SW128_FIELDS & 0xFFFFFFFF))
    offset = _byte_offset(context, builder, array_type, index_type, index)
    low = builder.add(first, builder.lshr(offset, ir.Constant(_I32, 4)))
    return builder.or_(builder.zext(low, _I64), ir.Constant(_I64, _WGMMA_SW128_FIELDS & ~0xFFFFFFFF))


def _float_slots(context, builder, array_type, array, offset_type, offset, count):
    """Pointers to ``array[offset] .. array[offset + count - 1]`` of a float32 array (a ``cuda.local.array``)."""
    data = context.make_array(array_type)(context, builder, value=array).data
    first = context.cast(builder, offset, offset_type, types.intp)
    return [builder.gep(data, [builder.add(first, ir.Constant(first.type, i))]) for i in range(count)]


def _make_wgmma(n: int, ab: str):
    instruction = f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ab}.{ab}"
    count = n // 2  # fp32 accumulators per thread: 64 x n over 128 threads

    def typer(typingctx, arr, a_index, b_index, acc, acc_offset):
        _check_array(instruction, "arr", arr)
        _check_integer(instruction, "a_index", a_index)
        _check_integer(instruction, "b_index", b_index)
        if not isinstance(acc, types.Array) or acc.dtype != types.float32 or acc.layout != "C":
            raise _fail(instruction, "acc", "a C-contiguous float32 array (cuda.local.array)", acc)
        _check_integer(instruction, "acc_offset", acc_offset)

        def codegen(context, builder, sig, args):
            desc_a = _sw128_descriptor(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            desc_b = _sw128_descriptor(context, builder, sig.args[0], args[0], sig.args[2], args[2])
            slots = _float_slots(context, builder, sig.args[3], args[3], sig.args[4], args[4], count)
            accs = [(_F32, builder.load(slot)) for slot in slots]
            outputs = ", ".join(f"${i}" for i in range(count))
            # Accumulators are tied in/out operands ("0" ties input i to output i); scale-d = 1 (D += A @ B),
            # imm-scale-a = imm-scale-b = 1, no transposes (both operands K-major).
            struct = _asm(
                builder,
                ir.LiteralStructType([_F32] * count),
                accs + [(_I64, desc_a), (_I64, desc_b)],
                f"{instruction} {{{outputs}}}, ${2 * count}, ${2 * count + 1}, 1, 1, 1, 0, 0;",
                ",".join(["=f"] * count + [str(i) for i in range(count)] + ["l", "l", "~{memory}"]),
                attrs=_WARP_MEMORY,
                side_effect=True,
            )
            for i, slot in enumerate(slots):
                builder.store(builder.extract_value(struct, i), slot)

        return types.void(arr, a_index, b_index, acc, acc_offset), codegen

    typer.__name__ = typer.__qualname__ = f"wgmma_m64n{n}k16_{ab}"
    typer.__doc__ = f"""``{instruction}``: D (64 x {n}) += A (64 x 16) @ B (16 x {n}), fp32, one warpgroup.

    PTX ISA: "wgmma.mma_async"; register layout: "Register Fragments ... for accumulator matrix D" of
    ``.m64nNk16``. Call as ``{typer.__name__}(arr, a_index, b_index, acc, acc_offset)`` from all 128 threads of a
    warpgroup (four consecutive warps, the first a multiple of four), between ``wgmma_fence()`` and
    ``wgmma_commit_group()``. It is asynchronous: ``acc`` holds the result only after ``wgmma_wait_group`` has
    waited for its group (pass ``acc`` there too).

    - ``arr``: the ``cuda.shared.array`` both operands live in, allocated with ``alignment=WGMMA_SHARED_ALIGN``;
    - ``a_index``: flat element index of A[0, 0]: A row r, column k is element ``a_index + (r // 8) * 512 +
      (r % 8) * 64`` with the 128-byte swizzle applied to its address (16-byte chunk XOR row % 8), i.e. the rows of a
      64-wide K-major tile whose 8-row atoms are 1024-byte aligned; advance along k by adding 16 elements (32 B);
    - ``b_index``: the same for B stored transposed, row n holding B[:, n] (K-major): B[k, n] is row n, column k;
    - ``acc[acc_offset + i]`` (float32, {count} per thread): with ``w = warp % 4``, ``g = lane // 4``, ``t = lane %
      4``, accumulator ``4j + 2h + e`` of a thread is D[16w + g + 8h, 8j + 2t + e].

    Why: on Hopper the Tensor Cores read both operands straight from shared memory, so the A tile expanded from
    the sparse words is never staged through registers with ``ldmatrix``, and four warps share one read of B.
    ``sideeffect`` + ``~{{memory}}``: it reads shared memory that other threads wrote (after
    ``fence_proxy_async_shared()`` and a barrier).
    """
    return intrinsic(typer)


wgmma_m64n8k16_f16 = _make_wgmma(8, "f16")
wgmma_m64n16k16_f16 = _make_wgmma(16, "f16")
wgmma_m64n32k16_f16 = _make_wgmma(32, "f16")
wgmma_m64n64k16_f16 = _make_wgmma(64, "f16")
wgmma_m64n8k16_bf16 = _make_wgmma(8, "bf16")
wgmma_m64n16k16_bf16 = _make_wgmma(16, "bf16")
wgmma_m64n32k16_bf16 = _make_wgmma(32, "bf16")
wgmma_m64n64k16_bf16 = _make_wgmma(64, "bf16")


def _make_warpgroup_sync(name: str, text: str, doc: str):
    def typer(typingctx):
        def codegen(context, builder, sig, args):
            _asm(builder, ir.VoidType(), [], text, "~{memory}", attrs=_WARP_MEMORY, side_effect=True)

        return types.void(), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


wgmma_fence = _make_warpgroup_sync(
    "wgmma_fence",
    "wgmma.fence.sync.aligned;",
    """``wgmma.fence.sync.aligned``: order earlier register and shared-memory accesses before the next wgmma.

    PTX ISA: "wgmma.fence". Required before the first ``wgmma.mma_async`` of a group whenever its accumulators were
    written by other instructions (zeroing, a previous wait). All threads of the warpgroup.""",
)
wgmma_commit_group = _make_warpgroup_sync(
    "wgmma_commit_group",
    "wgmma.commit_group.sync.aligned;",
    """``wgmma.commit_group.sync.aligned``: close the group of this warpgroup's uncommitted ``wgmma.mma_async``.

    PTX ISA: "wgmma.commit_group". All threads of the warpgroup.""",
)
fence_proxy_async_shared = _make_warpgroup_sync(
    "fence_proxy_async_shared",
    "fence.proxy.async.shared::cta;",
    """``fence.proxy.async.shared::cta``: make this thread's earlier shared-memory writes (stores, completed
    ``cp.async``) visible to the async proxy, which is how ``wgmma`` reads its operands.

    PTX ISA: "Memory Consistency Model: Proxies", "membar/fence". Each writing thread fences, then a barrier, then
    the wgmma: without it the Tensor Cores may read stale shared memory. Not warp-collective.""",
)


warp_sync = _make_warpgroup_sync(
    "warp_sync",
    "bar.warp.sync -1;",
    """``bar.warp.sync -1``: every lane of the warp reaches this point, with its earlier shared-memory accesses
    ordered before the later ones of every other lane (``__syncwarp()``; Numba's ``cuda.syncwarp`` has no twin in the
    simulator, this one has).

    PTX ISA: "bar.warp.sync". Used where one lane overwrites shared memory that another lane of the same warp
    addressed for a collective read (``ldmatrix`` rows). All lanes of the warp.""",
)


@intrinsic
def wgmma_wait_group(typingctx, n, acc, count):
    """``wgmma.wait_group.sync.aligned n``: wait until at most ``n`` of this warpgroup's wgmma groups are pending.

    PTX ISA: "wgmma.wait_group". ``n`` and ``count`` are compile-time integer literals; ``acc`` is the float32
    accumulator array of the waited-for wgmmas, of which ``acc[0 .. count-1]`` pass through the instruction as tied
    register operands: LLVM sees them written here, so no read of an accumulator is scheduled before the wait (the
    role of CUTLASS's ``warpgroup_fence_operand``). All threads of the warpgroup.
    """
    instruction = "wgmma.wait_group.sync.aligned"
    for name, ty in (("n", n), ("count", count)):
        if not isinstance(ty, types.IntegerLiteral):
            raise _fail(instruction, name, "a compile-time integer literal (a Python int constant)", ty)
    if n.literal_value < 0:
        raise _fail(instruction, "n", "a non-negative integer", n.literal_value)
    if not isinstance(acc, types.Array) or acc.dtype != types.float32 or acc.layout != "C":
        raise _fail(instruction, "acc", "a C-contiguous float32 array (cuda.local.array)", acc)
    k = count.literal_value
    if not 0 < k <= 128:
        raise _fail(instruction, "count", "between 1 and 128", k)
    outputs = ", ".join(f"${i}" for i in range(k))
    # The registers are named in a comment of the asm text: the instruction itself takes none.
    text = f"wgmma.wait_group.sync.aligned {n.literal_value}; // {outputs}"

    def codegen(context, builder, sig, args):
        slots = _float_slots(context, builder, sig.args[1], args[1], types.intp, context.get_constant(types.intp, 0), k)
        struct = _asm(
            builder,
            ir.LiteralStructType([_F32] * k),
            [(_F32, builder.load(slot)) for slot in slots],
            text,
            ",".join(["=f"] * k + [str(i) for i in range(k)] + ["~{memory}"]),
            attrs=_WARP_MEMORY,
            side_effect=True,
        )
        for i, slot in enumerate(slots):
            builder.store(builder.extract_value(struct, i), slot)

    return types.void(n, acc, count), codegen


# --- mbarrier ---------------------------------------------------------------------------------------------------------
# A shared-memory barrier object (8 bytes, 8-byte aligned) that counts arrivals per phase: threads arrive when they
# are done with something and wait, later, for the phase in which everyone did. Unlike bar.sync, arriving does not
# block, so the work between a thread's arrival and its wait hides the slowest thread's lateness.


def _check_mbarrier(instruction: str, arr, index) -> None:
    _check_array(instruction, "arr", arr)
    _check_integer(instruction, "index", index)


def _mbarrier_codegen(text: str):
    """Codegen of an mbarrier instruction on ``(arr, index, *integers)``: ``$0`` is the barrier's 32-bit shared
    address, ``$1``... the integers as 32-bit registers."""

    def codegen(context, builder, sig, args):
        address = _shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        integers = [(_I32, _as_int(context, builder, v, ty, 32)) for v, ty in zip(args[2:], sig.args[2:])]
        constraints = ",".join(["r"] * (1 + len(integers)) + ["~{memory}"])
        _asm(builder, ir.VoidType(), [(_I32, address)] + integers, text, constraints, attrs=_MEMORY, side_effect=True)

    return codegen


@intrinsic
def mbarrier_init(typingctx, arr, index, count):
    """``mbarrier.init.shared.b64 [addr], count``: phase 0 of the barrier at ``arr[index]`` awaits ``count`` arrivals.

    PTX ISA: "Parallel Synchronization and Communication Instructions: mbarrier.init" (sm_80). ``arr`` is a
    ``cuda.shared.array`` and ``index`` the flat element index of an 8-byte aligned slot of 8 bytes that nothing else
    writes. One thread initializes; a ``syncthreads`` then makes the barrier visible to the others.
    """
    instruction = "mbarrier.init.shared.b64"
    _check_mbarrier(instruction, arr, index)
    _check_integer(instruction, "count", count)
    return types.void(arr, index, count), _mbarrier_codegen(f"{instruction} [$0], $1;")


@intrinsic
def mbarrier_arrive(typingctx, arr, index):
    """``mbarrier.arrive.shared.b64 state, [addr]``: count this thread's arrival on the barrier's current phase and
    go on at once (the returned phase state is not needed: waits here name the phase by its parity).

    PTX ISA: "mbarrier.arrive" (sm_80). Release semantics: this thread's earlier shared-memory accesses are ordered
    before any access that follows a wait which observed the phase complete.
    """
    instruction = "mbarrier.arrive.shared.b64"
    _check_mbarrier(instruction, arr, index)
    return types.void(arr, index), _mbarrier_codegen(f"{{ .reg .b64 %state; {instruction} %state, [$0]; }}")


@intrinsic
def mbarrier_wait_parity(typingctx, arr, index, parity):
    """Spin on ``mbarrier.test_wait.parity.shared.b64`` until the barrier's phase of parity ``parity`` (0 or 1) has
    completed, i.e. until its k-th phase is over when waited for with ``parity = k % 2``.

    PTX ISA: "mbarrier.test_wait/mbarrier.try_wait" (test_wait: sm_80; try_wait would need sm_90). Acquire
    semantics: the accesses of every thread that arrived in that phase, made before its arrival, are visible to this
    thread's later ones. The loop's label is local to the asm's braces, so the asm may be inlined many times.
    """
    instruction = "mbarrier.test_wait.parity.shared.b64"
    _check_mbarrier(instruction, arr, index)
    _check_integer(instruction, "parity", parity)
    text = f"{{ .reg .pred %done; MBARRIER_WAIT: {instruction} %done, [$0], $1; @!%done bra MBARRIER_WAIT; }}"
    return types.void(arr, index, parity), _mbarrier_codegen(text)
