"""How fast a checkpoint is pruned and encoded on arrival: write a random Hugging Face-layout checkpoint of a preset's
shapes (fp16 safetensors shards, random weights made on the GPU), then time ``flashllm_nb.llm.load`` on it.

    python dev/load_speed.py --model opt-6.7b --sparsity 0.8 --dir /tmp/ckpt

The files are read back from the page cache (the machine has the memory), so the rate is that of reading the
safetensors tensors, moving them to the GPU, pruning and encoding: GB of dense weights per second.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def write_random_checkpoint(name: str, folder: str, shard_bytes: int = 4 << 30) -> int:
    """A checkpoint folder of preset ``name`` with N(0, 0.02^2) fp16 weights; returns its bytes of weights."""
    import cupy
    from safetensors.numpy import save_file

    from flashllm_nb.llm.checkpoint import all_tensors
    from flashllm_nb.llm.config import PRESETS, from_hf

    config = from_hf(PRESETS[name])
    prefix = "model.decoder." if config.family == "opt" else "model."
    shapes = all_tensors(config)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(PRESETS[name], f)
    generator = cupy.random.default_rng(0)
    shard, size, total, weight_map, count = {}, 0, 0, {}, 0

    def flush():
        nonlocal shard, size, count
        count += 1
        file = f"model-{count:05d}.safetensors"
        save_file(shard, os.path.join(folder, file))
        weight_map.update({n: file for n in shard})
        shard, size = {}, 0

    for tensor, shape in shapes.items():
        values = (0.02 * generator.standard_normal(shape, dtype=np.float32)).astype(np.float16).get()
        full = tensor[1:] if tensor.startswith("/") else prefix + tensor
        shard[full] = values
        size += values.nbytes
        total += values.nbytes
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-6.7b")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--dir", default="/tmp/flashllm_load_speed")
    args = parser.parse_args()
    from flashllm_nb import llm

    start = time.perf_counter()
    total = write_random_checkpoint(args.model, args.dir)
    print(f"wrote {total / 1e9:.1f} GB of {args.model} in {time.perf_counter() - start:.1f} s", flush=True)
    for attempt in ("first", "second"):
        start = time.perf_counter()
        model = llm.load(args.dir, sparsity=args.sparsity, progress=False)
        seconds = time.perf_counter() - start
        print(f"{attempt} load at {args.sparsity:.0%}: {seconds:.1f} s, {total / 1e9 / seconds:.2f} GB/s of dense "
              f"weights; {model!r}", flush=True)
        del model


if __name__ == "__main__":
    main()
