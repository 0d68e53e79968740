"""Running a script as tensor-parallel ranks in the tests: a tiny checkpoint, the token ids in the environment,
the launcher, and rank 0's saved results."""

from __future__ import annotations

import json

import numpy as np

from flashllm_nb.llm.distributed import launch
from llm_checkpoints import random_tensors, tiny_config, write_checkpoint


def run_ranks(tmp_path, monkeypatch, name: str, script: str, world: int, ids_shape, seed: int, simulator: bool):
    """Write a tiny checkpoint of preset ``name`` (80 % zeros), run ``script`` as ``world`` ranks with arguments
    (checkpoint folder, output file, world) and ``IDS`` set to random token ids of ``ids_shape``; returns
    (Hugging Face config, tensors, ids, rank 0's ``np.load`` of the output)."""
    hf_config = tiny_config(name)
    tensors = random_tensors(hf_config, seed=seed, zero_fraction=0.8)
    path = write_checkpoint(tmp_path / "ckpt", hf_config, tensors)
    ids = np.random.default_rng(seed).integers(4, hf_config["vocab_size"], ids_shape)
    monkeypatch.setenv("IDS", json.dumps(ids.tolist()))
    if simulator:
        monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    out = tmp_path / "rank0.npz"
    launch(world, ["-c", script, path, str(out), str(world)])
    return hf_config, tensors, ids, np.load(out)
