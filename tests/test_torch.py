"""``flashllm_nb.torch``: SparseLinear, sparsify and the custom operator, against float64 references.

Everything runs where the kernel runs: CPU tensors through Numba's CUDA simulator without a GPU (tiny sizes),
CUDA tensors on a GPU. Tiny OPT and Llama models are made by ``transformers`` in the test, their decoder weights
masked to 80 % zeros; the sparsified model's logits must match the same dense weights in float64 within the fp16
bound, greedy generation must follow the reference where its choice is clear, and ``torch.compile`` must trace the
model in one graph and agree with eager.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import flashllm_nb.torch as flt
from flashllm_nb import prune
from flashllm_nb.kernels import ptx
from flashllm_nb.reference.tolerance import assert_close_to_reference, assert_logits_close, logits_bound
from llm_checkpoints import zero_decoder_linears

DEVICE = torch.device("cpu") if ptx.SIMULATOR else torch.device("cuda")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _linear(out_features, in_features, dtype=torch.float16, bias=True, seed=0, zeros=0.0):
    torch.manual_seed(seed)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        if zeros:
            linear.weight.mul_(torch.rand_like(linear.weight) >= zeros)
    return linear.to(dtype=dtype, device=DEVICE).requires_grad_(False)


def _reference(x: torch.Tensor, weight: torch.Tensor, bias):
    """float64 ``x @ W.T + b`` and ``|x| @ |W|.T`` (for the error bound), on the host."""
    x64, w64 = x.double().cpu().numpy(), weight.double().cpu().numpy()
    ref = x64 @ w64.T + (0 if bias is None else bias.double().cpu().numpy())
    return ref, np.abs(x64) @ np.abs(w64).T


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape,leading,bias", [((130, 200), (3, 5), True), ((64, 64), (1,), False),
                                                 ((128, 72), (2, 1, 3), True)])
def test_sparse_linear_matches_float64(dtype, shape, leading, bias):
    """Shapes that are not tile multiples, one token, several leading dimensions, with and without bias; the
    stored matrix is exactly the pruned weight."""
    linear = _linear(*shape, DTYPES[dtype], bias=bias)
    layer = flt.SparseLinear.from_linear(linear, sparsity=0.8)
    weight = layer.to_dense()
    bits = linear.weight.view(torch.int16).cpu().numpy().view(np.uint16)
    kept = prune.magnitude(bits.view(np.float16), 0.8) != 0  # magnitude order of the bits, either dtype
    assert torch.equal(weight.cpu(), linear.weight.cpu() * torch.as_tensor(kept))
    assert int(kept.sum()) == shape[0] * shape[1] - round(0.8 * shape[0] * shape[1])
    x = torch.randn(*leading, shape[1]).to(dtype=DTYPES[dtype], device=DEVICE)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (*leading, shape[0]) and y.dtype == DTYPES[dtype] and y.device == x.device
    ref, abs_product = _reference(x.reshape(-1, shape[1]), weight, layer.bias)
    assert_close_to_reference(y.reshape(-1, shape[0]).double().cpu().numpy(), ref, abs_product, shape[1],
                              layer.matrix.dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_relu_in_the_epilogue_matches_float64(dtype):
    """activation="relu": the float64 product with the bias, negatives to zero and NaN kept (an input row with a
    NaN), through the layer, the operator and the operator under torch.compile; the layer without it again after
    it is set back to None; other activations refused."""
    linear = _linear(130, 200, DTYPES[dtype])
    layer = flt.SparseLinear.from_linear(linear, sparsity=0.8)
    layer.activation = "relu"
    x = torch.randn(3, 200).to(dtype=DTYPES[dtype], device=DEVICE)
    x[1, 7] = float("nan")
    ref, abs_product = _reference(x, layer.to_dense(), layer.bias)
    assert (ref < 0).sum() > 100 and np.isnan(ref[1]).all()
    relu_ref = np.where(ref < 0, 0.0, ref)
    op = torch.ops.flashllm_nb.sparse_linear
    backend = "aot_eager" if ptx.SIMULATOR else "inductor"
    compiled_op = torch.compile(lambda t: op(t, layer.words, layer.tile_offsets, layer.bias, 130, "relu"),
                                fullgraph=True, backend=backend)
    compiled_layer = torch.compile(layer, fullgraph=True, backend=backend)
    with torch.no_grad():
        for y in (layer(x), op(x, layer.words, layer.tile_offsets, layer.bias, 130, "relu"), compiled_op(x),
                  compiled_layer(x)):
            got = y.double().cpu().numpy()
            assert_close_to_reference(got, relu_ref, abs_product, 200, layer.matrix.dtype)
            assert (got[~np.isnan(got)] >= 0).all()
        layer.activation = None
        assert_close_to_reference(layer(x).double().cpu().numpy(), ref, abs_product, 200, layer.matrix.dtype)
    with pytest.raises(ValueError, match=r"Invalid value of activation: expected one of \(None, 'relu'\), got 'gelu'"):
        layer.activation = "gelu"
    with pytest.raises(ValueError, match="Invalid value of activation"):
        op(x, layer.words, layer.tile_offsets, layer.bias, 130, "gelu")


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("shape", [(48, 0), (0, 64), (40, 100), (40, 96)])
def test_empty_matrices_unaligned_rows_and_no_tokens(shape):
    """A layer of no inputs (the bias) or no outputs; rows the kernel cannot read in place (100 values a row, or a
    view starting one element in, after a launch was kept for aligned rows of that count); calls of no tokens and
    of several leading dimensions: each equals the float64 product, twice in a row."""
    linear = _linear(*shape, zeros=0.8)
    layer = flt.SparseLinear.from_linear(linear)
    k = shape[1]
    storage = torch.randn(6 * k + 1).to(dtype=torch.float16, device=DEVICE)
    for x in (storage[:3 * k].view(3, k), storage[1:3 * k + 1].view(3, k), storage[:0].view(0, k),
              storage[:6 * k].view(2, 3, k)):
        rows = x.reshape(-1, k) if k else x.new_empty(math.prod(x.shape[:-1]), 0)
        ref, abs_product = _reference(rows, linear.weight, linear.bias)
        for _ in range(2):
            with torch.no_grad():
                y = layer(x)
            assert y.shape == (*x.shape[:-1], shape[0])
            got = y.reshape(len(rows), shape[0]).double().cpu().numpy()
            assert_close_to_reference(got, ref, abs_product, max(k, 1), layer.matrix.dtype)


def test_replaced_tensors_are_followed():
    """A layer whose bias became a Parameter, whose words were replaced by another layer's, or whose bias was
    removed, runs with what it holds now."""
    layer = flt.SparseLinear.from_linear(_linear(64, 96, seed=1), sparsity=0.7)
    other = flt.SparseLinear.from_linear(_linear(64, 96, seed=2), sparsity=0.7)
    x = torch.randn(2, 96).to(dtype=torch.float16, device=DEVICE)
    with torch.no_grad():
        layer(x)  # the kernel state for the first tensors
        layer.bias = torch.nn.Parameter(torch.randn(64).to(dtype=torch.float16, device=DEVICE), requires_grad=False)
        layer.words, layer.tile_offsets = other.words, other.tile_offsets
        y = layer(x)
        ref, abs_product = _reference(x, other.to_dense(), layer.bias)
        assert_close_to_reference(y.double().cpu().numpy(), ref, abs_product, 96, layer.matrix.dtype)
        layer.bias = None
        ref, abs_product = _reference(x, other.to_dense(), None)
        assert_close_to_reference(layer(x).double().cpu().numpy(), ref, abs_product, 96, layer.matrix.dtype)


def test_pruning_per_row_is_exact_and_existing_zeros_are_kept():
    """magnitude-row: the same count in every row; sparsity=None: exactly the zeros the weight has, -0.0
    included."""
    linear = _linear(96, 128, zeros=0.7)
    with torch.no_grad():
        linear.weight[0, :5] = -0.0
    kept = flt.SparseLinear.from_linear(linear)
    np.testing.assert_array_equal((kept.to_dense() != 0).cpu().numpy(), (linear.weight != 0).cpu().numpy())
    rows = flt.SparseLinear.from_linear(_linear(96, 128), sparsity=0.75, prune="magnitude-row")
    assert ((rows.to_dense() != 0).sum(dim=1) == 32).all()


def test_state_dict_round_trip_and_a_damaged_state_is_refused():
    layer = flt.SparseLinear.from_linear(_linear(130, 200), sparsity=0.9)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    fresh = flt.SparseLinear(200, 130, dtype=torch.float16)
    fresh.load_state_dict(state)
    x = torch.randn(4, 200).to(dtype=torch.float16, device=DEVICE)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
    damaged = dict(state, tile_offsets=state["tile_offsets"].flip(0).contiguous())
    with pytest.raises(RuntimeError, match="loaded 'csl' arrays are invalid"):
        flt.SparseLinear(200, 130).load_state_dict(damaged)
    with pytest.raises(ValueError, match=r"Invalid state of SparseLinear: expected a float16 matrix of shape \[130, 128\]"):
        flt.SparseLinear(128, 130).set_extra_state(state["_extra_state"])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_tiled_bitmap_layer_matches_float64_and_round_trips_its_state(dtype):
    """sparse_format="bitmap": the same pruned weight, the product within the bound, the state dict restoring it
    into a bitmap layer only (the format is part of the state, as the dtype is), the operator checked by torch."""
    linear = _linear(130, 200, DTYPES[dtype])
    layer = flt.SparseLinear.from_linear(linear, sparsity=0.8, sparse_format="bitmap")
    csl = flt.SparseLinear.from_linear(linear, sparsity=0.8)
    assert layer.sparse_format == "bitmap" and type(layer.matrix).__name__ == "TiledBitmap"
    assert "sparse_format='bitmap'" in repr(layer)
    assert torch.equal(layer.to_dense(), csl.to_dense())
    x = torch.randn(3, 2, 200).to(dtype=DTYPES[dtype], device=DEVICE)
    with torch.no_grad():
        y = layer(x)
    ref, abs_product = _reference(x.reshape(-1, 200), layer.to_dense(), layer.bias)
    assert_close_to_reference(y.reshape(-1, 130).double().cpu().numpy(), ref, abs_product, 200, layer.matrix.dtype)
    fresh = flt.SparseLinear(200, 130, dtype=DTYPES[dtype], sparse_format="bitmap")
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
    with pytest.raises(ValueError, match="in format 'csl', got .* in format 'bitmap'"):
        flt.SparseLinear(200, 130, dtype=DTYPES[dtype]).load_state_dict(layer.state_dict())
    damaged = dict(layer.state_dict())
    damaged["words"] = damaged["words"].clone()
    damaged["words"][4 * 64] ^= 1  # the first value vector's first position
    with pytest.raises(RuntimeError, match="loaded 'bitmap' arrays are invalid"):
        flt.SparseLinear(200, 130, dtype=DTYPES[dtype], sparse_format="bitmap").load_state_dict(damaged)
    with pytest.raises(ValueError, match=r"Invalid value of sparse_format: expected one of \('csl', 'bitmap'\)"):
        flt.SparseLinear(200, 130, sparse_format="bsr")
    for activation in (None, "relu"):
        torch.library.opcheck(torch.ops.flashllm_nb.sparse_linear.default,
                              (x[0], layer.words, layer.tile_offsets, layer.bias, 130, activation, "bitmap"))


def test_bad_input_is_refused_naming_it():
    layer = flt.SparseLinear.from_linear(_linear(64, 64), sparsity=0.8)
    x = torch.randn(2, 64, device=DEVICE)
    with pytest.raises(TypeError, match=r"Invalid dtype of x: expected torch.float16 \(the layer's\), got torch.float32"):
        layer(x)
    with pytest.raises(ValueError, match=r"Invalid shape of x: expected \(\.\.\., 64\), got \(2, 63\)"):
        layer(torch.zeros(2, 63, dtype=torch.float16, device=DEVICE))
    with pytest.raises(RuntimeError, match="for inference"):
        layer(x.half().requires_grad_())
    with pytest.raises(TypeError, match="Invalid dtype of linear.weight"):
        flt.SparseLinear.from_linear(torch.nn.Linear(8, 8).to(DEVICE))
    with pytest.raises(ValueError, match="Invalid value of sparsity"):
        flt.SparseLinear.from_linear(_linear(64, 64), sparsity=1.0)
    with pytest.raises(TypeError, match="its matrix is torch.float16 and stays so"):
        layer.to(torch.bfloat16)
    assert layer.bias.dtype == torch.float16
    model = torch.nn.Sequential(_linear(64, 64), torch.nn.Linear(64, 8).to(DEVICE))
    with pytest.raises(TypeError, match=r"Invalid dtype of 1.weight"):
        flt.sparsify(model, sparsity=0.5)
    assert isinstance(model[0], torch.nn.Linear)  # nothing converted: the model is as it was


def test_operator_passes_torch_opcheck():
    """Schema, fake implementation and tracing: torch's own checker."""
    layer = flt.SparseLinear.from_linear(_linear(64, 128), sparsity=0.8)
    x = torch.randn(3, 128).to(dtype=torch.float16, device=DEVICE)
    for activation in (None, "relu"):
        torch.library.opcheck(torch.ops.flashllm_nb.sparse_linear.default,
                              (x, layer.words, layer.tile_offsets, layer.bias, 64, activation))


# ------------------------------------------------------------------------------------------------ whole models

TINY_MODELS = {
    "opt": dict(model_type="opt", vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                ffn_dim=128, max_position_embeddings=64, word_embed_proj_dim=64),
    "llama": dict(model_type="llama", vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64),
}


def _tiny_models(name: str):
    """A transformers model with 80 % of each decoder linear weight zeroed, in float16, and the same weights in
    float64 on the host (the reference)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**TINY_MODELS[name])
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    zero_decoder_linears(model, 0.8)
    model.half()
    reference = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    reference.load_state_dict(model.state_dict())
    return model.to(DEVICE), reference.double()


@pytest.mark.parametrize("name,sparse_format", [("opt", "csl"), ("llama", "csl"), ("opt", "bitmap")])
def test_sparsified_model_matches_float64_and_generates_its_greedy_tokens(name, sparse_format):
    model, reference = _tiny_models(name)
    report = flt.sparsify(model, progress=False, sparse_format=sparse_format)
    assert {m.sparse_format for m in model.modules() if isinstance(m, flt.SparseLinear)} == {sparse_format}
    assert len(report.converted) == (6 if name == "opt" else 7) * 2 and report.skipped == ["lm_head"]
    assert len(report.stacked) == (1 if name == "opt" else 2) * 2  # q, k, v (and Llama's gate, up) stacked
    # OPT's ReLU after fc1 runs in fc1's epilogue; Llama's SiLU after gate_proj stays (the epilogue has no SiLU)
    assert report.activations_fused == ([f"model.decoder.layers.{i}.fc1" for i in range(2)] if name == "opt" else [])
    if name == "opt":
        assert all(isinstance(layer.activation_fn, torch.nn.Identity) and layer.fc1.activation == "relu"
                   for layer in model.model.decoder.layers)
    assert all(isinstance(m, flt.SiblingRows if n.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
                          else flt.SparseLinear) for n, m in model.named_modules() if ".layers." in n
               and n.endswith(("_proj", "fc1", "fc2")) and not n.endswith(("qkv_proj", "gate_up_proj")))
    ids = torch.as_tensor(np.random.default_rng(1).integers(4, 96, (2, 7)))
    with torch.no_grad():
        got = model(ids.to(DEVICE)).logits.float().cpu().numpy()
        ref = reference(ids).logits.numpy()
    layers = TINY_MODELS[name]["num_hidden_layers"]
    assert_logits_close(got, ref, layers, np.float16, what=name)

    prompt = ids[:1]
    with torch.no_grad():
        out = model.generate(prompt.to(DEVICE), max_new_tokens=5, do_sample=False).cpu()
        full_ref = reference(out[:, :-1]).logits[0, prompt.shape[1] - 1:].numpy()
    top2 = np.sort(full_ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * logits_bound(full_ref, layers, np.float16).max(axis=1)
    decided = np.cumprod(clear).astype(bool)
    assert (out[0, prompt.shape[1]:].numpy()[decided] == np.argmax(full_ref, axis=1)[decided]).all()


def test_activation_stays_where_it_cannot_move():
    """No ReLU moves with fuse_activations=False, where fc1 stays dense or is skipped, or where the module after
    fc1 is not a ReLU; a non-bool fuse_activations is refused before anything changes."""
    def relus(model):
        return [isinstance(layer.activation_fn, torch.nn.ReLU) for layer in model.model.decoder.layers]

    model, _ = _tiny_models("opt")
    with pytest.raises(TypeError, match="Invalid type of fuse_activations: expected a bool, got str"):
        flt.sparsify(model, progress=False, fuse_activations="yes")
    assert all(isinstance(lin, torch.nn.Linear) for lin in (model.model.decoder.layers[0].fc1, model.lm_head))
    report = flt.sparsify(model, progress=False, fuse_activations=False)
    assert report.activations_fused == [] and relus(model) == [True, True]
    assert all(layer.fc1.activation is None for layer in model.model.decoder.layers)
    report = flt.sparsify(model, progress=False)  # nothing left to convert: nothing of this call's to fuse
    assert report.converted == [] and report.activations_fused == [] and relus(model) == [True, True]
    model, _ = _tiny_models("opt")
    model.model.decoder.layers[1].activation_fn = torch.nn.GELU()
    report = flt.sparsify(model, progress=False, skip=("layers.0.fc1", "lm_head"))
    assert report.activations_fused == [] and relus(model) == [True, False]
    assert isinstance(model.model.decoder.layers[0].fc1, torch.nn.Linear)
    assert model.model.decoder.layers[1].fc1.activation is None


@pytest.mark.parametrize("sparse_format", ["csl", "bitmap"])
def test_compiled_model_is_one_graph_and_equals_eager(sparse_format):
    """torch.compile(fullgraph=True) traces through the operator (aot_eager without a GPU, inductor with one)."""
    model, _ = _tiny_models("llama")
    flt.sparsify(model, progress=False, sparse_format=sparse_format)
    ids = torch.as_tensor(np.random.default_rng(2).integers(4, 96, (2, 5)), device=DEVICE)
    backend = "aot_eager" if ptx.SIMULATOR else "inductor"
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        traced = compiled(ids, use_cache=False).logits
    torch.testing.assert_close(traced, eager, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_static_cache_generation_compiles_to_cuda_graphs(name):
    """transformers' compiled decoding (a static cache: each step's forward compiled with fullgraph=True and
    replayed as CUDA graphs, mode="reduce-overhead") runs through the operator without a graph break and chooses
    the eager model's tokens wherever the eager choice is clear of fp16 noise. (CUDA graphs need a GPU: skipped
    without one.)"""
    import transformers

    model, _ = _tiny_models(name)
    flt.sparsify(model, progress=False)
    prompt = torch.as_tensor(np.random.default_rng(3).integers(4, 96, (2, 6)), device=DEVICE)
    options = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, output_logits=True,
                   return_dict_in_generate=True)
    with torch.no_grad():
        eager = model.generate(prompt, **options)
        model.generation_config.cache_implementation = "static"
        model.generation_config.compile_config = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead")
        compiled = model.generate(prompt, **options)
        again = model.generate(prompt, **options)  # replays the captured graphs
    new_eager = eager.sequences[:, prompt.shape[1]:].cpu()
    for run in (compiled, again):
        new = run.sequences[:, prompt.shape[1]:].cpu()
        logits = torch.stack(eager.logits, dim=1).float().cpu()  # (batch, step, vocab)
        top2 = logits.topk(2, dim=-1).values
        clear = torch.cumprod((top2[..., 0] - top2[..., 1] > 0.05).int(), dim=1).bool()
        assert clear[:, 0].any(), "no eager first choice is clear of fp16 noise: pick another prompt"
        assert torch.equal(new[clear], new_eager[clear])
        torch.testing.assert_close(run.logits[0].float(), eager.logits[0].float(), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_cpu_input_on_a_gpu_is_refused():
    layer = flt.SparseLinear.from_linear(_linear(64, 64), sparsity=0.8)
    with pytest.raises(ValueError, match=r"Invalid device of x: expected cuda:0 \(the layer's\), got cpu"):
        layer(torch.zeros(1, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match="Invalid device of linear.weight: expected a CUDA tensor"):
        flt.SparseLinear.from_linear(torch.nn.Linear(64, 64).half())


@pytest.mark.gpu
def test_cuda_graph_capture_and_current_stream():
    """A captured call replays on new input; a call on a side stream runs on that stream."""
    layer = flt.SparseLinear.from_linear(_linear(256, 512), sparsity=0.8)
    x = torch.randn(8, 512, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        expected = layer(x)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(x)  # the launch for this stream is prepared outside the capture
            with torch.cuda.graph(graph, stream=stream):
                captured = layer(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(captured, layer(x), rtol=0, atol=0)
        assert not torch.equal(captured, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dependent", [True, False])
def test_captured_chain_of_layers_waits_for_each_input(dependent):
    """In a captured graph the layers launch as programmatic dependents (or ordinarily, with dependent launches
    off): each reads its input only once the kernel before it, a torch kernel, a copy or another layer, has
    written it. The replay equals eager calls on inputs changed between replays (a stale input would not: each
    replay's input is new)."""
    from flashllm_nb.kernels import driver

    first = flt.SparseLinear.from_linear(_linear(1024, 512), sparsity=0.8)
    second = flt.SparseLinear.from_linear(_linear(512, 1024), sparsity=0.7)
    third = flt.SparseLinear.from_linear(_linear(768, 512), sparsity=0.9)
    x = torch.empty(4, 512, dtype=torch.float16, device="cuda")
    staged = torch.randn_like(x)

    def chain():
        x.copy_(staged)  # a copy node right before the first layer
        hidden = torch.relu(first(x))
        return third(second(hidden) * 0.5)

    previous = driver.set_dependent_launches(dependent)
    try:
        with torch.no_grad():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream):
                chain()
                with torch.cuda.graph(graph, stream=stream):
                    captured = chain()
            for seed in range(3):
                staged.copy_(torch.randn(staged.shape, generator=torch.Generator().manual_seed(seed)))
                graph.replay()
                torch.cuda.synchronize()
                expected = chain()
                assert torch.isfinite(expected).all()
                torch.testing.assert_close(captured, expected, rtol=1e-3, atol=1e-3)
    finally:
        driver.set_dependent_launches(previous)
