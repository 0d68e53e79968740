"""Tensor parallelism end to end without a GPU: two processes, started by the launcher, each load their shard of a
tiny checkpoint in the simulator and sum their partial outputs through the host communicator; the logits must
match the float64 reference within the fp16 bound and greedy generation must follow it where its choice is clear.
``flashllm-nb generate --tp 2`` runs the same way. On a machine with GPUs the same code runs over NCCL (not
testable here: the device tool lends one GPU at a time)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from flashllm_nb.llm.config import from_hf
from flashllm_nb.reference.decoder import decoder_logits
from flashllm_nb.reference.tolerance import assert_logits_close, logits_bound
from llm_checkpoints import random_tensors, tiny_config, write_checkpoint
from parallel_ranks import run_ranks

pytestmark = pytest.mark.sim

RANK_SCRIPT = """
import json, os, sys
import numpy as np
from flashllm_nb import llm
path, out, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = llm.load(path, tensor_parallel=world, progress=False)
ids = np.array(json.loads(os.environ["IDS"]))
logits = model.forward(ids)
tokens = llm.generate(model, ids[:1], max_new_tokens=4, eos_token_id=None)
if os.environ["RANK"] == "0":
    np.savez(out, logits=logits, tokens=tokens, heads=model.config.num_heads)
"""


@pytest.mark.parametrize("name", ["opt-tiny", "llama-tiny"])
def test_two_ranks_match_the_reference(tmp_path, monkeypatch, name):
    hf_config, tensors, ids, result = run_ranks(tmp_path, monkeypatch, name, RANK_SCRIPT, 2, (2, 6), seed=5,
                                                simulator=True)
    config = from_hf(hf_config)
    assert int(result["heads"]) == config.num_heads // 2  # each rank ran half the heads
    ref = np.stack([decoder_logits(config, tensors, row) for row in ids])
    assert_logits_close(result["logits"], ref, config.num_layers, np.float16, what=f"{name} over 2 ranks")
    tokens = result["tokens"][0]
    full_ref = decoder_logits(config, tensors, tokens[:-1])[ids.shape[1] - 1:]
    top2 = np.sort(full_ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * logits_bound(full_ref, config.num_layers, np.float16).max(axis=1)
    decided = np.cumprod(clear).astype(bool)
    assert (tokens[ids.shape[1]:][decided] == np.argmax(full_ref, axis=1)[decided]).all()


def test_generate_command_with_tp_launches_its_ranks(tmp_path):
    hf_config = tiny_config("opt-tiny")
    path = write_checkpoint(tmp_path / "ckpt", hf_config, random_tensors(hf_config, zero_fraction=0.8))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-m", "flashllm_nb.cli", "generate", "--model", path, "--prompt-ids",
                          "5,6,7", "--max-new-tokens", "2", "--tp", "2"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[rank 0] new ids" in run.stdout and "(rank 0 of 2)" in run.stdout
    assert "[rank 1] new ids" not in run.stdout  # only rank 0 reports
    bad = subprocess.run([sys.executable, "-m", "flashllm_nb.cli", "generate", "--model", path, "--tp", "3"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--tp 3: Invalid tensor_parallel: expected a divisor of num_heads (4)" in \
        bad.stderr and "[rank" not in bad.stdout  # refused before any rank starts


def test_one_rank_is_the_single_gpu_model_and_a_missing_launch_is_named(tmp_path, monkeypatch):
    from flashllm_nb import llm

    for variable in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(variable, raising=False)
    hf_config = tiny_config("llama-tiny")
    path = write_checkpoint(tmp_path, hf_config, random_tensors(hf_config, zero_fraction=0.8))
    ids = np.array([[5, 6, 7, 8]])
    single = llm.load(path, progress=False)
    one = llm.load(path, tensor_parallel=1, progress=False)
    assert one.communicator is None and one.config == single.config
    np.testing.assert_array_equal(one.forward(ids), single.forward(ids))
    with pytest.raises(ValueError, match=r"2 ranks asked for, but this process is one of 1 \(WORLD_SIZE\).*--tp 2"):
        llm.load(path, tensor_parallel=2, progress=False)


def test_bench_e2e_with_tp_runs_its_ranks_and_refuses_what_cannot_split():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-m", "flashllm_nb.cli", "bench-e2e", "--tp", "2"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[rank 0] generated" in run.stdout and "[rank 1]" not in run.stdout
    for extra, message in ((["--tp", "3"], "--tp 3 with opt-tiny: Invalid tensor_parallel: expected a divisor of "
                                           "num_heads (4)"),
                           (["--tp", "2", "--hf"], "--tp runs this library's rows only")):
        bad = subprocess.run([sys.executable, "-m", "flashllm_nb.cli", "bench-e2e", *extra], env=env,
                             capture_output=True, text=True, timeout=600)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
