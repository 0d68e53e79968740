"""Tensor parallelism over NCCL on two GPUs: two processes load their shards of a checkpoint and must give the
single-GPU model's logits within the fp16 bound, and the captured decode step (all-reduces inside the graph) must
give the eager steps' tokens. Skipped where fewer than two GPUs are visible, saying so."""

from __future__ import annotations

import numpy as np
import pytest

from flashllm_nb.llm.config import from_hf
from flashllm_nb.reference.decoder import decoder_logits
from flashllm_nb.reference.tolerance import assert_logits_close
from parallel_ranks import run_ranks

pytestmark = pytest.mark.gpu

RANK_SCRIPT = """
import json, os, sys
import numpy as np
from flashllm_nb import llm
path, out, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = llm.load(path, tensor_parallel=world, progress=False)
ids = np.array(json.loads(os.environ["IDS"]))
logits = model.forward(ids).get()
graph = llm.generate(model, ids, max_new_tokens=8, eos_token_id=None)
eager = llm.generate(model, ids, max_new_tokens=8, eos_token_id=None, use_graph=False)
if os.environ["RANK"] == "0":
    np.savez(out, logits=logits, graph=graph, eager=eager)
"""


def _gpus() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CUDA at all: the gpu marker skips first
        return 0


@pytest.mark.skipif(_gpus() < 2, reason="needs two GPUs (tensor parallelism over NCCL)")
@pytest.mark.parametrize("name", ["opt-tiny", "llama-tiny"])
def test_two_gpus_match_the_reference_and_the_graph_matches_eager(tmp_path, monkeypatch, name):
    hf_config, tensors, ids, result = run_ranks(tmp_path, monkeypatch, name, RANK_SCRIPT, 2, (2, 9), seed=7,
                                                simulator=False)
    config = from_hf(hf_config)
    ref = np.stack([decoder_logits(config, tensors, row) for row in ids])
    assert_logits_close(result["logits"], ref, config.num_layers, np.float16, what=f"{name} on 2 GPUs")
    np.testing.assert_array_equal(result["graph"], result["eager"])
