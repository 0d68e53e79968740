"""The whole decoder in Numba's CUDA simulator at tiny sizes, against the float64 reference decoder
(flashllm_nb.reference.decoder, itself checked against Hugging Face's models in tests/test_llm_gpu.py).

Each simulated forward takes seconds, so these tests share their checkpoints and keep prompts short."""

from __future__ import annotations

import numpy as np
import pytest

from flashllm_nb import llm
from flashllm_nb.llm.config import from_hf
from flashllm_nb.llm.weights import prune_bits
from flashllm_nb.reference.decoder import decoder_logits
from flashllm_nb.reference.tolerance import assert_logits_close
from llm_checkpoints import BFLOAT16, random_tensors, tiny_config, write_checkpoint

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def opt_checkpoint(tmp_path_factory):
    """OPT with 60 % of its linear weights masked to zero (W * mask: -0.0 where W < 0), in two shards."""
    hf = tiny_config("opt-tiny")
    tensors = random_tensors(hf, seed=11, zero_fraction=0.6)
    return write_checkpoint(tmp_path_factory.mktemp("opt"), hf, tensors, shards=2), tensors


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    """Llama with grouped-query attention (4 query heads on 2 key-value heads) and an untied head."""
    hf = tiny_config("llama-tiny")
    tensors = random_tensors(hf, seed=12)
    return write_checkpoint(tmp_path_factory.mktemp("llama"), hf, tensors), tensors


def test_opt_forward_keeps_checkpoint_zeros_and_matches_reference(opt_checkpoint):
    """sparsity=None: every linear stays with the checkpoint's zeros (Tiled-CSL, nnz = its nonzeros), and the
    logits of a batch of two sequences match the float64 decoder on the same weights, row by row."""
    path, tensors = opt_checkpoint
    model = llm.load(path, progress=False)
    q = tensors["layers.0.self_attn.q_proj.weight"]
    k = tensors["layers.0.self_attn.k_proj.weight"]
    v = tensors["layers.0.self_attn.v_proj.weight"]
    assert model.blocks[0].qkv.sparse
    assert model.blocks[0].qkv.weight.nnz == int(np.count_nonzero(np.concatenate([q, k, v]) != 0))
    ids = np.array([[2, 7, 33, 90, 5], [11, 0, 4, 60, 31]])
    logits = model.forward(ids)
    assert logits.shape == (2, 5, model.config.vocab_size) and logits.dtype == np.float32
    for b in range(2):
        assert_logits_close(logits[b], decoder_logits(model.config, tensors, ids[b]), model.config.num_layers,
                            model.dtype, what=f"sequence {b}")


def test_prune_at_load_is_exact_per_row_and_dense_prefill_agrees(llama_checkpoint):
    """magnitude-row pruning at load keeps the same count in every output row of every checkpoint matrix; the model
    computes with exactly those weights; forcing the prefill through the expanded dense scratch gives logits within
    the same bound."""
    path, tensors = llama_checkpoint
    model = llm.load(path, sparsity=0.75, prune="magnitude-row", progress=False)
    pruned = dict(tensors)
    for name, value in tensors.items():
        if name.startswith("layers.") and name.endswith("proj.weight"):
            pruned[name] = prune_bits(value.view(np.uint16), 0.75, "magnitude-row").view(np.float16)
            per_row = np.count_nonzero(pruned[name], axis=1)
            assert (per_row == value.shape[1] - round(0.75 * value.shape[1])).all(), name
    gate, up = pruned["layers.1.mlp.gate_proj.weight"], pruned["layers.1.mlp.up_proj.weight"]
    np.testing.assert_array_equal(model.blocks[1].ffn_in.weight.to_dense(), np.concatenate([gate, up]))
    ids = np.array([[1, 50, 3, 77]])
    ref = decoder_logits(model.config, pruned, ids[0])
    assert_logits_close(model.forward(ids)[0], ref, model.config.num_layers, model.dtype, what="sparse prefill")
    model.prefill.policy = "dense"
    assert_logits_close(model.forward(ids)[0], ref, model.config.num_layers, model.dtype, what="dense prefill")


def test_generate_with_cache_equals_full_forward_and_batch_equals_alone(llama_checkpoint):
    """Mixed-length prompts decoded together: each step's logits equal a full forward of the sequence so far (same
    bound against the reference), and each sequence's greedy tokens equal its tokens generated alone."""
    path, tensors = llama_checkpoint
    model = llm.load(path, progress=False)
    prompts = [np.array([5, 9, 13]), np.array([40, 2, 7, 8, 1])]
    out, step_logits = llm.generate(model, prompts, max_new_tokens=3, eos_token_id=None, output_logits=True)
    assert [o.size for o in out] == [6, 8] and step_logits.shape == (2, 3, model.config.vocab_size)
    for b, prompt in enumerate(prompts):
        full = out[b][:-1]
        ref = decoder_logits(model.config, tensors, full)[prompt.size - 1:]
        assert_logits_close(step_logits[b], ref, model.config.num_layers, model.dtype, what=f"sequence {b} steps")
        assert (out[b][prompt.size:] == np.argmax(step_logits[b], axis=1)).all()
    alone = llm.generate(model, prompts[1][None, :], max_new_tokens=3, eos_token_id=None)
    np.testing.assert_array_equal(alone[0], out[1])


def test_decode_past_one_block_of_keys_splits_attention_and_equals_full_forward(tmp_path):
    """Past 64 cached positions (a simulated attention block's keys per round) a batch-1 decode step splits each
    head's keys into spans, the last span's block combining them: each step's logits equal the float64 decoder on
    the whole sequence so far."""
    from flashllm_nb.llm import attention

    # one layer, two query heads on one key-value head: the 63-token prefill's attention (a simulated block per
    # token and head) is most of this test's time
    hf = tiny_config("llama-tiny", max_position_embeddings=128, num_attention_heads=2, num_key_value_heads=1,
                     num_hidden_layers=1)
    tensors = random_tensors(hf, seed=13)
    model = llm.load(write_checkpoint(tmp_path, hf, tensors), progress=False)
    model.prefill.policy = "dense"  # the 63-token prefill through cuBLAS's stand-in: seconds fewer in the simulator
    prompt = np.random.default_rng(13).integers(0, hf["vocab_size"], 63)
    new = 3
    assert attention.attention_splits(1, model.config.num_heads, prompt.size + new - 1) > 1  # the cache splits
    out, step_logits = llm.generate(model, prompt[None, :], max_new_tokens=new, eos_token_id=None,
                                    output_logits=True)
    ref = decoder_logits(model.config, tensors, out[0][:-1])[prompt.size - 1:]
    assert_logits_close(step_logits[0], ref, model.config.num_layers, model.dtype, what="split decode steps")


def test_bfloat16_model_and_eos(tmp_path):
    """A bfloat16 checkpoint runs in bfloat16 within the bf16 bound; generation stops a sequence at its end id
    and pads a rectangular result after it."""
    hf = tiny_config("llama-tiny", torch_dtype="bfloat16", tie_word_embeddings=True)
    tensors = random_tensors(hf, seed=13, dtype=BFLOAT16)
    model = llm.load(write_checkpoint(tmp_path, hf, tensors), progress=False)
    assert model.dtype == BFLOAT16
    ids = np.array([[3, 8, 21]])
    logits = model.forward(ids)
    assert_logits_close(logits[0], decoder_logits(model.config, tensors, ids[0]), model.config.num_layers,
                        model.dtype)
    first = int(np.argmax(logits[0, -1]))
    out = llm.generate(model, ids, max_new_tokens=4, eos_token_id=first)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else first
    assert out.shape == (1, 7) and out[0, 3] == first and (out[0, 4:] == pad).all()


def test_save_and_load_folder_round_trip(opt_checkpoint, tmp_path):
    """A model saved to its own folder loads back with bit-identical weights (and refuses sparsity= then)."""
    path, _ = opt_checkpoint
    model = llm.load(path, sparsity=0.7, progress=False)
    model.save(tmp_path / "saved")
    again = llm.load(tmp_path / "saved", progress=False)
    assert again.config == model.config and again.dtype == model.dtype
    for a, b in zip(model.linears, again.linears):
        assert a.sparse == b.sparse
        np.testing.assert_array_equal(a.weight.to_dense(bits=True), b.weight.to_dense(bits=True))
        np.testing.assert_array_equal(a.bias, b.bias)
    np.testing.assert_array_equal(model.embed_tokens, again.embed_tokens)
    np.testing.assert_array_equal(model.blocks[1].ffn_norm.bias, again.blocks[1].ffn_norm.bias)
    with pytest.raises(ValueError, match="sparsity"):
        llm.load(tmp_path / "saved", sparsity=0.5, progress=False)


def test_random_model_is_pruned_and_runs():
    """random_model builds a preset's shapes pruned to the asked sparsity and produces finite logits."""
    model = llm.random_model("opt-tiny", sparsity=0.8, progress=False)
    for layer in model.linears:
        assert layer.sparse and abs(layer.weight.sparsity - 0.8) < 1e-3
    assert np.isfinite(model.forward(np.array([[1, 2]]))).all()
    assert from_hf(llm.PRESETS["opt-tiny"]) == model.config


def test_checkpoint_tensors_give_back_the_loaded_weights(llama_checkpoint):
    """The fused layers split back into the checkpoint's matrices, bit for bit (an untied head, GQA shapes)."""
    path, tensors = llama_checkpoint
    model = llm.load(path, progress=False)
    exported = model.checkpoint_tensors()
    assert sorted(exported) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(exported[name].view(np.uint16), value.view(np.uint16), err_msg=name)


def test_saved_folder_is_checked_before_loading(opt_checkpoint, tmp_path):
    """A dense tensor cut short in dense.safetensors is refused, naming it; so are settings that a saved model's
    matrices cannot honour."""
    from safetensors.numpy import load_file, save_file

    path, _ = opt_checkpoint
    model = llm.load(path, sparsity=0.7, progress=False)
    model.save(tmp_path / "saved")
    with pytest.raises(ValueError, match="dtype"):
        llm.load(tmp_path / "saved", dtype="bfloat16", progress=False)
    dense = load_file(str(tmp_path / "saved" / "dense.safetensors"))
    dense["layers.1.ffn_norm.bias"] = dense["layers.1.ffn_norm.bias"][:10]
    save_file(dense, str(tmp_path / "saved" / "dense.safetensors"))
    with pytest.raises(ValueError, match=r"'layers\.1\.ffn_norm\.bias'.*expected 64 float16 values, got 10"):
        llm.load(tmp_path / "saved", progress=False)
