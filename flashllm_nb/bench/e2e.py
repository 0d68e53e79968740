"""The end-to-end benchmark: ``flashllm-nb bench-e2e``, whole models generating, dense and sparse in one run.

Flash-LLM's setup: prompts of 64 tokens, 512 new tokens, batch 1 to 64, fp16, random weights of a published model's
shapes (pruned by magnitude: a random mask, as for random weights). Per (sparsity, batch):

- build the model on the GPU (:func:`flashllm_nb.llm.random_model`; its time is reported);
- predict whether the KV cache fits beside it, and report "does not fit" with the numbers where it does not;
- one short warm-up generation (compiles kernels, plans, times the prefill choices), then one timed generation:
  time to first token, decode tokens/s (all sequences), host time per step, memory by component;
- the decode bound: a step reads every weight byte once and the KV cache so far, so tokens/s <= batch x copy
  bandwidth / (weight bytes + mean KV bytes per step); its fraction is the measured rate over it.

With ``--tp K`` this library's rows run over K GPUs of the node, one process each (weights, memory and the bound
per GPU). With ``--hf`` the same shapes run dense in Hugging Face ``transformers`` (eager; ``--hf-compile`` adds its
static cache with ``torch.compile``) as the outside baseline, where they fit; ``--hf-sparse`` adds the same model
with its decoder layers pruned and replaced by :class:`flashllm_nb.torch.SparseLinear` at each sparsity. Each
transformers model runs in a process of its own (``--hf-row``, which the run passes to its children), unless
``--hf-same-process``. Results: JSON, CSV, markdown and a PNG (:mod:`.e2e_plot`: a bar a row, each sparse one with
its speedup over its dense row) in ``--out``, a table printed last. Without a GPU it runs the pipeline on a tiny
preset in the simulator and times nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from flashllm_nb.bench import e2e_plot
from flashllm_nb.bench.command import positive_int, sparsity_fraction

__all__ = ["main", "build_parser", "decode_bound", "markdown_table", "hf_row_spec", "format_hf_row_spec",
           "rows_from_child_output"]

DEFAULT_OUT = Path("bench/out")
SIMULATED_MODEL = "opt-tiny"  # what runs without a GPU
_FIELDS = ["model", "provider", "sparsity", "batch", "prompt", "new", "status", "ttft_s", "decode_tok_s",
           "bound_tok_s", "bound_fraction", "step_ms", "host_us_per_step", "weights_gb", "kv_gb", "activations_gb",
           "scratch_gb", "build_s", "graph", "note"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashllm-nb bench-e2e", description="End-to-end generation: dense and sparse models, one run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  flashllm-nb bench-e2e                                  # OPT-66B, 80/90 %, batch 1-64\n"
               "  flashllm-nb bench-e2e --model opt-30b --sparsity 0 0.8 0.9 --batch 1 16 --hf\n"
               "  flashllm-nb bench-e2e --model opt-30b --sparsity 0.8 0.9 --batch 1 16 --hf --hf-compile "
               "--hf-sparse --hf-new 128\n"
               "  flashllm-nb bench-e2e --model llama-2-70b --sparsity 0.8 --batch 1 16 --new 128\n")
    parser.add_argument("--model", nargs="+", default=["opt-66b"], help="presets (flashllm_nb.llm.PRESETS)")
    parser.add_argument("--sparsity", nargs="+", type=sparsity_fraction, default=[0.8, 0.9],
                        help="fractions of zeros; 0 runs the model dense (cuBLAS)")
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[1, 8, 16, 32, 64])
    parser.add_argument("--prompt", type=positive_int, default=64, help="prompt tokens per sequence")
    parser.add_argument("--new", type=positive_int, default=512, help="new tokens per sequence")
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    parser.add_argument("--hf", action="store_true", help="add Hugging Face transformers dense (eager) rows")
    parser.add_argument("--hf-compile", action="store_true", help="add transformers' static cache + torch.compile")
    parser.add_argument("--hf-sparse", action="store_true",
                        help="with --hf / --hf-compile: also transformers sparsified by flashllm_nb.torch at each "
                             "--sparsity above 0")
    parser.add_argument("--hf-unstacked", action="store_true",
                        help="with --hf-sparse: also each sparsified model with its sibling projections (q, k, v; "
                             "gate, up) left as separate products, sparsify(stack_siblings=False), for the A/B")
    parser.add_argument("--hf-bitmap", action="store_true",
                        help="with --hf-sparse: also each sparsified model with its weights in Tiled-Bitmap, "
                             "sparsify(sparse_format='bitmap'), for the A/B against Tiled-CSL")
    parser.add_argument("--hf-same-process", action="store_true",
                        help="run every transformers model in this process, one after the other (by default each "
                             "runs in a process of its own: in one process the third model decoded 2.2 ms a step "
                             "slower than the same model second, docs/torch.md)")
    parser.add_argument("--hf-row", type=hf_row_spec, default=None, help=argparse.SUPPRESS)  # a child's one model
    parser.add_argument("--hf-new", type=positive_int, default=None, help="new tokens for the transformers rows")
    parser.add_argument("--hf-repeat", type=positive_int, default=3,
                        help="timed generations per transformers row; the row reports their median step and "
                             "keeps each one's (step_ms_runs)")
    parser.add_argument("--tp", type=positive_int, default=1,
                        help="tensor parallelism: this many GPUs of this node, one process each (this library's "
                             "rows only)")
    parser.add_argument("--ordinary-launches", action="store_true",
                        help="launch this library's kernels without programmatic dependence (griddepcontrol; on "
                             "Hopper the default for steps of up to 8 tokens), for the A/B")
    parser.add_argument("--stream-k", action="store_true",
                        help="plan every sparse product as stream-K (plan.Force(stream_k=True)), for the A/B")
    parser.add_argument("--blocks-per-sm", type=positive_int, default=None,
                        help="at most this many resident blocks an SM for every sparse product "
                             "(plan.Force(blocks_per_sm=N)), for the A/B")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the result files")
    return parser


def kernel_force(args):
    """The :class:`~flashllm_nb.kernels.spmm.plan.Force` that ``--stream-k`` and ``--blocks-per-sm`` ask every
    sparse product of the run for (the children of ``--hf-sparse`` rows get the same flags), or None."""
    from flashllm_nb.kernels.spmm.plan import Force

    if not args.stream_k and args.blocks_per_sm is None:
        return None
    return Force(stream_k=True if args.stream_k else None, blocks_per_sm=args.blocks_per_sm)


def hf_row_spec(text: str) -> tuple[bool, float, bool, str]:
    """``--hf-row``'s value, ``"compiled|eager:SPARSITY:stacked|unstacked:csl|bitmap"``, as (compile, sparsity,
    stack, sparse_format): the one transformers model a child process of ``bench-e2e`` runs."""
    parts = text.split(":")
    try:
        compiled, sparsity, stacked, sparse_format = parts
        compile_ = {"compiled": True, "eager": False}[compiled]
        stack = {"stacked": True, "unstacked": False}[stacked]
        sparsity = sparsity_fraction(sparsity) if sparsity != "0" else 0.0
    except (ValueError, KeyError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected compiled|eager:SPARSITY:stacked|unstacked:csl|bitmap, got {text!r}") from None
    if sparse_format not in ("csl", "bitmap"):
        raise argparse.ArgumentTypeError(f"expected the format csl or bitmap, got {sparse_format!r} in {text!r}")
    return compile_, sparsity, stack, sparse_format


def format_hf_row_spec(compile_: bool, sparsity: float, stack: bool, sparse_format: str) -> str:
    """The ``--hf-row`` value of one transformers model (the inverse of :func:`hf_row_spec`)."""
    return f"{'compiled' if compile_ else 'eager'}:{sparsity!r}:{'stacked' if stack else 'unstacked'}:{sparse_format}"


def _hf_provider(compile_: bool, stack: bool, sparse_format: str) -> str:
    """The provider column of a transformers row: "hf-compiled" or "hf-eager", "-unstacked" for the siblings left
    apart, "-bitmap" for Tiled-Bitmap weights."""
    return ("hf-compiled" if compile_ else "hf-eager") + ("" if stack else "-unstacked") + (
        "-bitmap" if sparse_format == "bitmap" else "")


_CHILD_ROWS = "bench-e2e hf rows: "  # the line on which a child process hands its rows to the parent, as JSON


def rows_from_child_output(lines: Sequence[str]) -> list[dict] | None:
    """The rows a child process printed (the last line starting with ``_CHILD_ROWS``), or None if it printed none
    (it failed before the end)."""
    for line in reversed(lines):
        if line.startswith(_CHILD_ROWS):
            return json.loads(line[len(_CHILD_ROWS):])
    return None


def _run_hf_in_child(argv: Sequence[str], args, name: str, compile_: bool, sparsity: float, log, rows, stack: bool,
                     sparse_format: str) -> None:
    """``_run_hf`` in a fresh process (this command with ``--model name --hf-row ...``): its output goes through,
    its rows come back. A child that ends without rows gives a "failed" row with the end of its output."""
    import subprocess

    spec = format_hf_row_spec(compile_, sparsity, stack, sparse_format)
    command = [sys.executable, "-m", "flashllm_nb.cli", "bench-e2e", *argv, "--model", name, "--hf-row", spec]
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        for line in child.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if not line.startswith(_CHILD_ROWS):
                log(line)
    got = rows_from_child_output(lines)
    if got is None:
        provider = _hf_provider(compile_, stack, sparse_format)
        note = f"the child process ended ({child.returncode}) without rows: " + " | ".join(lines[-3:])
        got = [dict(model=name, provider=provider, sparsity=sparsity, batch=batch, prompt=args.prompt,
                    new=args.hf_new or args.new, status="failed", note=note[:500]) for batch in args.batch]
    rows.extend(got)


def decode_bound(weight_bytes: int, kv_bytes_per_token: int, batch: int, prompt: int, new: int,
                 copy_gbps: float) -> float:
    """Tokens/s at which a decode step would take exactly the time of reading every weight byte once and each
    sequence's KV cache at its mean length over the run (prompt + new / 2 tokens) at the copy bandwidth."""
    step_bytes = weight_bytes + batch * kv_bytes_per_token * (prompt + new / 2)
    return batch * copy_gbps * 1e9 / step_bytes


def _gb(n) -> float:
    return round(n / 1e9, 3)


def _run_flashllm(args, name: str, sparsity: float, batches, copy_gbps, log, rows) -> None:
    """This library's rows; under --tp every rank runs this, with its shard (weights and bound per GPU)."""
    from flashllm_nb import llm

    start = time.perf_counter()
    try:
        model = llm.random_model(name, sparsity=sparsity, dtype=args.dtype, progress=False, tensor_parallel=args.tp)
    except MemoryError as e:
        for batch in batches:
            rows.append(dict(model=name, provider="flashllm_nb", sparsity=sparsity, batch=batch, prompt=args.prompt,
                             new=args.new, status="does not fit", note=str(e)))
        log(f"{name} at {sparsity:.0%}: does not fit: {e}")
        return
    build_s = time.perf_counter() - start
    log(f"{model!r} built in {build_s:.1f} s")
    weights = model.nbytes
    kv_per_token = model.config.kv_bytes_per_token(model.dtype.itemsize)
    rng = np.random.default_rng(0)
    for batch in batches:
        row = dict(model=name, provider="flashllm_nb" if args.tp == 1 else f"flashllm_nb tp{args.tp}",
                   sparsity=sparsity, batch=batch, prompt=args.prompt, new=args.new, build_s=round(build_s, 2),
                   weights_gb=_gb(weights))
        prompts = rng.integers(4, model.config.vocab_size, (batch, args.prompt))
        try:
            llm.generate(model, prompts, max_new_tokens=4, eos_token_id=None)  # warm-up
            _, stats = llm.generate(model, prompts, max_new_tokens=args.new, eos_token_id=None, return_stats=True)
        except MemoryError as e:
            rows.append(dict(row, status="does not fit", note=str(e)))
            log(f"  batch {batch}: does not fit: {e}")
            continue
        bound = decode_bound(weights, kv_per_token, batch, args.prompt, args.new, copy_gbps) if copy_gbps else None
        row.update(status="ok", ttft_s=round(stats.time_to_first_token_s, 4),
                   decode_tok_s=round(stats.decode_tokens_per_s, 2),
                   step_ms=round(1e3 * stats.decode_s / max(stats.decode_steps, 1), 3),
                   host_us_per_step=round(1e6 * stats.host_step_s, 1),
                   kv_gb=_gb(stats.memory["kv_cache"]), activations_gb=_gb(stats.memory["activations"]),
                   scratch_gb=_gb(stats.memory["prefill_scratch"]), graph=stats.graph)
        if bound:
            row.update(bound_tok_s=round(bound, 1), bound_fraction=round(stats.decode_tokens_per_s / bound, 3))
        rows.append(row)
        log(f"  batch {batch:3d}: {row['decode_tok_s']:9.1f} tok/s ({row.get('bound_fraction', float('nan')):.2f} of "
            f"the bound {row.get('bound_tok_s', float('nan')):.0f}), TTFT {row['ttft_s'] * 1e3:.1f} ms, step "
            f"{row['step_ms']:.2f} ms, host {row['host_us_per_step']:.0f} us/step")
    del model
    _release()


def _run_hf(args, name: str, batches, compile_: bool, sparsity: float, log, rows, stack: bool = True,
            sparse_format: str = "csl") -> None:
    """transformers fp16, random weights of the preset's shapes, greedy with min_new_tokens = new; dense, or with
    every decoder linear layer pruned to ``sparsity`` and replaced by ``flashllm_nb.torch.SparseLinear`` (sibling
    projections stacked into one product unless ``stack`` is False: provider "...-unstacked"; weights in
    ``sparse_format``, "bitmap" making provider "...-bitmap")."""
    import torch
    import transformers

    from flashllm_nb.llm.config import PRESETS

    provider = _hf_provider(compile_, stack, sparse_format)
    new = args.hf_new or args.new
    config = transformers.AutoConfig.for_model(**PRESETS[name])
    dtype = torch.float16 if args.dtype == "float16" else torch.bfloat16
    try:
        with torch.device("cuda"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        if sparsity:
            import flashllm_nb.torch as flt

            start = time.perf_counter()
            report = flt.sparsify(model, sparsity=sparsity, stack_siblings=stack, progress=False,
                                  sparse_format=sparse_format)
            log(f"  transformers {name} sparsified in {time.perf_counter() - start:.1f} s: {report}")
    except torch.OutOfMemoryError as e:
        for batch in batches:
            rows.append(dict(model=name, provider=provider, sparsity=sparsity, batch=batch, prompt=args.prompt,
                             new=new, status="does not fit", note=str(e).splitlines()[0]))
        _release()
        return
    if compile_:
        compile_hf_decoding(model)
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    for batch in batches:
        row = dict(model=name, provider=provider, sparsity=sparsity, batch=batch, prompt=args.prompt, new=new,
                   weights_gb=_gb(weights))
        ids = torch.randint(4, config.vocab_size, (batch, args.prompt), device="cuda")
        if compile_:
            # each compiled row starts from an empty Dynamo cache, as in a fresh process: Dynamo remembers the shapes
            # it has seen for a function, so an earlier row's other batch size would have this one compiled with
            # dynamic shapes, and an earlier model's graphs would stay on the GPU
            torch.compiler.reset()
        try:
            # warm-up at the timed length. Compiled, a static cache is sized to the generation's length and the
            # decode step to the cache. Eager, the cache grows a token a step, so each step's attention has a new
            # shape, and work done once per shape (cuDNN's attention plans a kernel per shape) belongs to no row:
            # after a shorter warm-up it fell on the first row to meet those shapes and spared the rows after it
            hf_generation_seconds(model, ids, new)
            retries = torch.cuda.memory_stats()["num_alloc_retries"]
            # a step's time from each pair (the whole generation less a one-token one: the prompt's pass and
            # generate's own set-up); the median of each, for one slow generation on a shared host
            runs = []
            for _ in range(args.hf_repeat):
                first = hf_generation_seconds(model, ids, 1)
                runs.append((first, hf_generation_seconds(model, ids, new) - first))
            retries = torch.cuda.memory_stats()["num_alloc_retries"] - retries
        except torch.OutOfMemoryError as e:
            rows.append(dict(row, status="does not fit", note=str(e).splitlines()[0]))
            continue
        except Exception as e:  # a failure of transformers or torch.compile is a result of this row, not the run's
            note = f"{type(e).__name__}: {next((line for line in str(e).splitlines() if line.strip()), '')}"
            rows.append(dict(row, status="failed", note=note[:500]))
            log(f"  {provider} {'dense' if not sparsity else f'{sparsity:.0%}'} batch {batch:3d}: failed: {note}")
            continue
        first, decode = float(np.median([f for f, _ in runs])), float(np.median([d for _, d in runs]))
        row.update(status="ok", ttft_s=round(first, 4), decode_tok_s=round(batch * (new - 1) / decode, 2),
                   step_ms=round(1e3 * decode / (new - 1), 3),
                   step_ms_runs=[round(1e3 * d / (new - 1), 3) for _, d in runs])
        if retries:
            # torch's allocator found the GPU's memory short, gave its cached blocks back (each time synchronising
            # the device) and allocated again: a rate measured so is the memory's, not the model's
            row["note"] = (f"torch's allocator ran short of GPU memory {retries} times in the timed generations "
                           f"({torch.cuda.memory_reserved() / 1e9:.1f} GB reserved)")
        rows.append(row)
        log(f"  {provider} {'dense' if not sparsity else f'{sparsity:.0%}'} batch {batch:3d}: "
            f"{row['decode_tok_s']:9.1f} tok/s, TTFT {first * 1e3:.1f} ms, step {row['step_ms']:.2f} ms (runs "
            f"{', '.join(f'{t:.2f}' for t in row['step_ms_runs'])})" + (f"; {row['note']}" if retries else ""))
    del model
    release_compiled_model()


def compile_hf_decoding(model) -> None:
    """transformers' own compiled decoding: a static cache makes ``generate()`` compile the forward pass of each
    decode step (not the prefill) with ``fullgraph=True, mode="reduce-overhead"`` and replay it as CUDA graphs."""
    import transformers

    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead")


def hf_generation_seconds(model, ids, tokens: int) -> float:
    """Seconds of one greedy transformers generation of exactly ``tokens`` new tokens after ``ids``, the GPU
    synchronised before and after."""
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def release_compiled_model() -> None:
    """Free the GPU memory of a compiled transformers model the caller has let go of: Dynamo's cache and the
    recorded CUDA graphs hold its weights until ``torch.compiler.reset()``."""
    import torch

    torch.compiler.reset()
    _release()


def _release() -> None:
    gc.collect()
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except ImportError:
        pass
    try:
        import torch

        torch.cuda.empty_cache()
    except ImportError:
        pass


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | provider | sparsity | batch | decode tok/s | of bound | TTFT ms | step ms | host us/step | "
             "weights GB | KV GB | status |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        def cell(key, scale=1.0, fmt="{:.1f}"):
            value = r.get(key)
            return "" if value is None else fmt.format(value * scale)

        lines.append(f"| {r['model']} | {r['provider']} | {r['sparsity']:.0%} | {r['batch']} | "
                     f"{cell('decode_tok_s')} | {cell('bound_fraction', fmt='{:.2f}')} | {cell('ttft_s', 1e3)} | "
                     f"{cell('step_ms', fmt='{:.2f}')} | {cell('host_us_per_step', fmt='{:.0f}')} | "
                     f"{cell('weights_gb', fmt='{:.1f}')} | {cell('kv_gb', fmt='{:.1f}')} | {r['status']} |")
    return "\n".join(lines)


def _write(out: Path, meta: dict, rows: list[dict], stamp: str) -> dict[str, Path]:
    import csv

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"e2e_{stamp}.json", "csv": out / f"e2e_{stamp}.csv", "md": out / f"e2e_{stamp}.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    paths["md"].write_text(f"# End-to-end generation, {meta.get('device')}, {meta.get('date')}\n\n"
                           f"Command: `{meta.get('command')}`; copy bandwidth {meta.get('copy_gbps')} GB/s.\n\n"
                           + markdown_table(rows) + "\n")
    try:
        paths["png"] = out / f"e2e_{stamp}.png"
        e2e_plot.plot(rows, meta, paths["png"])
    except ImportError:
        paths.pop("png")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[2:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from flashllm_nb.kernels.ptx import SIMULATOR
    from flashllm_nb.llm import device, distributed, parallel
    from flashllm_nb.llm.config import PRESETS, preset

    unknown = [m for m in args.model if m not in PRESETS]
    if unknown:
        parser.error(f"unknown --model {unknown}; presets: {', '.join(sorted(PRESETS))}")
    if args.hf_unstacked and not args.hf_sparse:
        parser.error("--hf-unstacked is the A/B of --hf-sparse's rows; add --hf-sparse")
    if args.hf_bitmap and not args.hf_sparse:
        parser.error("--hf-bitmap is the A/B of --hf-sparse's rows; add --hf-sparse")
    if args.tp > 1:
        if args.hf or args.hf_compile:
            parser.error("--tp runs this library's rows only; leave out --hf and --hf-compile")
        for name in [SIMULATED_MODEL] if SIMULATOR else args.model:  # the model that will run
            try:
                parallel.check_tensor_parallel(preset(name), args.tp)
            except ValueError as error:
                parser.error(f"--tp {args.tp} with {name}: {error}")
        status = distributed.launch_command(args.tp, "bench-e2e", argv)  # the ranks, each running this command
        if status is not None:
            return status
    rank = 0
    if args.tp > 1:
        group = distributed.process_group_from_environ()
        rank = group.rank
        device.use_device(group.local_rank)  # before the first allocation (the bandwidth probe)

    def log(text: str) -> None:
        if rank == 0:  # every rank computes the same; rank 0 reports
            print(text, flush=True)

    if args.ordinary_launches:
        from flashllm_nb.kernels.driver import set_dependent_launches

        set_dependent_launches(False)
    forced = kernel_force(args)
    if forced is not None:
        from flashllm_nb.kernels.spmm.plan import set_default_force

        set_default_force(forced)
    if args.hf_row is not None:  # a child process of the run below: one transformers model, its rows to stdout
        if SIMULATOR or args.tp > 1 or len(args.model) != 1:
            parser.error("--hf-row is bench-e2e's own: one --model, one GPU")
        child_rows: list[dict] = []
        _run_hf(args, args.model[0], args.batch, *args.hf_row[:2], print, child_rows, *args.hf_row[2:])
        print(_CHILD_ROWS + json.dumps(child_rows), flush=True)
        return 0
    if SIMULATOR:
        return _simulated(log, args.tp)
    from flashllm_nb.bench.timing import copy_bandwidth
    from flashllm_nb.kernels.driver import dependent_launches
    from flashllm_nb.llm.engine import DEPENDENT_LAUNCH_MAX_TOKENS

    copy_gbps = round(copy_bandwidth(), 1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"device": device.device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "flashllm-nb bench-e2e " + " ".join(sys.argv[2:] if argv is None else argv),
            "copy_gbps": copy_gbps, "python": platform.python_version(), "tensor_parallel": args.tp,
            # steps of up to this many tokens launch as dependents (0: none do)
            "dependent_launches_up_to_tokens": DEPENDENT_LAUNCH_MAX_TOKENS if dependent_launches() else 0,
            "kernel_force": None if forced is None else repr(forced)}
    log(f"{meta['device']}: device-to-device copy {copy_gbps} GB/s")
    rows: list[dict] = []
    for name in args.model:
        for sparsity in args.sparsity:
            _run_flashllm(args, name, sparsity, args.batch, copy_gbps, log, rows)
            if rank == 0:
                _write(args.out, meta, rows, stamp)
        hf_sparsities = [0.0] + ([s for s in args.sparsity if s > 0] if args.hf_sparse else [])
        for compile_ in [False] * args.hf + [True] * args.hf_compile:
            for sparsity in hf_sparsities:
                # the A/B rows before the stacked Tiled-CSL one (docs/torch.md, "q, k and v stacked", says why)
                variants = [(False, "csl")] * (args.hf_unstacked and sparsity > 0) + [(True, "bitmap")] * (
                    args.hf_bitmap and sparsity > 0) + [(True, "csl")]
                for stack, sparse_format in variants:
                    if args.hf_same_process:
                        _run_hf(args, name, args.batch, compile_, sparsity, log, rows, stack, sparse_format)
                    else:
                        _run_hf_in_child(argv, args, name, compile_, sparsity, log, rows, stack, sparse_format)
                    _write(args.out, meta, rows, stamp)
    if rank == 0:
        paths = _write(args.out, meta, rows, stamp)
        print(markdown_table(rows))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _simulated(log, tp: int) -> int:
    """No GPU: the whole pipeline once on a tiny preset in the simulator (over ``tp`` ranks); nothing is timed."""
    from flashllm_nb import llm

    log("no GPU: generating with a tiny random OPT in Numba's CUDA simulator (pipeline check; nothing is timed)")
    model = llm.random_model(SIMULATED_MODEL, sparsity=0.8, progress=False, tensor_parallel=tp)
    out = llm.generate(model, np.array([[5, 6, 7]]), max_new_tokens=2, eos_token_id=None)
    log(f"{model!r}\ngenerated {out[0, 3:].tolist()}")
    return 0
