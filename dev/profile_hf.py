"""Where a transformers decode step's time goes, dense against sparsified by ``flashllm_nb.torch``, on a GPU.

    python dev/profile_hf.py --model opt-30b --layers 8 --sparsity 0 0.8 --batch 1 --new 33

The model is the preset's shapes with ``--layers`` layers, random fp16 weights made on the GPU, decoded as ``bench-e2e
--hf-compile`` does (transformers' static cache, the forward pass compiled with ``fullgraph=True,
mode="reduce-overhead"``; with ``--eager``, transformers' eager decoding). After a warm-up generation of the timed
length, one generation of ``--new`` tokens and one of a single token (the prefill alone) run under ``torch.profiler``;
their difference over ``--new - 1`` is one decode step: its GPU time by kernel (the names shortened; this library's
products by launch grid), the host time of its launches, compiled-region entry and waits (``HOST_EVENTS``), and its wall
time from the timed generation. The wall time minus the summed kernel time is what the GPU waits per step: from the
kernels' timestamps, between consecutive kernels (under 50 us, filed as "(idle before) KERNEL") or for the host (longer
gaps: host work between steps, where ``generate`` synchronises). The rest is printed per layer, as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict


def short_name(kernel: str) -> str:
    """A kernel's name without template arguments and parameter lists, at most 60 characters."""
    name = kernel.replace("(anonymous namespace)::", "")
    while True:  # innermost template argument lists first
        shorter = re.sub(r"<[^<>]*>", "", name)
        if shorter == name:
            break
        name = shorter
    name = re.sub(r"\([^()]*\)$", "", name)
    return name.strip()[:60]


# Host events whose time a decode step spends (the profiler's names): launching, the compiled region and its guard
# check, waiting for the GPU.
HOST_EVENTS = ("cudaGraphLaunch", "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC",
               "TorchDynamo Cache Lookup", "Torch-Compiled Region", "cudaStreamSynchronize", "cudaDeviceSynchronize",
               "aten::_local_scalar_dense", "cudaMemcpyAsync")


GAP_US = 50  # a longer gap between two kernels is the GPU waiting for the host, a shorter one a kernel boundary


def sparse_products_by_grid(prof) -> dict[str, list[float]]:
    """GPU microseconds and calls of this library's SpMM kernels by launch grid (one grid per matrix shape and
    split), from the profiler's trace (its events do not carry the grid)."""
    import tempfile

    products: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/trace.json"
        prof.export_chrome_trace(path)
        with open(path) as file:
            events = json.load(file)["traceEvents"]
    for event in events:
        if event.get("cat") == "kernel" and "flashllm_nb" in event.get("name", ""):
            entry = products["sparse product, grid " + "x".join(str(g) for g in event.get("args", {}).get("grid", "?"))]
            entry[0] += event["dur"]
            entry[1] += 1
    return products


def kernel_times(model, ids, tokens: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """GPU microseconds by kernel name and host microseconds by ``HOST_EVENTS`` name, each as (total, calls), of
    one generation of ``tokens`` new tokens."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof, torch.no_grad():
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = sparse_products_by_grid(prof)
    host: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    on_gpu = []
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and not event.is_user_annotation:
            on_gpu.append((event.time_range.start, event.time_range.end, short_name(event.name)))
            if "flashllm_nb" in event.name:  # filed by grid above
                continue
            entry = kernels[short_name(event.name)]
        elif event.name.split(":")[0] in HOST_EVENTS:  # "Torch-Compiled Region: 0/1" and the like
            entry = host[event.name.split(":")[0]]
        else:
            continue
        entry[0] += event.time_range.elapsed_us()
        entry[1] += 1
    # the GPU's idle time, between consecutive kernels (filed under the kernel that ends it) or, past GAP_US, a
    # wait for the host
    on_gpu.sort()
    busy_until = on_gpu[0][1] if on_gpu else 0
    for start, end, name in on_gpu[1:]:
        gap = start - busy_until
        if gap > 0:
            entry = host["(GPU idle, waiting for the host)"] if gap > GAP_US else kernels[f"(idle before) {name}"]
            entry[0] += gap
            entry[1] += 1
        busy_until = max(busy_until, end)
    return kernels, host


def profile(name: str, layers: int, sparsity: float, batch: int, prompt: int, new: int, eager: bool) -> None:
    import torch
    import transformers

    from flashllm_nb.bench.e2e import compile_hf_decoding, hf_generation_seconds
    from flashllm_nb.llm.config import PRESETS

    settings = dict(PRESETS[name], num_hidden_layers=layers)
    config = transformers.AutoConfig.for_model(**settings)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
    if sparsity:
        import flashllm_nb.torch as flt

        print(json.dumps(dict(sparsified=str(flt.sparsify(model, sparsity=sparsity, progress=False)))), flush=True)
    if not eager:
        compile_hf_decoding(model)
    ids = torch.randint(4, config.vocab_size, (batch, prompt), device="cuda")
    # compiled, the warm-up compiles and records the graphs at the timed length (the static cache is sized to it)
    hf_generation_seconds(model, ids, new)
    whole_s = min(hf_generation_seconds(model, ids, new) for _ in range(3))
    step_us = 1e6 * (whole_s - min(hf_generation_seconds(model, ids, 1) for _ in range(3))) / (new - 1)
    whole, whole_host = kernel_times(model, ids, new)
    prefill, prefill_host = kernel_times(model, ids, 1)
    steps = new - 1
    per_step = {k: ((v[0] - prefill.get(k, [0, 0])[0]) / steps, (v[1] - prefill.get(k, [0, 0])[1]) / steps)
                for k, v in whole.items()}
    gpu_us = sum(us for kernel, (us, _) in per_step.items() if not kernel.startswith("(idle"))
    idle_between_us = sum(us for kernel, (us, _) in per_step.items() if kernel.startswith("(idle"))
    print(json.dumps(dict(model=name, layers=layers, sparsity=sparsity, batch=batch, eager=eager,
                          step_us=round(step_us, 1),
                          step_us_per_layer=round(step_us / layers, 1),
                          kernel_us_per_layer=round(gpu_us / layers, 1),
                          gpu_idle_us_per_step=round(step_us - gpu_us, 1),
                          idle_between_kernels_us_per_layer=round(idle_between_us / layers, 1),
                          kernels_per_step=round(sum(c for kernel, (_, c) in per_step.items()
                                                     if not kernel.startswith("(idle")), 1),
                          host_us_and_calls_per_step={
                              k: [round((v[0] - prefill_host.get(k, [0, 0])[0]) / steps, 1),
                                  round((v[1] - prefill_host.get(k, [0, 0])[1]) / steps, 2)]
                              for k, v in whole_host.items()})), flush=True)
    for kernel, (us, calls) in sorted(per_step.items(), key=lambda kv: -kv[1][0]):
        if us / layers >= 0.05:
            print(json.dumps(dict(sparsity=sparsity, kernel=kernel, us_per_layer=round(us / layers, 2),
                                  calls_per_layer=round(calls / layers, 2))), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-30b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.8])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=33, help="new tokens of the profiled generation (at least 2)")
    parser.add_argument("--ordinary-launches", action="store_true",
                        help="capture the sparse products as ordinary launches, not programmatic dependents")
    parser.add_argument("--eager", action="store_true", help="transformers' eager decoding, not the compiled one")
    args = parser.parse_args()
    if args.new < 2:
        parser.error("--new must be at least 2: a decode step is the difference of --new tokens and one")
    import torch

    from flashllm_nb.bench.e2e import release_compiled_model
    from flashllm_nb.kernels.driver import dependent_launches, set_dependent_launches

    if args.ordinary_launches:
        set_dependent_launches(False)
    torch._logging.set_logs(perf_hints=True)  # says so where CUDA graphs are skipped
    print(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                          dependent_launches=dependent_launches())), flush=True)
    for sparsity in args.sparsity:
        profile(args.model, args.layers, sparsity, args.batch, args.prompt, args.new, args.eager)
        release_compiled_model()  # the model went with the call; its graphs did not


if __name__ == "__main__":
    main()
