"""The decoder's kernels (flashllm_nb.llm.kernels) in Numba's CUDA simulator, each against a float64 NumPy
reference on fresh random inputs: several chunks of keys and warps, grouped-query heads, a sliding window, one token, NaN and
Inf, float16 and bfloat16, ties in argmax, every word of a Tiled-CSL matrix expanded."""

from __future__ import annotations

import numpy as np
import pytest

from flashllm_nb.formats.tiled_csl import TiledCSL
from flashllm_nb.llm import attention, kernels
from flashllm_nb.llm.dense import bits_to_float32, float32_to_bits
from flashllm_nb.reference.tolerance import ROUND
from llm_checkpoints import BFLOAT16

pytestmark = pytest.mark.sim

DTYPES = [np.dtype(np.float16), BFLOAT16]


def bits(values, dtype):
    return float32_to_bits(np.asarray(values, np.float32), dtype).reshape(-1).copy()


def values(b, dtype):
    return bits_to_float32(b, dtype).astype(np.float64)


def close(got_bits, ref, dtype, scale, what):
    """Elementwise: |got - ref| <= ROUND * |ref| + 2^-20 * scale (one rounding of the result, and fp32 arithmetic
    on terms of order ``scale``); NaN where the reference is NaN, the same infinity where it is infinite."""
    got = values(got_bits, dtype).reshape(ref.shape)
    bound = ROUND[np.dtype(dtype)] * np.abs(ref) + 2.0**-20 * scale
    with np.errstate(invalid="ignore"):
        ok = np.where(np.isnan(ref), np.isnan(got), np.where(np.isinf(ref), got == ref, np.abs(got - ref) <= bound))
    bad = ~ok
    assert not bad.any(), f"{what}: {int(bad.sum())} bad, e.g. got {got[bad][:3]}, want {ref[bad][:3]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f16", "bf16"])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_add_norm_matches_reference(dtype, kind):
    """residual += delta (rounded), then LayerNorm / RMSNorm of it; pre-LN keeps the sum, post-LN replaces it."""
    rng = np.random.default_rng(0)
    rows, width, eps = 3, 72, 1e-5
    residual = bits(rng.standard_normal((rows, width)) * 3, dtype)
    delta = bits(rng.standard_normal((rows, width)), dtype)
    weight, bias = bits(1 + 0.1 * rng.standard_normal(width), dtype), bits(rng.standard_normal(width) * 0.1, dtype)
    for post in (False, True):
        res, out = residual.copy(), np.zeros_like(residual)
        norm = kernels.NormWeights(weight, bias if kind == "layer" else None, eps, kind)
        kernels.add_norm(res, delta, out, rows, width, norm, dtype, post=post)
        h = values(bits(values(residual, dtype) + values(delta, dtype), dtype), dtype).reshape(rows, width)
        if kind == "layer":
            mean = h.mean(axis=1, keepdims=True)
            ref = (h - mean) / np.sqrt(((h - mean) ** 2).mean(axis=1, keepdims=True) + eps)
            ref = ref * values(weight, dtype) + values(bias, dtype)
        else:
            ref = h / np.sqrt((h * h).mean(axis=1, keepdims=True) + eps) * values(weight, dtype)
        close(out, ref, dtype, 10, f"{kind} norm")
        np.testing.assert_array_equal(res, out if post else bits(h, dtype))


def test_add_norm_without_delta_and_nan_row():
    """No delta: the residual is only read; a NaN in a row makes that row's output NaN, the others stay finite."""
    dtype = np.dtype(np.float16)
    rng = np.random.default_rng(1)
    residual = bits(rng.standard_normal((2, 40)), dtype)
    residual[5] = 0x7E00  # NaN in row 0
    before = residual.copy()
    out = np.zeros_like(residual)
    ones = bits(np.ones(40), dtype)
    kernels.add_norm(residual, None, out, 2, 40, kernels.NormWeights(ones, None, 1e-6, "rms"), dtype)
    np.testing.assert_array_equal(residual, before)
    got = values(out, dtype).reshape(2, 40)
    assert np.isnan(got[0]).all() and np.isfinite(got[1]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f16", "bf16"])
def test_split_heads_rope_and_cache(dtype):
    """Queries rotated into q_out, keys rotated and values copied into the cache at (slot, kv head, position)."""
    rng = np.random.default_rng(2)
    n_heads, n_kv, d, max_len, slots = 4, 2, 16, 12, 3
    tokens = 5
    qkv = bits(rng.standard_normal((tokens, (n_heads + 2 * n_kv) * d)), dtype)
    token_slots = np.array([2, 0, 2, 1, 0], np.int32)
    positions = np.array([0, 3, 11, 7, 4], np.int32)
    inv_freq = (1.0 / 10000 ** (np.arange(0, d, 2) / d)).astype(np.float32)
    q = np.zeros(tokens * n_heads * d, np.uint16)
    k_cache = np.zeros(slots * n_kv * max_len * d, np.uint16)
    v_cache = np.zeros_like(k_cache)
    heads = attention.Heads(n_heads, n_kv, d, max_len, 0, d ** -0.5, dtype)
    attention.split_heads(qkv, q, k_cache, v_cache, token_slots, positions, inv_freq, tokens, heads)
    x = values(qkv, dtype).reshape(tokens, n_heads + 2 * n_kv, d)
    angles = (positions.astype(np.float32)[:, None] * inv_freq[None, :]).astype(np.float64)  # float32 product

    def rope(v, angle):
        half = d // 2
        return np.concatenate([v[..., :half] * np.cos(angle) - v[..., half:] * np.sin(angle),
                               v[..., half:] * np.cos(angle) + v[..., :half] * np.sin(angle)], axis=-1)

    close(q, rope(x[:, :n_heads], angles[:, None, :]), dtype, 4, "rotated queries")
    k = values(k_cache, dtype).reshape(slots, n_kv, max_len, d)
    v = v_cache.reshape(slots, n_kv, max_len, d)
    for t in range(tokens):
        close(bits(k[token_slots[t], :, positions[t]], dtype), rope(x[t, n_heads:n_heads + n_kv], angles[t]), dtype,
              4, "rotated keys")
        np.testing.assert_array_equal(v[token_slots[t], :, positions[t]],
                                      qkv.reshape(tokens, -1, d)[t, n_heads + n_kv:])


def attention_reference(q, k, v, slots, positions, n_heads, n_kv, window):
    """float64 causal attention of each query token over its slot's cache rows 0..position (module docstring)."""
    tokens, _, d = q.shape
    out = np.zeros_like(q)
    for t in range(tokens):
        first = 0 if window <= 0 else max(0, positions[t] - window + 1)
        for h in range(n_heads):
            kv = h // (n_heads // n_kv)
            keys = k[slots[t], kv, first:positions[t] + 1]
            s = keys @ q[t, h] / np.sqrt(d)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v[slots[t], kv, first:positions[t] + 1]
    return out


def run_attention(q, k, v, token_slots, positions, heads, splits):
    tokens = positions.size
    out = np.zeros(tokens * heads.n_heads * heads.head_dim, np.uint16)
    workspace = np.full(attention.attention_workspace_size(tokens, heads.n_heads, heads.head_dim, splits), np.nan,
                        np.float32)
    tickets = np.zeros(tokens * heads.n_heads, np.int32)
    split = attention.AttentionSplit(splits, workspace, tickets) if splits > 1 else None
    attention.attention(q, k, v, token_slots, positions, out, tokens, heads, split=split)
    np.testing.assert_array_equal(tickets, 0, err_msg="the split attention leaves its tickets zero")
    return out


@pytest.mark.parametrize("dtype,window,splits,d", [(np.dtype(np.float16), 0, 1, 16), (BFLOAT16, 0, 1, 16),
                                                    (np.dtype(np.float16), 20, 1, 16),
                                                    (np.dtype(np.float16), 0, 3, 16), (BFLOAT16, 20, 5, 16),
                                                    (np.dtype(np.float16), 0, 1, 40), (BFLOAT16, 0, 2, 256)],
                         ids=["f16", "bf16", "f16-window", "f16-3-splits", "bf16-window-5-splits", "f16-d40",
                              "bf16-d256-2-splits"])
def test_attention_matches_reference(dtype, window, splits, d):
    """Several chunks of keys per warp and several warps (positions beyond the 64 threads of a simulated block),
    GQA (4 query heads on 2 key heads), position 0 (a single key), a sliding window; split into spans of keys
    (empty spans and warps without keys included: position 0 has one key for 3 or 5 spans); head widths whose
    16-byte groups do not divide a warp (40: 5 groups, rows of 6 lanes and 2 lanes idle) or fill it (256)."""
    rng = np.random.default_rng(3)
    n_heads, n_kv, max_len, slots = 4, 2, 150, 2
    positions = np.array([0, 140, 33], np.int32)
    token_slots = np.array([1, 0, 1], np.int32)
    q = bits(rng.standard_normal((3, n_heads, d)) * 2, dtype)
    k = bits(rng.standard_normal((slots, n_kv, max_len, d)), dtype)
    v = bits(rng.standard_normal((slots, n_kv, max_len, d)), dtype)
    heads = attention.Heads(n_heads, n_kv, d, max_len, window, d ** -0.5, dtype)
    out = run_attention(q, k, v, token_slots, positions, heads, splits)
    cache_shape = (slots, n_kv, max_len, d)
    ref = attention_reference(values(q, dtype).reshape(3, n_heads, d), values(k, dtype).reshape(cache_shape),
                              values(v, dtype).reshape(cache_shape), token_slots, positions, n_heads, n_kv, window)
    close(out, ref, dtype, 4, "attention")


@pytest.mark.parametrize("splits", [1, 2])
def test_attention_nan_and_inf(splits):
    """A NaN query makes its head's output NaN; an infinite value in a row that is attended makes the output
    infinite or NaN as in the float64 reference; -0.0 keys and values are zeros; the other heads stay exact."""
    dtype = np.dtype(np.float16)
    rng = np.random.default_rng(7)
    n_heads, n_kv, d, max_len = 2, 2, 16, 100
    positions = np.array([90], np.int32)
    token_slots = np.array([0], np.int32)
    q = bits(rng.standard_normal((1, n_heads, d)), dtype)
    q[3] = bits([np.nan], dtype)[0]  # head 0
    k = bits(rng.standard_normal((1, n_kv, max_len, d)), dtype)
    v = bits(rng.standard_normal((1, n_kv, max_len, d)), dtype)
    k.reshape(1, n_kv, max_len, d)[0, 1, 5] = 0x8000  # -0.0 key row on head 1
    v.reshape(1, n_kv, max_len, d)[0, 1, 6, :] = 0x8000  # -0.0 value row on head 1
    v.reshape(1, n_kv, max_len, d)[0, 1, 70, 2] = bits([np.inf], dtype)[0]  # head 1, column 2
    heads = attention.Heads(n_heads, n_kv, d, max_len, 0, d ** -0.5, dtype)
    out = run_attention(q, k, v, token_slots, positions, heads, splits)
    shape = (1, n_kv, max_len, d)
    with np.errstate(invalid="ignore"):
        ref = attention_reference(values(q, dtype).reshape(1, n_heads, d), values(k, dtype).reshape(shape),
                                  values(v, dtype).reshape(shape), token_slots, positions, n_heads, n_kv, 0)
    assert np.isnan(ref[0, 0]).all() and np.isinf(ref[0, 1, 2])
    close(out, ref, dtype, 4, "attention with NaN and Inf")


def test_split_attention_reuses_its_workspace_and_refuses_a_short_one():
    """The workspace and tickets of one split attention serve the next (the decoder's layers share them): called
    again with every partial overwritten by NaN in between, the output is the same bit for bit and the tickets are
    zero after each call. Tickets too few, or not int32, are refused before any launch."""
    dtype = np.dtype(np.float16)
    rng = np.random.default_rng(5)
    n_heads, n_kv, d, max_len, splits = 4, 2, 16, 140, 3
    positions = np.array([130, 0], np.int32)
    token_slots = np.array([0, 1], np.int32)
    q = bits(rng.standard_normal((2, n_heads, d)), dtype)
    k = bits(rng.standard_normal((2, n_kv, max_len, d)), dtype)
    v = bits(rng.standard_normal((2, n_kv, max_len, d)), dtype)
    heads = attention.Heads(n_heads, n_kv, d, max_len, 0, d ** -0.5, dtype)
    partials = np.full(attention.attention_workspace_size(2, n_heads, d, splits), np.nan, np.float32)
    tickets = np.zeros(2 * n_heads, np.int32)
    outputs = []
    for _ in range(2):
        out = np.zeros(2 * n_heads * d, np.uint16)
        attention.attention(q, k, v, token_slots, positions, out, 2, heads,
                            split=attention.AttentionSplit(splits, partials, tickets))
        np.testing.assert_array_equal(tickets, 0)
        outputs.append(out)
        partials[:] = np.nan
    np.testing.assert_array_equal(outputs[0], outputs[1])
    out = np.zeros(2 * n_heads * d, np.uint16)
    with pytest.raises(ValueError, match="split.tickets: expected 8 or more int32 values, got 7 int32 values"):
        attention.attention(q, k, v, token_slots, positions, out, 2, heads,
                            split=attention.AttentionSplit(splits, partials, tickets[:7]))
    with pytest.raises(ValueError, match="split.tickets: expected 8 or more int32 values, got 8 int64 values"):
        attention.attention(q, k, v, token_slots, positions, out, 2, heads,
                            split=attention.AttentionSplit(splits, partials, tickets.astype(np.int64)))
    with pytest.raises(ValueError, match="split.partials: expected [0-9]+ or more float32 values"):
        attention.attention(q, k, v, token_slots, positions, out, 2, heads,
                            split=attention.AttentionSplit(splits, partials[:-1], tickets))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f16", "bf16"])
def test_activations(dtype):
    """ReLU in place (NaN and -Inf included) and SiLU-GLU of a fused [gate | up] row."""
    rng = np.random.default_rng(4)
    x = bits(rng.standard_normal((3, 10)) * 4, dtype)
    x[:3] = bits([np.nan, -np.inf, np.inf], dtype)
    relu = x.copy()
    kernels.activation(relu, relu, 3, 10, "relu", dtype)
    ref = values(x, dtype)
    ref = np.where(ref < 0, 0.0, ref)
    close(relu, ref, dtype, 0, "relu")
    fused = bits(rng.standard_normal((3, 20)) * 3, dtype)
    out = np.zeros(30, np.uint16)
    kernels.activation(fused, out, 3, 10, "silu_glu", dtype)
    f = values(fused, dtype).reshape(3, 20)
    gate, up = f[:, :10], f[:, 10:]
    close(out, gate / (1 + np.exp(-gate)) * up, dtype, 10, "silu_glu")


def test_argmax_ties_nan_and_negative_rows():
    """Lowest index on ties, NaN counted as +Inf, an all-negative row, a row of one repeated value."""
    dtype = np.dtype(np.float16)
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 70)).astype(np.float32)
    logits[0, [10, 50]] = 9.0  # tie: 10 wins
    logits[1, 33] = np.nan
    logits[2] = -np.abs(logits[2]) - 1
    logits[3] = 2.5
    out = np.full(4, -1, np.int32)
    kernels.argmax(bits(logits, dtype), out, 4, 70, dtype)
    assert out.tolist() == [10, 33, int(np.argmax(values(bits(logits[2], dtype), dtype))), 0]


def test_finish_step_records_and_advances():
    ids = np.array([5, 2, 9], np.int32)
    positions = np.array([3, 7, 1], np.int32)
    history = np.zeros(3 * 4, np.int32)
    done = np.zeros(3, np.int32)
    step = np.array([2], np.int32)
    kernels.finish_step(ids, positions, history, done, step, np.array([9, 2], np.int32), 3, 4)
    assert history.reshape(3, 4)[:, 2].tolist() == [5, 2, 9]
    assert done.tolist() == [0, 1, 1] and positions.tolist() == [4, 8, 2] and step.tolist() == [3]


@pytest.mark.parametrize("shape", [(130, 70), (128, 64), (1, 200)])
def test_expand_equals_to_dense(shape):
    """Every entry lands where to_dense puts it (swizzle undone); padding words write nothing; edge tiles clip."""
    rng = np.random.default_rng(6)
    W = rng.standard_normal(shape).astype(np.float16)
    W[rng.random(shape) < 0.7] = 0
    W[0, 0] = 0  # the tile's first position empty: padding may point there
    A = TiledCSL.from_dense(W)
    out = np.full(W.size, 0x1234, np.uint16)  # poisoned: every element must be written
    kernels.expand(A, out)
    np.testing.assert_array_equal(out.reshape(shape), A.to_dense(bits=True))


def test_attention_splits_fill_the_gpu_only_for_small_batches():
    """Two waves of blocks over the multiprocessors: a small batch splits its keys, a large one does not; never
    more spans than chunks of keys, nor more than the maximum."""
    from flashllm_nb.kernels.spmm.plan import multiprocessors

    sms, chunk = multiprocessors(), attention.ATTENTION_THREADS
    assert attention.attention_splits(1, 1, 100 * chunk) == min(2 * sms, attention.MAX_ATTENTION_SPLITS)
    assert attention.attention_splits(2 * sms, 1, 100 * chunk) == 1
    assert attention.attention_splits(1, 1, chunk) == 1
    assert attention.attention_workspace_size(2, 3, 16, 1) == 0
    assert attention.attention_workspace_size(2, 3, 16, 4) == 2 * 3 * 4 * 18
