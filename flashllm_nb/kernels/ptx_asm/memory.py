"""Inline-PTX wrappers that address and move memory: ``cvta.to.shared`` (``shared_addr``), the asynchronous
global-to-shared copy ``cp.async`` with its commit and waits, the streaming global load ``ld.global.nc`` and the
16-byte shared store ``st.shared.v4``.

PTX ISA references (https://docs.nvidia.com/cuda/parallel-thread-execution/index.html#...):
``data-movement-and-conversion-instructions-cp-async``, ``...-cp-async-commit-group``, ``...-cp-async-wait-group``
("Non-bulk asynchronous copy"), ``...-ld-global-nc``, ``...-cvta``, ``...-st``.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.cuda.extending import intrinsic

from .emit import (
    I32,
    I64,
    MEMORY,
    READ_ONLY,
    as_int,
    asm,
    check_array,
    check_integer,
    element_address,
    fail,
    shared_address,
    unpack,
)


# --- shared_addr ---------------------------------------------------------------------------------------------------


@intrinsic
def shared_addr(typingctx, arr, index):
    """``cvta.to.shared.u64`` + ``cvt.u32.u64``: the 32-bit shared-state-space address of ``arr[index]``.

    PTX ISA: "cvta" (Data Movement and Conversion Instructions). ``arr`` is a ``cuda.shared.array`` (any ndim,
    C-contiguous), ``index`` its flat element index. Returns uint32. The other wrappers take ``(arr, index)`` and
    convert themselves; this is for address arithmetic and debugging.
    """
    check_array("cvta.to.shared", "arr", arr)
    check_integer("cvta.to.shared", "index", index)

    def codegen(context, builder, sig, args):
        return shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])

    return types.uint32(arr, index), codegen


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
    check_array(instruction, "dst_arr", dst_arr)
    check_integer(instruction, "dst_index", dst_index)
    check_array(instruction, "src_arr", src_arr)
    check_integer(instruction, "src_index", src_index)
    check_integer(instruction, "src_bytes", src_bytes)

    def codegen(context, builder, sig, args):
        dst = shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        src = element_address(context, builder, sig.args[2], args[2], sig.args[3], args[3])
        size = as_int(context, builder, args[4], sig.args[4], 32)
        asm(
            builder,
            ir.VoidType(),
            [(I32, dst), (I64, src), (I32, size)],
            f"{instruction} [$0], [$1], 16, $2;",
            "r,l,r,~{memory}",
            attrs=MEMORY,
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
        asm(builder, ir.VoidType(), [], "cp.async.commit_group;", "~{memory}", attrs=MEMORY, side_effect=True)

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
        raise fail(instruction, "n", "a compile-time integer literal (a Python int constant)", n)
    if n.literal_value < 0:
        raise fail(instruction, "n", "a non-negative integer", n.literal_value)
    text = f"{instruction} {n.literal_value};"

    def codegen(context, builder, sig, args):
        asm(builder, ir.VoidType(), [], text, "~{memory}", attrs=MEMORY, side_effect=True)

    return types.void(n), codegen


@intrinsic
def cp_async_wait_all(typingctx):
    """``cp.async.wait_all``: wait for all of this thread's ``cp.async`` (committed or not).

    PTX ISA: "cp.async.wait_all". Why: drains the pipeline at the last k-tile. ``sideeffect`` + ``~{memory}``.
    """

    def codegen(context, builder, sig, args):
        asm(builder, ir.VoidType(), [], "cp.async.wait_all;", "~{memory}", attrs=MEMORY, side_effect=True)

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
    check_array(instruction, "arr", arr, types.uint32)
    check_integer(instruction, "index", index)
    result = types.UniTuple(types.uint32, 4)

    def codegen(context, builder, sig, args):
        address = element_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        struct = asm(
            builder,
            ir.LiteralStructType([I32] * 4),
            [(I64, address)],
            f"{instruction} {{$0, $1, $2, $3}}, [$4];",
            "=r,=r,=r,=r,l",
            attrs=READ_ONLY,
        )
        return unpack(context, builder, struct, result)

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
    check_array(instruction, "arr", arr)
    check_integer(instruction, "index", index)
    for name, ty in zip(("w0", "w1", "w2", "w3"), (w0, w1, w2, w3)):
        check_integer(instruction, name, ty)

    def codegen(context, builder, sig, args):
        address = shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        words = [(I32, as_int(context, builder, v, ty, 32)) for v, ty in zip(args[2:], sig.args[2:])]
        asm(
            builder,
            ir.VoidType(),
            [(I32, address)] + words,
            f"{instruction} [$0], {{$1, $2, $3, $4}};",
            "r,r,r,r,r,~{memory}",
            attrs=MEMORY,
            side_effect=True,
        )

    return types.void(arr, index, w0, w1, w2, w3), codegen
