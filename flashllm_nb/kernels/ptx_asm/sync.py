"""Inline-PTX wrappers that make threads meet: ``bar.warp.sync`` (``__syncwarp``), the ``mbarrier``
shared-memory barriers, and ``griddepcontrol``, by which a kernel meets the kernel before it in its stream.

Also ``atom.acq_rel.gpu``, by which a block hands its results to another block of the same grid.

A barrier object (8 bytes, 8-byte aligned, in shared memory) counts arrivals per phase: threads arrive when they
are done with something and wait, later, for the phase in which everyone did. Unlike bar.sync, arriving does not
block, so the work between a thread's arrival and its wait hides the slowest thread's lateness.

PTX ISA references (https://docs.nvidia.com/cuda/parallel-thread-execution/index.html#...):
``parallel-synchronization-and-communication-instructions-bar-warp-sync`` and
``...-mbarrier`` ("mbarrier.init", "mbarrier.arrive", "mbarrier.test_wait/mbarrier.try_wait"),
``...-griddepcontrol``, ``parallel-synchronization-and-communication-instructions-atom`` and the memory consistency
model (``memory-consistency-model``: release and acquire patterns, causality order).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.cuda.extending import intrinsic

from .emit import (I32, I64, MEMORY, as_int, asm, check_array, check_integer, element_address, make_sync_intrinsic,
                   shared_address)


warp_sync = make_sync_intrinsic(
    "warp_sync",
    "bar.warp.sync -1;",
    """``bar.warp.sync -1``: every lane of the warp reaches this point, with its earlier shared-memory accesses
    ordered before the later ones of every other lane (``__syncwarp()``; Numba's ``cuda.syncwarp`` has no twin in the
    simulator, this one has).

    PTX ISA: "bar.warp.sync". Used where one lane overwrites shared memory that another lane of the same warp
    addressed for a collective read (``ldmatrix`` rows). All lanes of the warp.""",
)


def _check_mbarrier(instruction: str, arr, index) -> None:
    check_array(instruction, "arr", arr)
    check_integer(instruction, "index", index)


def _mbarrier_codegen(text: str):
    """Codegen of an mbarrier instruction on ``(arr, index, *integers)``: ``$0`` is the barrier's 32-bit shared
    address, ``$1``... the integers as 32-bit registers."""

    def codegen(context, builder, sig, args):
        address = shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        integers = [(I32, as_int(context, builder, v, ty, 32)) for v, ty in zip(args[2:], sig.args[2:])]
        constraints = ",".join(["r"] * (1 + len(integers)) + ["~{memory}"])
        asm(builder, ir.VoidType(), [(I32, address)] + integers, text, constraints, attrs=MEMORY, side_effect=True)

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
    check_integer(instruction, "count", count)
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
    check_integer(instruction, "parity", parity)
    text = f"{{ .reg .pred %done; MBARRIER_WAIT: {instruction} %done, [$0], $1; @!%done bra MBARRIER_WAIT; }}"
    return types.void(arr, index, parity), _mbarrier_codegen(text)


griddepcontrol_wait = make_sync_intrinsic(
    "griddepcontrol_wait",
    "griddepcontrol.wait;",
    """``griddepcontrol.wait``: wait until the grids this one depends on have completed and their memory
    operations are visible to it.

    PTX ISA: "griddepcontrol" (sm_90). A kernel launched as a programmatic dependent of the previous kernel in its
    stream (``kernels.driver``'s dependent launches) may start while that kernel still runs: before this
    instruction it touches only memory nobody in flight writes (its weights), and it writes nothing. Launched
    normally, the wait returns at once. Each thread that reads its inputs executes it (or meets one that did at a
    barrier).""",
)
griddepcontrol_launch_dependents = make_sync_intrinsic(
    "griddepcontrol_launch_dependents",
    "griddepcontrol.launch_dependents;",
    """``griddepcontrol.launch_dependents``: the next kernel in the stream, if launched as a programmatic dependent,
    may be scheduled once every block of this grid has executed this (or exited).

    PTX ISA: "griddepcontrol" (sm_90). Safe anywhere in a kernel: the dependent waits for this grid's completion
    with ``griddepcontrol.wait`` before it reads what this grid writes; issuing it first lets the dependent's blocks
    take the SMs this grid's last wave leaves idle. Without a dependent it does nothing.""",
)


@intrinsic
def atom_add_acq_rel_gpu(typingctx, arr, index, value):
    """``atom.acq_rel.gpu.global.add.u32 d, [addr], value``: add ``value`` to the int32 at ``arr[index]`` in global
    memory and return what was there before, as one release and acquire operation at GPU scope.

    PTX ISA: "atom" (``.acq_rel``: sm_70) and "Memory Consistency Model". The release half orders this thread's
    earlier writes, and those of every thread of the block that met it at a ``bar.sync`` before, ahead of the add;
    the acquire half orders what the thread reads after it, and what the block reads after a later ``bar.sync``,
    behind the adds it observed. So a block that publishes its results, meets at a barrier and lets one thread take a
    ticket with this instruction needs no ``membar.gl`` on either side: the block whose ticket shows it came last sees
    every earlier block's results (CUTLASS's split-K semaphore releases and acquires the same way). ``arr`` is an
    int32 device array and ``index`` a flat element index.
    """
    instruction = "atom.acq_rel.gpu.global.add.u32"
    check_array(instruction, "arr", arr, types.int32)
    check_integer(instruction, "index", index)
    check_integer(instruction, "value", value)

    def codegen(context, builder, sig, args):
        address = element_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        operand = as_int(context, builder, args[2], sig.args[2], 32)
        return asm(builder, I32, [(I64, address), (I32, operand)], f"{instruction} $0, [$1], $2;",
                   "=r,l,r,~{memory}", attrs=MEMORY, side_effect=True)

    return types.int32(arr, index, value), codegen
