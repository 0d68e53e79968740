"""Inline-PTX wrappers of the warpgroup's Tensor-Core instruction ``wgmma.mma_async`` (sm_90a), which reads both
operands from shared memory through matrix descriptors, with its ``wgmma.fence``, ``commit_group`` and
``wait_group``, and ``fence.proxy.async``, which makes shared-memory stores visible to it.

PTX ISA: "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions" (``#asynchronous-warpgroup-level-
matrix-instructions``): "wgmma.mma_async", "Matrix Descriptor Format", "Shared Memory Matrix Layout" (the 128-byte
swizzle), "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group"; and "Memory Consistency Model: Proxies"
("fence.proxy.async"). Only on sm_90a: numba-cuda compiles for sm_90a on a cc 9.x device, and
``compile_ptx(..., cc=(9, 0, "a"))`` does so without one.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.cuda.extending import intrinsic

from .emit import (
    F32,
    I32,
    I64,
    WARP_MEMORY,
    asm,
    byte_offset,
    check_array,
    check_integer,
    fail,
    make_sync_intrinsic,
    shared_base,
)

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
    the 14-bit start field never carries into the leading-byte-offset field. Building the whole descriptor per call
    instead costs several instructions per descriptor in the k-loop (``docs/kernel-design.md``, "Arithmetic the
    compiler is given")."""
    base = shared_base(context, builder, array_type, array)
    first = builder.or_(builder.lshr(builder.and_(base, ir.Constant(I32, 0x3FFFF)), ir.Constant(I32, 4)),
                        ir.Constant(I32, _WGMMA_SW128_FIELDS & 0xFFFFFFFF))
    offset = byte_offset(context, builder, array_type, index_type, index)
    low = builder.add(first, builder.lshr(offset, ir.Constant(I32, 4)))
    return builder.or_(builder.zext(low, I64), ir.Constant(I64, _WGMMA_SW128_FIELDS & ~0xFFFFFFFF))


def _float_slots(context, builder, array_type, array, offset_type, offset, count):
    """Pointers to ``array[offset] .. array[offset + count - 1]`` of a float32 array (a ``cuda.local.array``)."""
    data = context.make_array(array_type)(context, builder, value=array).data
    first = context.cast(builder, offset, offset_type, types.intp)
    return [builder.gep(data, [builder.add(first, ir.Constant(first.type, i))]) for i in range(count)]


def _make_wgmma(n: int, ab: str):
    instruction = f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ab}.{ab}"
    count = n // 2  # fp32 accumulators per thread: 64 x n over 128 threads

    def typer(typingctx, arr, a_index, b_index, acc, acc_offset):
        check_array(instruction, "arr", arr)
        check_integer(instruction, "a_index", a_index)
        check_integer(instruction, "b_index", b_index)
        if not isinstance(acc, types.Array) or acc.dtype != types.float32 or acc.layout != "C":
            raise fail(instruction, "acc", "a C-contiguous float32 array (cuda.local.array)", acc)
        check_integer(instruction, "acc_offset", acc_offset)

        def codegen(context, builder, sig, args):
            desc_a = _sw128_descriptor(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            desc_b = _sw128_descriptor(context, builder, sig.args[0], args[0], sig.args[2], args[2])
            slots = _float_slots(context, builder, sig.args[3], args[3], sig.args[4], args[4], count)
            accs = [(F32, builder.load(slot)) for slot in slots]
            outputs = ", ".join(f"${i}" for i in range(count))
            # Accumulators are tied in/out operands ("0" ties input i to output i); scale-d = 1 (D += A @ B),
            # imm-scale-a = imm-scale-b = 1, no transposes (both operands K-major).
            struct = asm(
                builder,
                ir.LiteralStructType([F32] * count),
                accs + [(I64, desc_a), (I64, desc_b)],
                f"{instruction} {{{outputs}}}, ${2 * count}, ${2 * count + 1}, 1, 1, 1, 0, 0;",
                ",".join(["=f"] * count + [str(i) for i in range(count)] + ["l", "l", "~{memory}"]),
                attrs=WARP_MEMORY,
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


wgmma_fence = make_sync_intrinsic(
    "wgmma_fence",
    "wgmma.fence.sync.aligned;",
    """``wgmma.fence.sync.aligned``: order earlier register and shared-memory accesses before the next wgmma.

    PTX ISA: "wgmma.fence". Required before the first ``wgmma.mma_async`` of a group whenever its accumulators were
    written by other instructions (zeroing, a previous wait). All threads of the warpgroup.""",
)
wgmma_commit_group = make_sync_intrinsic(
    "wgmma_commit_group",
    "wgmma.commit_group.sync.aligned;",
    """``wgmma.commit_group.sync.aligned``: close the group of this warpgroup's uncommitted ``wgmma.mma_async``.

    PTX ISA: "wgmma.commit_group". All threads of the warpgroup.""",
)
fence_proxy_async_shared = make_sync_intrinsic(
    "fence_proxy_async_shared",
    "fence.proxy.async.shared::cta;",
    """``fence.proxy.async.shared::cta``: make this thread's earlier shared-memory writes (stores, completed
    ``cp.async``) visible to the async proxy, which is how ``wgmma`` reads its operands.

    PTX ISA: "Memory Consistency Model: Proxies", "membar/fence". Each writing thread fences, then a barrier, then
    the wgmma: without it the Tensor Cores may read stale shared memory. Not warp-collective.""",
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
            raise fail(instruction, name, "a compile-time integer literal (a Python int constant)", ty)
    if n.literal_value < 0:
        raise fail(instruction, "n", "a non-negative integer", n.literal_value)
    if not isinstance(acc, types.Array) or acc.dtype != types.float32 or acc.layout != "C":
        raise fail(instruction, "acc", "a C-contiguous float32 array (cuda.local.array)", acc)
    k = count.literal_value
    if not 0 < k <= 128:
        raise fail(instruction, "count", "between 1 and 128", k)
    outputs = ", ".join(f"${i}" for i in range(k))
    # The registers are named in a comment of the asm text: the instruction itself takes none.
    text = f"wgmma.wait_group.sync.aligned {n.literal_value}; // {outputs}"

    def codegen(context, builder, sig, args):
        slots = _float_slots(context, builder, sig.args[1], args[1], types.intp, context.get_constant(types.intp, 0), k)
        struct = asm(
            builder,
            ir.LiteralStructType([F32] * k),
            [(F32, builder.load(slot)) for slot in slots],
            text,
            ",".join(["=f"] * k + [str(i) for i in range(k)] + ["~{memory}"]),
            attrs=WARP_MEMORY,
            side_effect=True,
        )
        for i, slot in enumerate(slots):
            builder.store(builder.extract_value(struct, i), slot)

    return types.void(n, acc, count), codegen
