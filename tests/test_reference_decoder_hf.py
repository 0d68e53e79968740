"""The float64 reference decoder (``flashllm_nb.reference.decoder``), which CI checks the engine against, checked
itself against Hugging Face ``transformers`` in float64 on the CPU: the same checkpoint folder loaded by both, every
family and variant the engine supports (OPT pre- and post-LN with projections, Llama with GQA and llama3 RoPE,
Mistral with a sliding window)."""

from __future__ import annotations

import numpy as np
import pytest

from flashllm_nb.llm.config import from_hf
from flashllm_nb.reference.decoder import decoder_logits
from llm_checkpoints import random_tensors, tiny_config, write_checkpoint

CASES = {
    "opt": tiny_config("opt-tiny"),
    "opt-350m-like": tiny_config("opt-tiny", do_layer_norm_before=False, word_embed_proj_dim=32),
    "llama-gqa-llama3-rope": tiny_config("llama-tiny", rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "llama-linear-rope": tiny_config("llama-tiny", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "mistral-window": tiny_config("llama-tiny", model_type="mistral", num_key_value_heads=4, sliding_window=5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reference_decoder_matches_transformers_in_float64(tmp_path, name):
    import torch
    import transformers

    hf_config = CASES[name]
    tensors = random_tensors(hf_config, seed=3, zero_fraction=0.5)
    path = write_checkpoint(tmp_path, hf_config, tensors)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                                              attn_implementation="eager").eval()
    ids = np.random.default_rng(1).integers(0, hf_config["vocab_size"], 13)
    with torch.no_grad():
        expected = model(torch.as_tensor(ids[None])).logits[0].numpy()
    got = decoder_logits(from_hf(hf_config), tensors, ids)
    # agreement to about 1e-7 of the logits' scale: transformers keeps a few steps in float32 even in a float64
    # model (the rotary angles, which the reference copies, and its attention-mask constants); a wrong operation
    # would differ at order one
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
