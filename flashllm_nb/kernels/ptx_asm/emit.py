"""What every inline-PTX wrapper of :mod:`flashllm_nb.kernels.ptx_asm` shares: the typing checks, the call-site
attributes that tell LLVM what an instruction does, and the emission of one ``call asm`` with its operands.

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

I16, I32, I64, F32 = ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()

# Call-site attributes for the kinds of instruction described in the module docstring.
PURE = ("nounwind", "readnone")
WARP_PURE = ("convergent", "nounwind", "readnone")
READ_ONLY = ("nounwind", "readonly")
MEMORY = ()  # a sideeffect asm without attributes: may read and write any memory
WARP_MEMORY = ("convergent",)


# --- typing checks: every message names the instruction, what was expected and what was given --------------------


def fail(instruction: str, what: str, expected: str, got) -> NumbaTypeError:
    return NumbaTypeError(f"{instruction}: {what} must be {expected}, got {got}")


def check_integer(instruction: str, name: str, ty) -> None:
    if not isinstance(ty, types.Integer):
        raise fail(instruction, name, "an integer", ty)


def check_float32(instruction: str, name: str, ty) -> None:
    if ty != types.float32:
        raise fail(instruction, name, "a float32 (write np.float32(x); a Python float is float64)", ty)


def check_array(instruction: str, name: str, ty, dtype=None) -> None:
    """A C-contiguous array (so that a flat element index is an address), optionally of one dtype."""
    if not isinstance(ty, types.Array) or ty.layout != "C":
        raise fail(instruction, name, "a C-contiguous array (shared or device)", ty)
    if dtype is not None and ty.dtype != dtype:
        raise fail(instruction, f"the dtype of {name}", str(dtype), ty.dtype)


# --- code generation helpers --------------------------------------------------------------------------------------


def asm(builder, ret, args, text: str, constraints: str, attrs=PURE, side_effect: bool = False):
    """Emit one ``call asm``; ``args`` are ``(llvm type, value)`` pairs."""
    fnty = ir.FunctionType(ret, [ty for ty, _ in args])
    inline = ir.InlineAsm(fnty, text, constraints, side_effect=side_effect)
    return builder.call(inline, [value for _, value in args], attrs=attrs)


def unpack(context, builder, struct, tuple_type):
    """The one place a multi-output instruction's LLVM struct becomes a Numba ``UniTuple``."""
    values = [builder.extract_value(struct, i) for i in range(tuple_type.count)]
    return context.make_tuple(builder, tuple_type, values)


def as_int(context, builder, value, ty, bits: int):
    """An integer argument of any width, truncated or extended to ``bits`` (the PTX register width)."""
    target = types.uint32 if bits == 32 else types.uint16
    return context.cast(builder, value, ty, target)


def element_address(context, builder, array_type, array, index_type, index):
    """The generic 64-bit address of the element at flat ``index`` of a C-contiguous array."""
    data = context.make_array(array_type)(context, builder, value=array).data
    offset = context.cast(builder, index, index_type, types.intp)
    return builder.ptrtoint(builder.gep(data, [offset]), I64)


def shared_address(context, builder, array_type, array, index_type, index):
    """The 32-bit ``.shared`` address of element ``index`` (what ``ldmatrix`` and ``cp.async`` take).

    Computed as cvta(array base) + 32-bit byte offset, not as cvta(base + 64-bit offset): the base is the same for
    every call on one array, so LLVM computes it once per kernel, and the index arithmetic, truncated to 32 bits
    here, is narrowed by LLVM to 32-bit instructions (shared memory is far below 4 GiB, so the truncation is exact
    for every valid index). With the 64-bit form each ``ldmatrix`` cost about seven 64-bit address instructions.
    """
    return builder.add(shared_base(context, builder, array_type, array),
                       byte_offset(context, builder, array_type, index_type, index))


def shared_base(context, builder, array_type, array):
    """The 32-bit ``.shared`` address of the array's first element (``readnone``: LLVM computes it once)."""
    data = context.make_array(array_type)(context, builder, value=array).data
    return asm(
        builder,
        I32,
        [(I64, builder.ptrtoint(data, I64))],
        "{ .reg .u64 %smem_addr; cvta.to.shared.u64 %smem_addr, $1; cvt.u32.u64 $0, %smem_addr; }",
        "=r,l",
    )


def byte_offset(context, builder, array_type, index_type, index):
    """``index`` times the array's item size, as a 32-bit integer (shared memory is far below 4 GiB)."""
    itemsize = context.get_abi_sizeof(context.get_data_type(array_type.dtype))
    return builder.mul(as_int(context, builder, index, index_type, 32), ir.Constant(I32, itemsize))


def make_sync_intrinsic(name: str, text: str, doc: str):
    """An intrinsic ``name()`` of no operands that emits ``text``: one ``sideeffect``, ``convergent`` asm with a
    ``~{memory}`` clobber (the fences and barriers, whose whole effect is on ordering)."""

    def typer(typingctx):
        def codegen(context, builder, sig, args):
            asm(builder, ir.VoidType(), [], text, "~{memory}", attrs=WARP_MEMORY, side_effect=True)

        return types.void(), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)
