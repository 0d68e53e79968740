"""What a captured decode step holds and how long the host takes to launch it, dense against sparse, on a GPU.

    python -m dev.graph_issue --model opt-30b --layers 8 --sparsity 0 0.8 --batch 1 16

For each sparsity a model of the preset's shapes with ``--layers`` layers is built; for each batch the decoder step
(``engine.run_decoder``, as ``generate`` captures it) is captured once as a CUDA graph on the model's stream. It
prints the graph's nodes by type (from CuPy's ``Graph.debug_dot_str``: kernels, memsets, memory allocations, ...),
then the host's time in ``graph.launch`` for ``--launches`` launches issued back to back without synchronising
(median, and the 10th and 90th percentile) and for launches each issued after the stream has drained.

It exists for one question from the benchmark: on an H200, a dense OPT-30B's step launch waited for a whole step
(16.5 ms of host time per step) where a sparse model's took 2 us. A graph with memory-allocation nodes, or one
whose launch fills the launch queue, would show here.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import time

import numpy as np


def node_types(graph) -> dict[str, object]:
    """Nodes of a CuPy graph by type, read from its Graphviz description (the first word of each node's label);
    where no label parses, the description's first characters instead, to show what this CUDA writes."""
    dot = graph.debug_dot_str()
    types = dict(collections.Counter(re.findall(r'label="\{?\s*([A-Z_]+)', dot)))
    return types or {"unparsed, the description begins": dot[:600]}


def issue_times(graph, stream, launches: int, drained: bool) -> list[float]:
    """Seconds the host spends in each of ``launches`` calls of ``graph.launch`` (after the stream drained, each,
    if ``drained``)."""
    times = []
    stream.synchronize()
    for _ in range(launches):
        if drained:
            stream.synchronize()
        start = time.perf_counter()
        graph.launch(stream=stream)
        times.append(time.perf_counter() - start)
    stream.synchronize()
    return times


def summary(times: list[float]) -> dict[str, float]:
    us = 1e6 * np.asarray(times)
    return dict(p10_us=round(float(np.percentile(us, 10)), 1), median_us=round(float(np.median(us)), 1),
                p90_us=round(float(np.percentile(us, 90)), 1))


def inspect(model, batch: int, launches: int) -> dict:
    import cupy

    from flashllm_nb.llm import device as llm_device
    from flashllm_nb.llm.engine import Activations, KVCache, run_decoder

    c, stream = model.config, model.stream
    cache = KVCache(c, batch, 65)
    acts = Activations(c, batch, batch)
    acts.ids[...] = cupy.random.randint(4, c.vocab_size, batch, dtype=np.int32)
    acts.positions[...] = 64
    acts.slots[...] = cupy.arange(batch, dtype=np.int32)
    llm_device.synchronize()  # made on CuPy's current stream: done before the model's stream uses them
    with stream.cupy_stream:
        run_decoder(model, acts, cache, batch, stream=stream.ptr)  # compiles, plans, allocates outside the capture
        stream.cupy_stream.synchronize()
        stream.cupy_stream.begin_capture()
        run_decoder(model, acts, cache, batch, stream=stream.ptr)
        graph = stream.cupy_stream.end_capture()
        graph.launch(stream=stream.cupy_stream)  # the first launch uploads the graph
        queued = issue_times(graph, stream.cupy_stream, launches, drained=False)
        drained = issue_times(graph, stream.cupy_stream, launches // 4, drained=True)
    return dict(batch=batch, nodes=node_types(graph), queued=summary(queued), drained=summary(drained))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-30b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.8])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--launches", type=int, default=64)
    args = parser.parse_args()
    from flashllm_nb import llm
    from flashllm_nb.llm.config import preset

    config = dataclasses.replace(preset(args.model), num_layers=args.layers)
    print(json.dumps(dict(device=llm.device.device_name(), model=args.model, layers=args.layers)), flush=True)
    for sparsity in args.sparsity:
        model = llm.random_model(config, sparsity=sparsity, progress=False)
        for batch in args.batch:
            print(json.dumps(dict(sparsity=sparsity, **inspect(model, batch, args.launches))), flush=True)
        del model


if __name__ == "__main__":
    main()
