"""``flashllm_nb.torch``'s stacked siblings (``SparseSiblings``, ``SiblingRows``): sibling projections of one input
run as one product, and each sibling still equals its own weights' float64 product, whether stacked, run alone,
reloaded or compiled.

A small attention-like module calls ``q_proj``, ``k_proj`` and ``v_proj`` as transformers' models do; row counts
that are not tile multiples (64, 130, 1) put padding rows between the siblings in the stack. Everything runs where
the kernel runs: CPU tensors through Numba's CUDA simulator without a GPU, CUDA tensors on a GPU.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import flashllm_nb.torch as flt
from flashllm_nb.kernels import ptx
from flashllm_nb.reference.tolerance import assert_close_to_reference

DEVICE = torch.device("cpu") if ptx.SIMULATOR else torch.device("cuda")
ROWS = {"q_proj": 64, "k_proj": 130, "v_proj": 1}
K = 96


class _Attention(torch.nn.Module):
    """q, k and v of one input (``x``), or k and v of another (``kv``), as transformers' attention calls them."""

    def __init__(self, bias: bool = True, dtype=torch.float16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        for name, rows in ROWS.items():
            setattr(self, name, torch.nn.Linear(K, rows, bias=bias))
        self.to(dtype=dtype, device=DEVICE).requires_grad_(False)

    def forward(self, x, kv=None):
        kv = x if kv is None else kv
        return self.q_proj(x), self.k_proj(kv), self.v_proj(kv)


def _sparsified(bias: bool = True, dtype=torch.float16, seed: int = 0, sparse_format: str = "csl"):
    """A sparsified _Attention (weights in ``sparse_format``) and, per sibling, the dense weight and bias it was made
    of: the Linear layers' own, 80 % of each weight zeroed before ``sparsify`` keeps exactly those zeros."""
    module = _Attention(bias, dtype, seed)
    weights = {}
    with torch.no_grad():
        for name in ROWS:
            linear = getattr(module, name)
            linear.weight.mul_(torch.rand(linear.weight.shape, generator=torch.Generator().manual_seed(seed)).to(
                linear.weight.device) >= 0.8)
            weights[name] = (linear.weight.clone(), None if linear.bias is None else linear.bias.clone())
    report = flt.sparsify(module, skip=(), progress=False, sparse_format=sparse_format)
    assert module.qkv_proj.fused.sparse_format == sparse_format
    assert report.stacked == ["qkv_proj"] and sorted(report.converted) == sorted(ROWS)
    for i, name in enumerate(ROWS):
        rows = getattr(module, name)
        assert isinstance(rows, flt.SiblingRows) and rows.siblings is module.qkv_proj and rows.index == i
    return module, weights


def _check(outputs, inputs, weights, dtype=torch.float16, relu=False):
    """Each sibling's output against the float64 product of its own weights (negatives made zero with ``relu``)."""
    for y, x, (name, (weight, bias)) in zip(outputs, inputs, weights.items()):
        x64, w64 = x.double().cpu().numpy(), weight.double().cpu().numpy()
        ref = x64 @ w64.T + (0 if bias is None else bias.double().cpu().numpy())
        if relu:
            assert (ref < 0).any()
            ref = np.maximum(ref, 0.0)
        assert y.shape == (x.shape[0], ROWS[name]) and y.dtype == dtype
        assert_close_to_reference(y.double().cpu().numpy(), ref, np.abs(x64) @ np.abs(w64).T, K,
                                  np.float16 if dtype == torch.float16 else flt.modules._NAMES[dtype], what=name)


def _launches(module) -> list[int]:
    """A counter of the stack's own product (one per forward of its fused SparseLinear)."""
    count = [0]
    module.qkv_proj.fused.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def _x(rows: int, seed: int, dtype=torch.float16):
    torch.manual_seed(seed)
    return torch.randn(rows, K).to(dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_stacked_siblings_equal_their_own_products_in_one_launch(bias, dtype):
    module, weights = _sparsified(bias, dtype)
    launches = _launches(module)
    assert module.qkv_proj.first_rows == (0, 128, 384) and module.qkv_proj.fused.out_features == 385
    for tokens, seed in ((3, 1), (1, 2)):
        x = _x(tokens, seed, dtype)
        with torch.no_grad():
            outputs = module(x)
        _check(outputs, [x] * 3, weights, dtype)
    assert launches[0] == 2 and module.qkv_proj.stacking and module.qkv_proj._kept == [None]
    with torch.no_grad():  # the stack's own forward: every sibling's output
        _check(module.qkv_proj(x), [x] * 3, weights, dtype)


def test_siblings_of_other_inputs_run_their_own_rows_from_then_on():
    """Cross-attention: k and v read another input than q. The result is right at once, and from then on each
    sibling multiplies its own rows (no further stacked launch); a sibling called first, likewise."""
    module, weights = _sparsified()
    launches = _launches(module)
    x, kv = _x(3, 1), _x(5, 2)
    with torch.no_grad():
        _check(module(x, kv), [x, kv, kv], weights)
        assert not module.qkv_proj.stacking and launches[0] == 1
        _check(module(kv, x), [kv, x, x], weights)
    assert launches[0] == 1 and module.qkv_proj._kept == [None]
    module, weights = _sparsified(seed=1)
    with torch.no_grad():
        k = module.k_proj(x)
        _check([module.q_proj(x), k, module.v_proj(x)], [x] * 3, weights)
    assert not module.qkv_proj.stacking


def test_an_activation_of_the_stack_applies_to_every_sibling_stacked_or_alone():
    """An activation set on the stack's SparseLinear: in the stacked product, and in each sibling's own rows once
    stacking is off (eager, and traced by torch.compile)."""
    module, weights = _sparsified()
    module.qkv_proj.fused.activation = "relu"
    x, kv = _x(3, 1), _x(5, 2)
    backend = "aot_eager" if ptx.SIMULATOR else "inductor"
    with torch.no_grad():
        _check(module(x), [x] * 3, weights, relu=True)
        _check(module(x, kv), [x, kv, kv], weights, relu=True)
        assert not module.qkv_proj.stacking
        _check(torch.compile(module, fullgraph=True, backend=backend)(kv, x), [kv, x, x], weights, relu=True)


def test_a_forward_interrupted_between_siblings_leaves_the_next_one_right():
    module, weights = _sparsified()
    x, y = _x(3, 1), _x(3, 2)
    with torch.no_grad():
        module.q_proj(x)  # k and v never come (an exception in between)
        _check(module(y), [y] * 3, weights)
    assert module.qkv_proj.stacking


def test_state_dict_round_trip_and_blocks_follow_the_loaded_arrays():
    module, weights = _sparsified(seed=0)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    assert {k for k in state if k.startswith("qkv_proj.")} == {
        "qkv_proj.fused.words", "qkv_proj.fused.tile_offsets", "qkv_proj.fused.bias", "qkv_proj.fused._extra_state",
        "qkv_proj._extra_state"}
    other, _ = _sparsified(seed=1)
    other.load_state_dict(state)
    x, kv = _x(4, 3), _x(2, 4)
    with torch.no_grad():
        for a, b in zip(other(x), module(x)):
            assert torch.equal(a, b)
        _check(other(x, kv), [x, kv, kv], weights)  # alone: the blocks of the loaded arrays
    wrong = dict(state, **{"qkv_proj._extra_state": dict(state["qkv_proj._extra_state"], rows=[64, 130, 2])})
    with pytest.raises(ValueError, match=r"Invalid state of SparseSiblings: expected siblings \['q_proj', "
                                         r"'k_proj', 'v_proj'\] of \[64, 130, 1\] rows"):
        other.load_state_dict(wrong)


def test_blocks_follow_a_state_loaded_into_the_stack_or_a_new_stack_and_keep_their_addresses():
    """A state dict loaded straight into the stack (of as many words, so its tensors keep their addresses), or a
    new stack assigned: the siblings run alone with the new weights at once, eager and compiled, and the kept
    product of a first sibling is let go. Moving the module where it is keeps the blocks' tile offsets where they
    were (a captured CUDA graph reads them there)."""
    module, _ = _sparsified(seed=0)
    other, other_weights = _sparsified(seed=1)
    module.qkv_proj.stacking = False
    x = _x(3, 5)
    with torch.no_grad():
        module(x)  # blocks of the old weights in use
        addresses = [getattr(module.qkv_proj, f"block_offsets_{i}").data_ptr() for i in range(3)]
        module.to(DEVICE)
        assert [getattr(module.qkv_proj, f"block_offsets_{i}").data_ptr() for i in range(3)] == addresses
        module.qkv_proj.stacking = True
        module.q_proj(x)  # a kept product of the old weights
        module.qkv_proj.fused.load_state_dict(other.qkv_proj.fused.state_dict())
        assert module.qkv_proj._kept == [None]
        _check([module.q_proj(x), module.k_proj(x), module.v_proj(x)], [x] * 3, other_weights)
        module.qkv_proj.stacking = False
        _check(module(x), [x] * 3, other_weights)
    third, third_weights = _sparsified(seed=2)
    module.qkv_proj.fused = third.qkv_proj.fused
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        _check(compiled(x), [x] * 3, third_weights)
        _check(module(x), [x] * 3, third_weights)


@pytest.mark.parametrize("sparse_format", ["csl", "bitmap"])
@pytest.mark.parametrize("stacking", [True, False])
def test_compiled_siblings_are_one_graph_and_equal_eager(stacking, sparse_format):
    """torch.compile(fullgraph=True): one graph with one sparse product for the three siblings while they are
    stacked, three (each a view of the stack's words) once they are not; equal to eager, in either weight
    format."""
    module, weights = _sparsified(sparse_format=sparse_format)
    module.qkv_proj.stacking = stacking
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(module, fullgraph=True, backend=backend)
    x = _x(3, 1)
    with torch.no_grad():
        traced, eager = compiled(x), module(x)
    assert len(graphs) == 1
    op = torch.ops.flashllm_nb.sparse_linear
    products = [n for n in graphs[0].graph.nodes if n.target in (op, op.default)]
    assert len(products) == (1 if stacking else 3)
    for a, b in zip(traced, eager):
        assert torch.equal(a, b)
    _check(traced, [x] * 3, weights)
    assert module.qkv_proj._kept == [None] and module.qkv_proj.stacking == stacking


def test_siblings_are_stacked_only_where_all_of_them_convert_alike():
    """No stack where one sibling is skipped, left dense or without the others' bias, where the parent already
    has the stack's name, or with stack_siblings=False; the siblings are then SparseLinear layers of their own."""
    cases = {"skip": dict(skip=("k_proj",)), "off": dict(stack_siblings=False)}
    for case, options in cases.items():
        module = _Attention()
        report = flt.sparsify(module, sparsity=0.8, progress=False, **dict(dict(skip=()), **options))
        assert report.stacked == [] and isinstance(module.q_proj, flt.SparseLinear), case
    module = _Attention()
    module.v_proj = torch.nn.Linear(K, 1, bias=False).to(dtype=torch.float16, device=DEVICE)
    assert flt.sparsify(module, sparsity=0.8, skip=(), progress=False).stacked == []
    module = _Attention()
    module.qkv_proj = torch.nn.Identity()
    assert flt.sparsify(module, sparsity=0.8, skip=(), progress=False).stacked == []
    module = _Attention()
    with torch.no_grad():  # q and v pruned, k not: k stays dense
        for linear in (module.q_proj, module.v_proj):
            linear.weight.mul_(torch.rand_like(linear.weight, dtype=torch.float32) >= 0.8)
    report = flt.sparsify(module, skip=(), progress=False)
    assert report.left_dense == ["k_proj"] and report.stacked == [] and isinstance(module.v_proj, flt.SparseLinear)
    with pytest.raises(TypeError, match="Invalid type of stack_siblings: expected a bool, got int"):
        flt.sparsify(_Attention(), stack_siblings=1)


def test_constructors_refuse_bad_arguments_naming_them():
    module, _ = _sparsified()
    fused = module.qkv_proj.fused
    with pytest.raises(ValueError, match=r"Invalid shape of fused: expected 386 rows .* got 385"):
        flt.SparseSiblings(fused, ["a", "b", "c"], [64, 130, 2])
    with pytest.raises(ValueError, match="Invalid value of names and rows: expected two or more siblings"):
        flt.SparseSiblings(fused, ["a"], [385])
    with pytest.raises(TypeError, match="Invalid type of fused: expected a SparseLinear, got Linear"):
        flt.SparseSiblings(torch.nn.Linear(2, 2), ["a", "b"], [1, 1])
    with pytest.raises(ValueError, match=r"Invalid value of index: expected an integer in \[0, 2\], got 3"):
        flt.SiblingRows(module.qkv_proj, 3)
    with pytest.raises(TypeError, match=r"Invalid dtype of x: expected torch.float16"):
        module.k_proj(torch.zeros(2, K, device=DEVICE))
    module.qkv_proj.stacking = False
    with pytest.raises(ValueError, match=r"Invalid shape of x: expected \(\.\.\., 96\), got \(2, 95\)"):
        module.k_proj(torch.zeros(2, K - 1, dtype=torch.float16, device=DEVICE))
    matrix = fused.matrix
    with pytest.raises(TypeError, match="Invalid type of matrix: expected a TiledCSL, got Tensor"):
        flt.SparseLinear.from_tiled_csl(fused.words)
    with pytest.raises(ValueError, match=r"Invalid shape of bias: expected \(385,\) \(the matrix's rows\), "
                                         r"got \(384,\)"):
        flt.SparseLinear.from_tiled_csl(matrix, torch.zeros(384, dtype=torch.float16, device=DEVICE))
    with pytest.raises(TypeError, match="Invalid type of bias: expected a torch.float16 tensor or None, "
                                        "got torch.float32"):
        flt.SparseLinear.from_tiled_csl(matrix, torch.zeros(385, device=DEVICE))
    with pytest.raises(ValueError, match=r"Invalid value of rows: expected integers >= 0, got \(64, -1, 1\)"):
        flt.SparseSiblings(fused, ["a", "b", "c"], [64, -1, 1])
    with pytest.raises(TypeError, match="Invalid type of fused: expected a SparseLinear, got Identity"):
        module.qkv_proj.fused = torch.nn.Identity()


@pytest.mark.gpu
@pytest.mark.parametrize("stacking", [True, False])
def test_siblings_captured_in_cuda_graphs_equal_eager(stacking):
    """inductor with CUDA graphs (mode="reduce-overhead", as transformers' compiled decoding): the stacked product,
    or each sibling's block (a view of the stack's words), replayed three times over new inputs, equals eager.
    (CUDA graphs need a GPU: skipped without one.)"""
    module, weights = _sparsified()
    module.qkv_proj.stacking = stacking
    compiled = torch.compile(module, fullgraph=True, mode="reduce-overhead")
    for seed in range(3):
        x = _x(4, seed)
        with torch.no_grad():
            traced = [t.clone() for t in compiled(x)]
            eager = module(x)
        for a, b in zip(traced, eager):
            assert torch.equal(a, b)
        _check(traced, [x] * 3, weights)
    assert module.qkv_proj.stacking == stacking
