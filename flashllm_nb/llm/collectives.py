"""The all-reduce that completes a tensor-parallel block's partial sums: NCCL between GPUs, or rank 0 over TCP
for processes running the simulator (no GPU).

A communicator sums a flat uint16 buffer of ``count`` float16 / bfloat16 values over all ranks, in place, in the
order of the stream it is given, so it sits inside a decode step and inside its CUDA graph like any kernel.
"""

from __future__ import annotations

import socket
import struct
import time

import numpy as np

from flashllm_nb.llm.distributed import ProcessGroup, share_bytes

__all__ = ["NcclCommunicator", "HostCommunicator", "communicator_for"]


class NcclCommunicator:
    """NCCL through CuPy's bindings (``cupy.cuda.nccl``): rank 0's unique id reaches every rank through
    :func:`~flashllm_nb.llm.distributed.share_bytes`, then each rank joins the communicator on its GPU."""

    def __init__(self, group: ProcessGroup):
        import cupy
        from cupy.cuda import nccl

        self._nccl = nccl
        self.rank, self.world_size = group.rank, group.world_size
        cupy.cuda.Device(group.local_rank).use()
        raw = share_bytes(group, lambda: struct.pack("128b", *nccl.get_unique_id()))
        self._comm = nccl.NcclCommunicator(group.world_size, struct.unpack("128b", raw), group.rank)
        self._types = {"float16": nccl.NCCL_FLOAT16, "bfloat16": nccl.NCCL_BFLOAT16}

    def all_reduce(self, buffer, count: int, dtype, stream: int) -> None:
        kind = self._types["bfloat16" if np.dtype(dtype).name == "bfloat16" else "float16"]
        self._comm.allReduce(buffer.data.ptr, buffer.data.ptr, count, kind, self._nccl.NCCL_SUM, stream)

    def abort(self) -> None:
        """Leave the communicator at once (after a failure elsewhere), without waiting for the other ranks."""
        self._comm.abort()


class HostCommunicator:
    """Sums NumPy buffers (the simulator's arrays) through rank 0 over TCP: every other rank sends its values,
    rank 0 adds them in rank order in float32, rounds once to the dtype and sends the sum back. For running and
    testing tensor-parallel code without a GPU; one connection per rank, opened once."""

    def __init__(self, group: ProcessGroup, timeout: float = 120.0):
        self.rank, self.world_size = group.rank, group.world_size
        self._peers: list[socket.socket] = []
        if group.world_size == 1:
            return
        # the data connections use the port after the rendezvous's, announced through it
        port = group.master_port + 1
        share_bytes(group, lambda: b"ready", timeout)
        deadline = time.monotonic() + timeout
        if group.rank == 0:
            with socket.create_server((group.master_addr, port)) as server:
                server.settimeout(timeout)
                peers = {}
                while len(peers) < group.world_size - 1:
                    connection, _ = server.accept()
                    peers[struct.unpack("!I", _exactly(connection, 4))[0]] = connection
            self._peers = [peers[r] for r in sorted(peers)]
        else:
            while True:
                try:
                    connection = socket.create_connection((group.master_addr, port), timeout=timeout)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            connection.sendall(struct.pack("!I", group.rank))
            self._peers = [connection]

    def all_reduce(self, buffer, count: int, dtype, stream: int) -> None:
        if self.world_size == 1:
            return
        values = buffer[:count].view(dtype)
        if self.rank != 0:
            self._peers[0].sendall(values.tobytes())
            buffer[:count] = np.frombuffer(_exactly(self._peers[0], values.nbytes), np.uint16)
            return
        total = values.astype(np.float32)
        for peer in self._peers:
            total += np.frombuffer(_exactly(peer, values.nbytes), dtype).astype(np.float32)
        result = total.astype(dtype).view(np.uint16)
        for peer in self._peers:
            peer.sendall(result.tobytes())
        buffer[:count] = result

    def abort(self) -> None:
        for peer in self._peers:
            peer.close()


def _exactly(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("a tensor-parallel rank closed its connection (it failed or ended)")
        data += chunk
    return bytes(data)


def communicator_for(group: ProcessGroup):
    """NCCL on a GPU, the host communicator under the simulator."""
    from flashllm_nb.llm import device

    return HostCommunicator(group) if device.SIMULATOR else NcclCommunicator(group)
