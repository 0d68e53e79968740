"""``flashllm-nb generate``: load (or build) a model, continue prompts, print the text, tokens/s and memory.

``--model`` is a checkpoint folder (Hugging Face layout, or one written by ``Model.save``) or a preset name (random
weights of that model's shapes: the speed and memory are real, the text is not). With a folder that has a
``tokenizer.json`` the prompts are text; otherwise they are token ids (``--prompt-ids``) or random ids.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from flashllm_nb.bench.command import non_negative_float, positive_int, sparsity_fraction, top_p_fraction

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashllm-nb generate", description="Generate text with a pruned model on the Tiled-CSL kernels.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  flashllm-nb generate --model ./opt-6.7b --sparsity 0.8 --prompt \"The capital of France is\"\n"
               "  flashllm-nb generate --model ./llama-2-7b-wanda --prompt Hello --temperature 0.7\n"
               "  flashllm-nb generate --model opt-66b --sparsity 0.8 --batch 16   # random weights: speed only\n"
               "  flashllm-nb generate --model opt-175b --sparsity 0.8 --tp 2       # one process per GPU\n")
    parser.add_argument("--model", required=True, help="checkpoint folder, or a preset name (random weights)")
    parser.add_argument("--sparsity", type=sparsity_fraction, default=None,
                        help="prune every linear layer to this fraction of zeros (default: keep the checkpoint's "
                             "zeros; 0.8 for a preset)")
    parser.add_argument("--prune", choices=("magnitude", "magnitude-row"), default="magnitude")
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default=None)
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (text); repeat for a batch")
    parser.add_argument("--prompt-ids", default=None, help="comma-separated token ids instead of text")
    parser.add_argument("--batch", type=positive_int, default=None, help="repeat the prompt(s) to this many sequences")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=top_p_fraction, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="also save the pruned model to this folder")
    parser.add_argument("--tp", type=positive_int, default=1,
                        help="tensor parallelism: split the model over this many GPUs of this node, one process "
                             "each (under torchrun or Slurm, give their world size)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[2:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    from flashllm_nb import llm
    from flashllm_nb.llm import device, distributed
    from flashllm_nb.llm.config import PRESETS

    is_folder = os.path.isdir(args.model)
    if not is_folder and args.model not in PRESETS:
        parser.error(f"--model {args.model!r} is neither a folder nor a preset ({', '.join(sorted(PRESETS))})")
    if args.tp > 1 and args.save:
        parser.error("--save with --tp: each rank holds only its shard; save from a single-GPU run")
    if args.tp > 1:
        _check_tp(args, is_folder, parser)
        status = distributed.launch_command(args.tp, "generate", argv)  # the ranks, each running this command
        if status is not None:
            return status
    rank = distributed.process_group_from_environ().rank if args.tp > 1 else 0
    if rank != 0:  # every rank computes the same tokens; rank 0 reports them
        sys.stdout = open(os.devnull, "w")
    if device.SIMULATOR and rank == 0:
        print("no GPU: running in Numba's CUDA simulator, on the CPU; only tiny models finish (e.g. --model "
              "opt-tiny), and times are meaningless", file=sys.stderr)
    if is_folder:
        model = llm.load(args.model, sparsity=args.sparsity, prune=args.prune, dtype=args.dtype,
                         tensor_parallel=args.tp, progress=rank == 0)
    else:
        model = llm.random_model(args.model, sparsity=0.8 if args.sparsity is None else args.sparsity,
                                 prune=args.prune, dtype=args.dtype, tensor_parallel=args.tp, progress=rank == 0)
    print(model if args.tp == 1 else f"{model} (rank 0 of {args.tp})")
    tokenizer = _tokenizer(model)
    prompts = _prompts(args, model, tokenizer, parser)
    out, stats = llm.generate(model, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, seed=args.seed, return_stats=True)
    for prompt, sequence in zip(prompts, out):
        new = sequence[len(prompt):]
        if tokenizer is not None:
            print(f"\n{tokenizer.decode(prompt.tolist())}\033[1m{tokenizer.decode(new.tolist())}\033[0m")
        else:
            print(f"\nprompt ids {prompt.tolist()}\nnew ids    {new.tolist()}")
    print(f"\n{stats.batch} sequences, {stats.prompt_tokens} prompt tokens: first tokens after "
          f"{stats.time_to_first_token_s * 1e3:.1f} ms; {stats.decode_steps} decode steps at "
          f"{stats.decode_tokens_per_s:.1f} tokens/s ({'CUDA graph' if stats.graph else 'eager'}) on "
          f"{device.device_name()}")
    print("GPU memory: " + ", ".join(f"{name} {value / 1e9:.2f} GB" for name, value in stats.memory.items()))
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")
    return 0


def _check_tp(args, is_folder: bool, parser) -> None:
    """Refuse a --tp that does not divide the model's heads and MLP before starting any rank."""
    from flashllm_nb.llm import parallel, saved
    from flashllm_nb.llm.config import preset, read_config

    if is_folder and saved.is_saved(args.model):
        parser.error("--tp needs a checkpoint folder or a preset; a saved flashllm_nb folder holds whole matrices")
    config = read_config(args.model)[0] if is_folder else preset(args.model)
    try:
        parallel.check_tensor_parallel(config, args.tp)
    except ValueError as error:
        parser.error(f"--tp {args.tp}: {error}")


def _tokenizer(model):
    if not model.tokenizer_file:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(model.tokenizer_file)


def _prompts(args, model, tokenizer, parser) -> list[np.ndarray]:
    if args.prompt_ids is not None:
        try:
            prompts = [np.array([int(t) for t in args.prompt_ids.split(",")], np.int64)]
        except ValueError:
            parser.error(f"--prompt-ids: expected comma-separated integers, got {args.prompt_ids!r}")
    elif args.prompt:
        if tokenizer is None:
            parser.error("--prompt needs a checkpoint folder with a tokenizer.json; use --prompt-ids")
        prompts = [np.array(tokenizer.encode(text).ids, np.int64) for text in args.prompt]
    else:
        prompts = [np.random.default_rng(args.seed).integers(4, model.config.vocab_size, 16)]
    if args.batch:
        prompts = [prompts[i % len(prompts)] for i in range(args.batch)]
    return prompts
