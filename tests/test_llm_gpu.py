"""The engine on a GPU, against Hugging Face ``transformers`` (the GPU machine has it, with PyTorch): the same
checkpoint, saved by transformers itself with 80 % of its linear weights masked to zero, loaded by both; logits,
greedy tokens, the captured decode step against eager steps, the dense prefill path, bfloat16, and a memory
refusal. Skipped where there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest

from flashllm_nb.reference.tolerance import assert_logits_close, logits_bound
from llm_checkpoints import zero_decoder_linears

pytestmark = pytest.mark.gpu

CONFIGS = {
    "opt": dict(model_type="opt", vocab_size=512, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                ffn_dim=1024, max_position_embeddings=256, word_embed_proj_dim=256),
    "opt-350m-like": dict(model_type="opt", vocab_size=512, hidden_size=256, num_hidden_layers=3,
                          num_attention_heads=4, ffn_dim=512, max_position_embeddings=256, word_embed_proj_dim=128,
                          do_layer_norm_before=False),
    "llama-gqa": dict(model_type="llama", vocab_size=512, hidden_size=256, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, intermediate_size=704,
                      max_position_embeddings=256, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral-window": dict(model_type="mistral", vocab_size=512, hidden_size=256, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=4, intermediate_size=512,
                           max_position_embeddings=256, sliding_window=24),
}


def _hf_checkpoint(path, name: str, dtype: str = "float16", seed: int = 0):
    """A transformers model of ``CONFIGS[name]`` with 80 % of each decoder linear weight zeroed by a mask, saved
    in ``dtype``; returns the folder and the same model in float64 (the reference)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(**CONFIGS[name])
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    zero_decoder_linears(model, 0.8)
    model.to(getattr(torch, dtype)).save_pretrained(path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                                                  attn_implementation="eager").cuda().eval()
    return str(path), reference


def _hf_logits(reference, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return reference(torch.as_tensor(ids, device="cuda")).logits.cpu().numpy()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    """Batch of 3 sequences of 40 tokens (sliding window 24 included); sparsity=None keeps the masked zeros: every
    decoder linear is Tiled-CSL."""
    from flashllm_nb import llm

    path, reference = _hf_checkpoint(tmp_path, name)
    model = llm.load(path, progress=False)
    assert all(layer.sparse for layer in model.linears)
    ids = np.random.default_rng(1).integers(0, 512, (3, 40))
    got = model.forward(ids).get()
    ref = _hf_logits(reference, ids)
    assert_logits_close(got, ref, model.config.num_layers, model.dtype, what=name)


def test_bfloat16_and_pruning_at_load(tmp_path):
    """A bfloat16 checkpoint pruned further at load (magnitude, 90 %) against transformers on the same pruned
    weights."""
    import torch

    from flashllm_nb import llm
    from flashllm_nb.prune import magnitude

    path, reference = _hf_checkpoint(tmp_path, "llama-gqa", dtype="bfloat16")
    model = llm.load(path, sparsity=0.9, progress=False)
    with torch.no_grad():
        for module_name, module in reference.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in module_name:
                # the engine prunes each matrix's bfloat16 bits by magnitude (as float16 patterns: same order)
                bits = module.weight.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
                kept = magnitude(bits.view(np.float16), 0.9).view(np.uint16) != 0
                module.weight.mul_(torch.as_tensor(kept, device=module.weight.device))
    ids = np.random.default_rng(2).integers(0, 512, (2, 33))
    assert_logits_close(model.forward(ids).get(), _hf_logits(reference, ids), model.config.num_layers, model.dtype)


def test_greedy_generation_matches_transformers_and_graph_matches_eager(tmp_path):
    """Mixed-length prompts: the captured decode step gives exactly the eager steps' tokens and logits, and the
    tokens are transformers' greedy tokens wherever its top two logits are further apart than the bound."""
    from flashllm_nb import llm

    path, reference = _hf_checkpoint(tmp_path, "llama-gqa")
    model = llm.load(path, progress=False)
    prompts = [np.random.default_rng(3).integers(0, 512, n) for n in (7, 30, 1)]
    graph_out, graph_logits = llm.generate(model, prompts, max_new_tokens=24, eos_token_id=None, output_logits=True)
    eager_out, eager_logits = llm.generate(model, prompts, max_new_tokens=24, eos_token_id=None, output_logits=True,
                                           use_graph=False)
    for a, b in zip(graph_out, eager_out):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(graph_logits, eager_logits)
    for b, prompt in enumerate(prompts):
        full = graph_out[b]
        ref = _hf_logits(reference, full[None, :-1])[0, prompt.size - 1:]
        assert_logits_close(graph_logits[b], ref, model.config.num_layers, model.dtype, what=f"sequence {b}")
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * logits_bound(ref, model.config.num_layers, model.dtype).max(axis=1)
        decided = np.cumprod(clear).astype(bool)  # up to the first close call, the sequences must agree
        assert (full[prompt.size:][decided] == np.argmax(ref, axis=1)[decided]).all()


def test_decoding_past_one_block_of_keys_splits_attention(tmp_path):
    """A batch-1 decode over more than 128 cached positions splits each head's keys into spans, the last span's block
    combining them: the captured steps (dependent launches on) give the eager steps' logits exactly, and those are
    transformers' within the bound."""
    from flashllm_nb import llm
    from flashllm_nb.llm import attention

    path, reference = _hf_checkpoint(tmp_path, "llama-gqa")
    model = llm.load(path, progress=False)
    prompt, new = np.random.default_rng(4).integers(0, 512, 150), 16
    assert attention.attention_splits(1, model.config.num_heads, prompt.size + new - 1) > 1
    graph_out, graph_logits = llm.generate(model, prompt[None, :], max_new_tokens=new, eos_token_id=None,
                                           output_logits=True)
    eager_out, eager_logits = llm.generate(model, prompt[None, :], max_new_tokens=new, eos_token_id=None,
                                           output_logits=True, use_graph=False)
    np.testing.assert_array_equal(graph_out, eager_out)
    np.testing.assert_array_equal(graph_logits, eager_logits)
    ref = _hf_logits(reference, graph_out[:, :-1])[0, prompt.size - 1:]
    assert_logits_close(graph_logits[0], ref, model.config.num_layers, model.dtype, what="split decode steps")


def test_dense_prefill_and_sampling(tmp_path):
    """Over 64 prompt tokens the dense-scratch prefill and the sparse kernel agree within the bound; sampling with
    one seed repeats itself and two seeds differ."""
    from flashllm_nb import llm

    path, reference = _hf_checkpoint(tmp_path, "opt")
    model = llm.load(path, progress=False)
    ids = np.random.default_rng(4).integers(0, 512, (2, 100))
    ref = _hf_logits(reference, ids)
    for policy in ("sparse", "dense", "auto"):
        model.prefill.policy = policy
        assert_logits_close(model.forward(ids).get(), ref, model.config.num_layers, model.dtype, what=policy)
    a = llm.generate(model, ids[:, :10], max_new_tokens=16, temperature=0.8, top_p=0.9, seed=5, eos_token_id=None)
    b = llm.generate(model, ids[:, :10], max_new_tokens=16, temperature=0.8, top_p=0.9, seed=5, eos_token_id=None)
    c = llm.generate(model, ids[:, :10], max_new_tokens=16, temperature=0.8, top_p=0.9, seed=6, eos_token_id=None)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_model_too_large_is_refused_before_allocating():
    """Dense OPT-175B (350 GB) on one GPU: MemoryError naming the numbers, and no GPU memory taken."""
    import cupy

    from flashllm_nb import llm

    cupy.get_default_memory_pool().free_all_blocks()
    before = cupy.cuda.runtime.memGetInfo()[0]
    with pytest.raises(MemoryError, match=r"needs about \d+\.\d+ GB.*is free.*sparsity >= 0\.\d\d would fit"):
        llm.random_model("opt-175b", sparsity=0.0, progress=False)
    assert cupy.cuda.runtime.memGetInfo()[0] >= before - (64 << 20)


def test_a_built_model_pins_no_freed_memory():
    """Building a model leaves nothing of its temporaries behind: after CuPy's pool returns its free blocks, every
    byte the pool still holds is the model's own (a result allocated among large temporaries would pin them, and
    a KV cache then finds the memory in pieces). OPT-1.3B's shapes, 80 % sparse."""
    import cupy

    from flashllm_nb import llm

    pool = cupy.get_default_memory_pool()
    model = llm.random_model("opt-1.3b", sparsity=0.8, progress=False)
    pool.free_all_blocks()
    pinned = pool.total_bytes() - pool.used_bytes()
    assert pinned < (16 << 20), f"{pinned / 2**20:.0f} MiB of freed memory still held after building {model!r}"
