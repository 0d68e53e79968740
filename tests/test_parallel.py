"""Tensor-parallel sharding (``flashllm_nb.llm.parallel``) without a GPU: each rank's block computed in float64 on
its shard, the partial outputs summed as the all-reduce sums them, must give the unsharded model's logits; shard
shapes, the bias on rank 0 only, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from flashllm_nb.llm import parallel
from flashllm_nb.llm.config import from_hf
from flashllm_nb.reference.decoder import decoder_logits
from llm_checkpoints import random_tensors, tiny_config

CASES = {
    "opt": tiny_config("opt-tiny"),
    "opt-post-ln": tiny_config("opt-tiny", do_layer_norm_before=False),
    "llama-gqa": tiny_config("llama-tiny"),  # 4 query heads on 2 key-value heads
    "mistral-window": tiny_config("llama-tiny", model_type="mistral", num_key_value_heads=4, sliding_window=5),
}


@pytest.mark.parametrize("name,world", [("opt", 2), ("opt", 4), ("opt-post-ln", 2), ("llama-gqa", 2),
                                        ("mistral-window", 4)])
def test_sharded_ranks_summed_give_the_unsharded_logits(name, world):
    config = from_hf(CASES[name])
    tensors = random_tensors(CASES[name], seed=world)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, 11)
    whole = decoder_logits(config, tensors, ids)
    sharded = decoder_logits(config, tensors, ids, tensor_parallel=world)
    np.testing.assert_allclose(sharded, whole, rtol=1e-10, atol=1e-10 * np.abs(whole).max())


def test_shards_tile_each_matrix_and_keep_each_head_with_its_key_value_head():
    config = from_hf(CASES["llama-gqa"])
    d = config.head_dim
    q_rows = [parallel.shard_span(config, "self_attn.q_proj", 2, r) for r in range(2)]
    kv_rows = [parallel.shard_span(config, "self_attn.k_proj", 2, r) for r in range(2)]
    assert q_rows == [(0, 0, 2 * d), (0, 2 * d, 4 * d)] and kv_rows == [(0, 0, d), (0, d, 2 * d)]
    assert parallel.shard_span(config, "self_attn.o_proj", 2, 1) == (1, 2 * d, 4 * d)
    assert parallel.shard_span(config, "mlp.down_proj", 2, 1) == (1, 48, 96)
    rank_config = parallel.shard_config(config, 2)
    assert (rank_config.num_heads, rank_config.num_kv_heads, rank_config.ffn_size) == (2, 1, 48)
    assert rank_config.hidden_size == config.hidden_size
    bias = np.arange(1.0, 65.0)
    opt = from_hf(CASES["opt"])
    np.testing.assert_array_equal(parallel.shard_tensor(opt, "layers.0.fc2.bias", bias, 2, 0), bias)
    assert not parallel.shard_tensor(opt, "layers.0.fc2.bias", bias, 2, 1).any()
    np.testing.assert_array_equal(parallel.shard_tensor(opt, "layers.1.fc1.bias", np.arange(128.0), 2, 1),
                                  np.arange(64.0, 128.0))
    table = np.ones((96, 64))
    assert parallel.shard_tensor(opt, "embed_tokens.weight", table, 2, 1) is table


def test_uneven_splits_and_bad_arguments_are_refused():
    config = from_hf(CASES["llama-gqa"])
    with pytest.raises(ValueError, match=r"divisor of num_kv_heads \(2\).*got 4"):
        parallel.shard_config(config, 4)
    with pytest.raises(ValueError, match=r"divisor of num_heads \(4\).*got 3"):
        parallel.check_tensor_parallel(config, 3)
    with pytest.raises(ValueError, match="Invalid value of tensor_parallel"):
        parallel.check_tensor_parallel(config, 0)
    with pytest.raises(ValueError, match=r"Invalid value of rank: expected an integer in \[0, 2\)"):
        parallel.shard_span(config, "fc1", 2, 2)
    with pytest.raises(ValueError, match="Invalid value of part"):
        parallel.shard_span(config, "self_attn.rotary", 2, 0)
