"""Processes of a tensor-parallel run: where each learns its rank, how they agree on one NCCL id, and a launcher for
one node.

- :func:`process_group_from_environ` reads the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or Slurm's (``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_LOCALID``, with ``MASTER_ADDR`` / ``MASTER_PORT`` from the job script), so the same program runs under
  either and across nodes; no variables at all is one process.
- :func:`share_bytes`: rank 0 makes a value (the NCCL unique id), listens on ``MASTER_ADDR:MASTER_PORT`` and sends
  it to every other rank, which connect until the timeout.
- :func:`launch`: start one process per GPU on this node with those variables set and NVLink multicast off
  (``NCCL_NVLS_ENABLE=0``); when one fails, stop the others at once and report which rank failed and how, instead
  of leaving them waiting in a collective.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

__all__ = ["ProcessGroup", "process_group_from_environ", "share_bytes", "launch", "launch_command", "RankFailed"]

_TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_SLURM = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a run: ``rank`` of ``world_size``, GPU ``local_rank`` of its node, and the address
    where rank 0 listens."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def _int_variable(environ: Mapping[str, str], name: str, low: int, high: int | None = None) -> int:
    text = environ[name]
    bound = f">= {low}" if high is None else f"in [{low}, {high})"
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        raise ValueError(f"Invalid environment variable {name}: expected an integer {bound}, got {text!r}")
    return value


def process_group_from_environ(environ: Mapping[str, str] | None = None) -> ProcessGroup:
    """The process group the environment describes (torchrun's variables first, then Slurm's); a single process
    when neither is set. A variable that is set but wrong is named in a ValueError."""
    environ = os.environ if environ is None else environ
    names = _TORCHRUN if any(n in environ for n in _TORCHRUN) else _SLURM if "SLURM_PROCID" in environ else None
    if names is None:
        return ProcessGroup()
    missing = [n for n in names[:2] if n not in environ]
    if missing:
        raise ValueError(f"Invalid environment: {names[0]} and {names[1]} must be set together; {missing[0]} is "
                         f"missing")
    world = _int_variable(environ, names[1], 1)
    rank = _int_variable(environ, names[0], 0, world)
    local_rank = _int_variable(environ, names[2], 0) if names[2] in environ else rank
    if world > 1 and "MASTER_ADDR" not in environ and names is _SLURM:
        raise ValueError("Invalid environment: MASTER_ADDR must name rank 0's host under Slurm (set it in the job "
                         "script, e.g. from scontrol show hostnames)")
    port = _int_variable(environ, "MASTER_PORT", 1, 65536) if "MASTER_PORT" in environ else ProcessGroup.master_port
    return ProcessGroup(rank, world, local_rank, environ.get("MASTER_ADDR", "127.0.0.1"), port)


def share_bytes(group: ProcessGroup, make: Callable[[], bytes], timeout: float = 120.0) -> bytes:
    """Rank 0's ``make()``, on every rank: rank 0 serves it on ``master_addr:master_port`` to the other
    ``world_size - 1`` ranks, which connect (retrying until ``timeout`` seconds) and read it. A rank that does not
    arrive in time raises TimeoutError on rank 0, naming how many came."""
    if group.world_size == 1:
        return make()
    deadline = time.monotonic() + timeout
    if group.rank == 0:
        value = make()
        with socket.create_server((group.master_addr, group.master_port), reuse_port=False) as server:
            server.settimeout(timeout)
            for arrived in range(group.world_size - 1):
                try:
                    connection, _ = server.accept()
                except socket.timeout:
                    raise TimeoutError(f"Only {arrived} of {group.world_size - 1} other ranks connected to "
                                       f"{group.master_addr}:{group.master_port} within {timeout} s") from None
                with connection:
                    connection.sendall(struct.pack("!I", len(value)) + value)
        return value
    while True:
        try:
            with socket.create_connection((group.master_addr, group.master_port), timeout=timeout) as connection:
                connection.settimeout(max(deadline - time.monotonic(), 0.1))
                size = struct.unpack("!I", _read(connection, 4))[0]
                return _read(connection, size)
        except (ConnectionRefusedError, OSError) as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Rank {group.rank} could not reach rank 0 at {group.master_addr}:"
                                   f"{group.master_port} within {timeout} s: {error}") from None
            time.sleep(0.05)


def _read(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("rank 0 closed the connection before sending the value")
        data += chunk
    return data


class RankFailed(RuntimeError):
    """A rank of a launched run exited with an error; ``rank`` and ``returncode`` say which and how."""

    def __init__(self, rank: int, returncode: int, tail: str):
        self.rank, self.returncode = rank, returncode
        super().__init__(f"rank {rank} failed with exit code {returncode}; the other ranks were stopped"
                         + (f"\n--- last lines of rank {rank}'s output ---\n{tail}" if tail else ""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, argv: Sequence[str], environ: Mapping[str, str] | None = None, port: int | None = None,
           grace: float = 5.0, poll: float = 0.05) -> None:
    """Run ``python argv...`` as ``world_size`` processes on this node, rank r on GPU r, and wait for all of them.

    Each gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` (127.0.0.1), ``MASTER_PORT`` (``port``, or a
    free one) and ``NCCL_NVLS_ENABLE=0``. Output goes to this process's, each line prefixed with the rank. When a
    rank exits with an error the others get SIGTERM (SIGKILL after ``grace`` seconds) and :class:`RankFailed` is
    raised."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"Invalid value of world_size: expected an integer >= 1, got {world_size!r}")
    base = dict(os.environ if environ is None else environ)
    base.update(WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port or _free_port()),
                NCCL_NVLS_ENABLE="0")
    processes = []
    for rank in range(world_size):
        env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        processes.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, bufsize=1))
    outputs: list[list[str]] = [[] for _ in processes]

    def relay(rank: int, stream) -> None:
        for line in stream:
            outputs[rank].append(line)
            print(f"[rank {rank}] {line}", end="", flush=True)

    relays = [threading.Thread(target=relay, args=(r, p.stdout), daemon=True) for r, p in enumerate(processes)]
    for thread in relays:
        thread.start()
    failed = None
    while True:
        codes = [p.poll() for p in processes]
        failed = next((r for r, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None or all(code is not None for code in codes):
            break
        time.sleep(poll)
    if failed is not None:
        for p in processes:
            if p.poll() is None:
                p.terminate()
        stop = time.monotonic() + grace
        for p in processes:
            try:
                p.wait(max(stop - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for thread in relays:
        thread.join(timeout=1.0)
    if failed is not None:
        raise RankFailed(failed, processes[failed].returncode, "".join(outputs[failed][-20:]).rstrip())


def launch_command(world_size: int, command: str, argv: Sequence[str]) -> int | None:
    """For a ``flashllm-nb`` command asked to run on ``world_size`` GPUs: in the process a user started (no rank
    in the environment), run ``flashllm-nb command argv...`` as ``world_size`` ranks and return its exit status (1,
    with the failing rank's report on stderr, when one fails); in a rank, or for one GPU, None: go on."""
    if world_size <= 1 or process_group_from_environ().world_size > 1:
        return None
    try:
        launch(world_size, ["-m", "flashllm_nb.cli", command, *argv])
    except RankFailed as error:
        print(error, file=sys.stderr)
        return 1
    return 0
