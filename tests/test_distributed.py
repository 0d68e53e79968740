"""The process side of tensor parallelism without a GPU (``flashllm_nb.llm.distributed``): the environment
bootstrap (torchrun's and Slurm's variables, and their refusals), rank 0 sharing a value with every rank over TCP,
and the one-node launcher stopping every rank when one fails."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest

from flashllm_nb.llm.distributed import ProcessGroup, RankFailed, launch, process_group_from_environ, share_bytes


def test_environment_of_torchrun_slurm_and_none():
    assert process_group_from_environ({}) == ProcessGroup()
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29400"}
    assert process_group_from_environ(torchrun) == ProcessGroup(3, 4, 1, "node7", 29400)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "node2"}
    assert process_group_from_environ(slurm) == ProcessGroup(5, 8, 1, "node2", 29500)
    both = dict(slurm, RANK="0", WORLD_SIZE="2")
    assert process_group_from_environ(both).world_size == 2  # torchrun's variables win


@pytest.mark.parametrize("environ,message", [
    ({"RANK": "4", "WORLD_SIZE": "4"}, r"RANK: expected an integer in \[0, 4\), got '4'"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, r"WORLD_SIZE: expected an integer >= 1, got 'two'"),
    ({"RANK": "0"}, "WORLD_SIZE is missing"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "0"}, r"MASTER_PORT: expected an integer in \[1, 65536\)"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, "MASTER_ADDR must name rank 0's host under Slurm"),
])
def test_bad_environment_is_named(environ, message):
    with pytest.raises(ValueError, match=message):
        process_group_from_environ(environ)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_zero_shares_its_value_with_every_rank():
    port, world = _free_port(), 4
    got = {}

    def rank(r):
        got[r] = share_bytes(ProcessGroup(r, world, r, "127.0.0.1", port), lambda: os.urandom(128), timeout=20)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (3, 1, 2, 0)]  # clients may come first
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == world and len(set(got.values())) == 1 and len(got[0]) == 128


def test_a_missing_rank_times_out_with_a_count():
    group = ProcessGroup(0, 3, 0, "127.0.0.1", _free_port())
    with pytest.raises(TimeoutError, match="Only 0 of 2 other ranks connected"):
        share_bytes(group, lambda: b"id", timeout=0.5)


def test_launcher_runs_every_rank_with_its_variables(capfd):
    launch(3, ["-c", "import os; print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], "
                     "os.environ['NCCL_NVLS_ENABLE'])"])
    out = capfd.readouterr().out
    for r in range(3):
        assert f"[rank {r}] rank {r} of 3 0" in out


def test_launcher_stops_every_rank_when_one_fails():
    script = ("import os, sys, time\n"
              "if os.environ['RANK'] == '1':\n"
              "    print('out of memory on rank 1'); sys.exit(3)\n"
              "time.sleep(60)\n")
    start = time.monotonic()
    with pytest.raises(RankFailed, match=r"rank 1 failed with exit code 3(.|\n)*out of memory on rank 1") as error:
        launch(3, ["-c", script], grace=2.0)
    assert error.value.rank == 1 and error.value.returncode == 3
    assert time.monotonic() - start < 30  # the sleeping ranks were stopped, not waited for
    with pytest.raises(ValueError, match="Invalid value of world_size"):
        launch(0, ["-c", "pass"])
    assert sys.executable
