"""The engine's host side, in any mode and without running a decoder: configurations and their refusals,
checkpoint checks before any weight moves, memory predictions and refusals, sampling, and argument checks."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from flashllm_nb import llm
from flashllm_nb.llm import memory
from flashllm_nb.llm.checkpoint import Checkpoint
from flashllm_nb.llm.config import PRESETS, from_hf, preset
from flashllm_nb.llm.generate import sample
from llm_checkpoints import random_tensors, tiny_config, write_checkpoint


# ----------------------------------------------------------------------------------------------- configurations


def test_presets_have_the_published_shapes():
    """OPT-66B and Llama-2-70B as Flash-LLM's benchmark and Meta's release describe them."""
    opt = preset("opt-66b")
    assert (opt.hidden_size, opt.num_layers, opt.num_heads, opt.ffn_size, opt.head_dim) == (9216, 64, 72, 36864, 128)
    assert opt.linear_shapes() == {"qkv": (27648, 9216), "out": (9216, 9216), "ffn_in": (36864, 9216),
                                   "ffn_out": (9216, 36864)}
    llama = preset("llama-2-70b")
    assert (llama.num_kv_heads, llama.qkv_size, llama.ffn_in_size) == (8, 8192 + 2 * 1024, 2 * 28672)
    assert preset("opt-350m").word_embed_dim == 512 and not preset("opt-350m").norm_before
    assert set(PRESETS) >= {"opt-125m", "opt-30b", "opt-175b", "llama-3.1-8b", "mistral-7b"}


@pytest.mark.parametrize("change,match", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"activation_function": "gelu"}, "activation_function"),
    ({"hidden_size": 66}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
])
def test_unsupported_opt_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        from_hf({**PRESETS["opt-tiny"], **change})


@pytest.mark.parametrize("change,match", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"head_dim": 12}, "head dimension"),
])
def test_unsupported_llama_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        from_hf({**PRESETS["llama-tiny"], **change})


def test_transformers_4_and_5_rope_fields_agree():
    """rope_theta / rope_scaling (transformers 4) and rope_parameters (5) give the same frequencies."""
    old = from_hf({**PRESETS["llama-tiny"], "rope_theta": 500000.0,
                   "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16}})
    new_fields = {k: v for k, v in PRESETS["llama-tiny"].items() if k != "rope_theta"}
    new = from_hf({**new_fields, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 16}})
    np.testing.assert_array_equal(old.rope_inv_freq(), new.rope_inv_freq())
    assert not np.array_equal(old.rope_inv_freq(), from_hf(PRESETS["llama-tiny"]).rope_inv_freq())


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture
def opt_folder(tmp_path):
    hf = tiny_config("opt-tiny")
    return hf, random_tensors(hf, seed=1), tmp_path


def test_missing_tensor_is_named(opt_folder):
    hf, tensors, path = opt_folder
    write_checkpoint(path, hf, tensors, drop=("layers.1.fc2.bias",))
    with pytest.raises(ValueError, match=r"model\.decoder\.layers\.1\.fc2\.bias"):
        Checkpoint(path)


def test_misshapen_tensor_is_named(opt_folder):
    hf, tensors, path = opt_folder
    tensors["layers.0.fc1.weight"] = tensors["layers.0.fc1.weight"][:, :10]
    write_checkpoint(path, hf, tensors)
    with pytest.raises(ValueError, match=r"shape of tensor 'model\.decoder\.layers\.0\.fc1\.weight'.*\(128, 64\)"):
        Checkpoint(path)


def test_truncated_shard_is_refused_before_loading(opt_folder):
    hf, tensors, path = opt_folder
    write_checkpoint(path, hf, tensors, shards=2)
    shard = os.path.join(path, "model-00002-of-00002.safetensors")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 100)
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
        llm.load(path, progress=False)


def test_missing_config_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Checkpoint(tmp_path)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(PRESETS["opt-tiny"], f)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Checkpoint(tmp_path)


def test_checkpoint_layouts_old_prefix_and_untied_head(tmp_path):
    """OPT tensors saved without the "model." prefix (as facebook/opt-* were) and a Llama with an untied head."""
    hf = tiny_config("opt-tiny")
    tensors = random_tensors(hf)
    from safetensors.numpy import save_file

    os.makedirs(tmp_path / "old")
    save_file({"decoder." + k: v for k, v in tensors.items()}, str(tmp_path / "old" / "model.safetensors"))
    with open(tmp_path / "old" / "config.json", "w") as f:
        json.dump(hf, f)
    assert Checkpoint(tmp_path / "old").prefix == "decoder."
    llama = tiny_config("llama-tiny")
    write_checkpoint(tmp_path / "llama", llama, random_tensors(llama), drop=("/lm_head.weight",))
    with pytest.raises(ValueError, match="lm_head.weight"):
        Checkpoint(tmp_path / "llama")


@pytest.mark.parametrize("kwargs,error,match", [
    ({"sparsity": 1.0}, ValueError, "sparsity"),
    ({"sparsity": "0.8"}, ValueError, "sparsity"),
    ({"prune": "random"}, ValueError, "prune"),
    ({"dtype": "float32"}, ValueError, "dtype"),
])
def test_load_argument_checks(opt_folder, kwargs, error, match):
    hf, tensors, path = opt_folder
    write_checkpoint(path, hf, tensors)
    with pytest.raises(error, match=match):
        llm.load(path, progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------------- memory


def test_memory_prediction_and_refusal_names_the_numbers():
    """OPT-66B at 80 %: about 52 GB of Tiled-CSL linears (4 bytes per nonzero); with 40 GB free the refusal
    says what is needed, what is free and which sparsity would fit."""
    config = preset("opt-66b")
    prediction = memory.predict_load(config, np.float16, 0.8, 0.5)
    assert 51e9 < prediction["linears"] < 53.5e9
    assert 0.9e9 < prediction["dense"] < 1.1e9
    memory.check_fits(prediction, config, 0.8, free=80 << 30)
    with pytest.raises(MemoryError, match=r"needs about .* GB.*40\.\d\d GB is free.*sparsity >= 0\.8\d would fit"):
        memory.check_fits(prediction, config, 0.8, free=40 * 10**9)


def test_generation_memory_refusal_says_how_many_sequences_fit():
    prediction = {"kv_cache": 64 * 10**9, "activations": 10**8, "prefill_scratch": 0}
    with pytest.raises(MemoryError, match=r"about 2[0-9] sequences of this length would fit"):
        memory.check_generate_fits(prediction, 64, 576, free=30 * 10**9)


# -------------------------------------------------------------------------------------------------- sampling


def test_sampling_follows_the_distribution_and_the_nucleus():
    """Frequencies of 20000 draws from softmax(logits / T) match the probabilities; top-p keeps exactly the most
    probable tokens whose mass first reaches p; the same seed draws the same tokens."""
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    rows = np.repeat(logits, 20000, axis=0)
    draws = sample(rows, 1.0, 1.0, np.random.default_rng(0))
    frequencies = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(frequencies, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    nucleus = sample(rows, 1.0, 0.75, np.random.default_rng(1))
    assert set(np.unique(nucleus)) == {0, 1}  # 0.5 < 0.75 <= 0.8: tokens 0 and 1
    np.testing.assert_allclose(np.bincount(nucleus, minlength=4)[:2] / nucleus.size, [0.625, 0.375], atol=0.015)
    cold = sample(rows[:100], 0.05, 1.0, np.random.default_rng(2))
    assert (cold == 0).mean() > 0.99
    np.testing.assert_array_equal(sample(rows[:50], 1.0, 0.9, np.random.default_rng(3)),
                                  sample(rows[:50], 1.0, 0.9, np.random.default_rng(3)))


@pytest.mark.parametrize("kwargs,match", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 70}, "max_new_tokens.*positions"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
])
def test_generate_argument_checks_come_first(kwargs, match):
    """Refused before anything runs (the model is tiny and random; nothing is decoded)."""
    model = llm.random_model("opt-tiny", sparsity=0.0, progress=False)
    with pytest.raises((ValueError, TypeError), match=match):
        llm.generate(model, np.array([[1, 2, 3]]), **kwargs)


def test_bad_prompts_are_refused():
    model = llm.random_model("opt-tiny", sparsity=0.0, progress=False)
    with pytest.raises(ValueError, match=r"prompts\[1\].*token ids in \[0, 96\)"):
        llm.generate(model, [np.array([1, 2]), np.array([5, 96])])
    with pytest.raises(ValueError, match=r"prompts\[0\].*at least one token"):
        llm.generate(model, [np.array([], np.int64)])
    with pytest.raises(ValueError, match="ids.*positions"):
        model.forward(np.zeros((1, 65), np.int64))


def test_settings_are_checked_and_named():
    """Refused before any work, naming the argument: a prefill policy, a string end id; accepted: NumPy scalars
    and arrays of end ids. A configuration hashes (it is frozen)."""
    with pytest.raises(ValueError, match="prefill"):
        llm.random_model("opt-tiny", sparsity=0.5, prefill="fast", progress=False)
    model = llm.random_model("opt-tiny", sparsity=0.0, progress=False)
    with pytest.raises(ValueError, match="prefill"):
        model.prefill.policy = "fast"
    with pytest.raises(ValueError, match="eos_token_id"):
        llm.generate(model, np.array([[1, 2]]), eos_token_id="12")
    with pytest.raises(ValueError, match="eos_token_id.*token ids in \\[0, 96\\)"):
        llm.generate(model, np.array([[1, 2]]), eos_token_id=[3, 500])
    with pytest.raises(ValueError, match="prompts.*at most 64 tokens"):
        llm.generate(model, np.ones((1, 65), np.int64))
    assert hash(preset("llama-3.1-8b")) == hash(preset("llama-3.1-8b"))


def test_generation_may_use_every_position():
    """A 12-token prompt and 5 new tokens fill a 16-position model exactly: the last token fed stands at 15."""
    config = dataclasses.replace(preset("opt-tiny"), max_positions=16)
    model = llm.random_model(config, sparsity=0.0, progress=False)
    out = llm.generate(model, np.ones((1, 12), np.int64), max_new_tokens=5, eos_token_id=np.array([95]),
                       temperature=np.float32(0))
    assert out.shape == (1, 17)
    with pytest.raises(ValueError, match="max_new_tokens"):
        llm.generate(model, np.ones((1, 12), np.int64), max_new_tokens=6)


def test_passes_of_few_tokens_launch_as_dependents():
    """A pass of up to DEPENDENT_LAUNCH_MAX_TOKENS tokens launches its kernels as programmatic dependents (while
    they are on), a longer one ordinarily; the setting and the scope are back as they were afterwards."""
    from flashllm_nb.kernels import driver
    from flashllm_nb.llm.engine import DEPENDENT_LAUNCH_MAX_TOKENS, launch_scope

    assert not driver.launching_dependents()
    for tokens, expected in ((1, True), (DEPENDENT_LAUNCH_MAX_TOKENS, True), (DEPENDENT_LAUNCH_MAX_TOKENS + 1, False)):
        with launch_scope(tokens):
            assert driver.launching_dependents() is expected, tokens
    previous = driver.set_dependent_launches(False)
    try:
        with launch_scope(1):
            assert not driver.launching_dependents()
    finally:
        driver.set_dependent_launches(previous)
    assert not driver.launching_dependents()
