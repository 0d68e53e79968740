"""Where a decode step's time and a random model's build time go, on a GPU.

    python dev/profile_e2e.py --model opt-66b --layers 8 --sparsity 0.8 --batch 1 16 --context 320

Step: a model of the preset's shapes with ``--layers`` layers (time per layer is what matters; every layer is the
same) is given a KV cache filled with random keys and values up to ``--context`` positions. Each component of the
step (the four linear layers, attention with its head split, the norms and activation, the whole step) is captured
for all layers as one CUDA graph and replayed (``flashllm_nb.bench.timing.time_graph``), so the components run back
to back as in the real step, on weights that are not in L2. Each is reported in microseconds per layer, with its
bytes moved and the fraction of the measured copy bandwidth (``timing.copy_bandwidth``) that makes, timed with
ordinary launches and then with dependent launches (``kernels.driver.set_dependent_launches``) for the A/B.

``--pairs`` also times where kernels meet (``profile_meetings``): each kernel of a layer next to the one after it,
against the two alone, both ways. A whole step can lose with dependent launches while every part alone gains (an
H100 at batch 16, docs/e2e-results.md); the pair whose meeting costs more with them is where.

Build: one layer's matrices are drawn, pruned and encoded phase by phase with the GPU synchronised in between.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from flashllm_nb.bench.timing import copy_bandwidth, time_graph


def time_both_ways(launches, cupy_stream) -> tuple[float, float]:
    """Milliseconds of ``launches`` captured as one graph and replayed, with ordinary launches and then with
    dependent launches (inside the engine's scope: the model's weights were synchronised when it was built)."""
    from flashllm_nb.kernels import driver

    previous = driver.set_dependent_launches(False)
    try:
        with driver.dependent_launch_scope():
            ordinary = time_graph(launches, cupy_stream)
            driver.set_dependent_launches(True)
            dependent = time_graph(launches, cupy_stream)
    finally:
        driver.set_dependent_launches(previous)
    return ordinary, dependent


def profile_step(model, batch: int, context: int, bandwidth: float, pairs: bool = False) -> list[dict]:
    import cupy

    from flashllm_nb.llm import attention, kernels
    from flashllm_nb.llm import device as llm_device
    from flashllm_nb.llm.engine import Activations, KVCache, _head, _norm, attention_heads, run_decoder

    c, dtype, stream = model.config, model.dtype, model.stream
    layers = len(model.blocks)
    cache = KVCache(c, batch, context + 1)
    cache._storage[...] = (0.5 * cupy.random.standard_normal(cache._storage.size, dtype=np.float32)).astype(
        np.float16).view(np.uint16)
    acts = Activations(c, batch, batch)
    acts.ids[...] = cupy.random.randint(4, c.vocab_size, batch, dtype=np.int32)
    acts.positions[...] = context
    acts.slots[...] = cupy.arange(batch, dtype=np.int32)
    for buffer in (acts.residual, acts.normed, acts.qkv, acts.attn, acts.ffn):
        buffer[...] = (cupy.random.standard_normal(buffer.size, dtype=np.float32)).astype(np.float16).view(np.uint16)
    llm_device.synchronize()  # made on CuPy's current stream: done before the model's stream uses them
    s = stream.ptr

    relu = c.activation == "relu"  # fused into the FFN-in product, as the engine does

    def linear(attr, x, out, **epilogue):
        return lambda: [getattr(b, attr)(x, out, batch, s, **epilogue) for b in model.blocks]

    heads = attention_heads(model, cache)
    splits = attention.attention_splits(batch, c.num_heads, cache.max_len)
    split = acts.attention_split(batch, splits)

    def split_heads():
        for i in range(layers):
            attention.split_heads(acts.qkv, acts.q, cache.k[i], cache.v[i], acts.slots, acts.positions,
                                  model.inv_freq, batch, heads, s)

    def attend():
        for i in range(layers):
            attention.attention(acts.q, cache.k[i], cache.v[i], acts.slots, acts.positions, acts.attn, batch,
                                heads, s, split)

    def elementwise():
        for block in model.blocks:
            _norm(model, block.attn_norm, acts, acts.delta, batch, s)
            _norm(model, block.ffn_norm, acts, acts.delta, batch, s)
            if not relu:
                kernels.activation(acts.ffn, acts.act, batch, c.ffn_size, c.activation, dtype, s)

    def whole_step():
        run_decoder(model, acts, cache, batch, stream=s)

    head_bytes = model.lm_head.nbytes + batch * c.vocab_size * 2
    kv_bytes = 2 * batch * c.num_kv_heads * (context + 1) * c.head_dim * 2
    parts = [("qkv", linear("qkv", acts.normed, acts.qkv), model.blocks[0].qkv.nbytes),
             ("out", linear("out", acts.attn, acts.delta), model.blocks[0].out.nbytes),
             ("ffn_in", linear("ffn_in", acts.normed, acts.ffn, relu=relu), model.blocks[0].ffn_in.nbytes),
             ("ffn_out", linear("ffn_out", acts.act, acts.delta), model.blocks[0].ffn_out.nbytes),
             ("split_heads", split_heads, 0),
             (f"attention ({splits} spans)", attend, kv_bytes),
             ("norms" if relu else "norms+activation", elementwise, 0),
             ("lm_head", lambda: _head(model, acts, acts.normed, batch, None, s), head_bytes / layers),
             ("whole step", whole_step, sum(b.nbytes for b in model.blocks[0].linears) + kv_bytes + head_bytes / layers)]
    rows = []
    with stream:
        for name, launches, nbytes in parts:
            us, us_dependent = (1e3 * t for t in time_both_ways(launches, stream.cupy_stream))
            row = dict(batch=batch, part=name, us=round(us, 1), us_per_layer=round(us / layers, 2),
                       us_per_layer_dependent_launches=round(us_dependent / layers, 2))
            if nbytes:
                row.update(mb_per_layer=round(nbytes / 1e6, 2),
                           bandwidth_fraction=round(nbytes * layers / (us / 1e6) / bandwidth, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)
        if pairs:
            rows += profile_meetings(model, acts, cache, heads, split, batch)
    return rows


def layer_kernels(model, acts, cache, heads, split, batch: int) -> list[tuple[str, object]]:
    """A decode step's kernels of one layer in the engine's order (pre-LN), each as (name, function of the
    layer's index) launching it on that layer's weights and cache."""
    from flashllm_nb.llm import attention, kernels
    from flashllm_nb.llm.engine import _norm

    c, s, blocks = model.config, model.stream.ptr, model.blocks
    relu = c.activation == "relu"
    sequence = [
        ("attn_norm", lambda i: _norm(model, blocks[i].attn_norm, acts, acts.delta, batch, s)),
        ("qkv", lambda i: blocks[i].qkv(acts.normed, acts.qkv, batch, s)),
        ("split_heads", lambda i: attention.split_heads(acts.qkv, acts.q, cache.k[i], cache.v[i], acts.slots,
                                                        acts.positions, model.inv_freq, batch, heads, s)),
        ("attention", lambda i: attention.attention(acts.q, cache.k[i], cache.v[i], acts.slots, acts.positions,
                                                    acts.attn, batch, heads, s, split)),
        ("out", lambda i: blocks[i].out(acts.attn, acts.delta, batch, s)),
        ("ffn_norm", lambda i: _norm(model, blocks[i].ffn_norm, acts, acts.delta, batch, s)),
        ("ffn_in", lambda i: blocks[i].ffn_in(acts.normed, acts.ffn, batch, s, relu=relu))]
    if not relu:
        sequence.append(("activation", lambda i: kernels.activation(acts.ffn, acts.act, batch, c.ffn_size,
                                                                    c.activation, model.dtype, s)))
    sequence.append(("ffn_out", lambda i: blocks[i].ffn_out(acts.act, acts.delta, batch, s)))
    return sequence


def profile_meetings(model, acts, cache, heads, split, batch: int) -> list[dict]:
    """Where kernels meet: for each kernel of a layer and the one after it (the last with the next layer's first),
    every layer's pair back to back, against each of the two alone, both ways. ``meeting_us`` is the pair's time
    less its two kernels' (per layer): what putting them next to each other costs (positive) or saves."""
    sequence = layer_kernels(model, acts, cache, heads, split, batch)
    layers, cupy_stream = len(model.blocks), model.stream.cupy_stream
    alone = {name: time_both_ways(lambda f=f: [f(i) for i in range(layers)], cupy_stream) for name, f in sequence}
    rows = []
    for k, (first, run_first) in enumerate(sequence):
        second, run_second = sequence[(k + 1) % len(sequence)]
        shift = 1 if k + 1 == len(sequence) else 0  # the last kernel meets the next layer's first

        def pair(run_first=run_first, run_second=run_second, shift=shift):
            for i in range(layers):
                run_first(i)
                run_second((i + shift) % layers)

        together = time_both_ways(pair, cupy_stream)
        row = dict(batch=batch, pair=f"{first} -> {second}")
        for mode, index in (("ordinary", 0), ("dependent", 1)):
            per_layer = [1e3 * t / layers for t in (together[index], alone[first][index], alone[second][index])]
            row[f"{mode}_us_per_layer"] = [round(t, 2) for t in per_layer]
            row[f"{mode}_meeting_us"] = round(per_layer[0] - per_layer[1] - per_layer[2], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def profile_build(config, sparsity: float) -> None:
    import cupy

    from flashllm_nb.llm.build import RANDOM_WEIGHT_STD, _float32_to_bits
    from flashllm_nb.llm.weights import encode_linear, prune_bits

    dtype = np.dtype(np.float16)
    generator = cupy.random.default_rng(0)
    totals: dict[str, float] = {}

    def timed(phase, fn, *args):
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        result = fn(*args)
        cupy.cuda.Device().synchronize()
        totals[phase] = totals.get(phase, 0.0) + time.perf_counter() - start
        return result

    for _ in range(2):  # the first round compiles; report the second
        totals.clear()
        for name, (rows, cols) in config.linear_shapes().items():
            values = timed("draw", lambda: RANDOM_WEIGHT_STD * generator.standard_normal((rows, cols), np.float32))
            bits = timed("round", _float32_to_bits, values, dtype)
            del values
            pruned = timed("prune", prune_bits, bits, sparsity, "magnitude")
            del bits
            timed("encode", encode_linear, pruned, None, dtype, None)
            del pruned
    layer_total = sum(totals.values())
    print(json.dumps(dict(build_per_layer_s={k: round(v, 4) for k, v in totals.items()},
                          total_s=round(layer_total, 3), model_estimate_s=round(layer_total * config.num_layers, 1))),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-66b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.8])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--context", type=int, default=320)
    parser.add_argument("--pairs", action="store_true",
                        help="also time each kernel of a layer next to the one after it (profile_meetings)")
    args = parser.parse_args()
    from flashllm_nb import llm
    from flashllm_nb.llm.config import preset

    bandwidth = copy_bandwidth() * 1e9  # bytes read plus written per second: a step's bytes over it is its bound
    print(json.dumps(dict(device=llm.device.device_name(), copy_tb_s=round(bandwidth / 1e12, 3))), flush=True)
    full = preset(args.model)
    profile_build(full, args.sparsity[0])
    config = dataclasses.replace(full, num_layers=args.layers)
    for sparsity in args.sparsity:
        print(json.dumps(dict(model=args.model, layers=args.layers, sparsity=sparsity)), flush=True)
        model = llm.random_model(config, sparsity=sparsity, progress=False)
        for batch in args.batch:
            profile_step(model, batch, args.context, bandwidth, args.pairs)
        del model


if __name__ == "__main__":
    main()
