"""The ``flashllm-nb`` command line: argument errors, help texts, and what it says about the machine it runs on.

Bad arguments must end in argparse's usage and a one-line error naming the argument, with exit status 2, never in
a traceback; help must read as plain text under the name the user typed. The commands' work itself (the demo, the
benchmark) is tested in test_bench.py and by running them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flashllm_nb.bench import build_parser
from flashllm_nb.bench import main as bench_main
from flashllm_nb.bench.command import resolve_sweep
from flashllm_nb.bench.providers import PROVIDERS
from flashllm_nb.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, error", [
    (["demo", "--sparsity", "1.5"], "argument --sparsity: expected a fraction in [0, 1)"),
    (["demo", "--sparsity", "-0.1"], "argument --sparsity: expected a fraction in [0, 1)"),
    (["demo", "--sparsity", "most"], "argument --sparsity: expected a fraction in [0, 1)"),
    (["demo", "--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["demo", "--seed", "x"], "argument --seed: expected an integer >= 0, got 'x'"),
    (["demo", "--tokens", "16"], "unrecognized arguments: --tokens 16"),
    (["bench", "--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["bench", "--sparsity", "80"], "argument --sparsity: expected a fraction in [0, 1), e.g. 0.8 (not 80)"),
    (["generate", "--model", "opt-tiny", "--sparsity", "0.8x"], "argument --sparsity: expected a fraction in [0, 1)"),
    (["generate", "--model", "opt-tiny", "--top-p", "0"], "argument --top-p: expected a number in (0, 1]"),
    (["generate", "--model", "opt-tiny", "--max-new-tokens", "0"], "argument --max-new-tokens: expected a positive"),
    (["generate", "--model", "no-such-model"], "--model 'no-such-model' is neither a folder nor a preset"),
    (["generate"], "the following arguments are required: --model"),
    (["bench-e2e", "--batch", "0"], "argument --batch: expected a positive integer, got '0'"),
    (["bench-e2e", "--hf-repeat", "0"], "argument --hf-repeat: expected a positive integer, got '0'"),
    (["bench-e2e", "--blocks-per-sm", "0"], "argument --blocks-per-sm: expected a positive integer, got '0'"),
    (["bench-e2e", "--model", "gpt-5"], "unknown --model ['gpt-5']"),
    (["bench-e2e", "--hf-compile", "--hf-unstacked"], "--hf-unstacked is the A/B of --hf-sparse's rows"),
    (["bench-e2e", "--hf-compile", "--hf-bitmap"], "--hf-bitmap is the A/B of --hf-sparse's rows"),
    (["bench-e2e", "--hf-row", "compiled:0.8"], "argument --hf-row: expected compiled|eager:SPARSITY:"),
    (["bench-e2e", "--hf-row", "compiled:0.8:stacked:csl"], "--hf-row is bench-e2e's own: one --model, one GPU"),
    ([], "the following arguments are required: COMMAND"),
    (["train"], "argument COMMAND: invalid choice: 'train'"),
])
def test_bad_arguments_exit_2_with_one_error_line(argv, error, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert error in err, err
    assert err.startswith("usage: flashllm-nb") and err.count("error:") == 1


def test_bad_argument_from_the_shell_prints_no_traceback():
    """What a user typing ``flashllm-nb demo --sparsity 1.5`` sees: the usage, one error line, status 2."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "flashllm_nb.cli", "demo", "--sparsity", "1.5"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith("flashllm-nb demo: error: argument --sparsity: expected a fraction")


@pytest.mark.parametrize("argv, usage", [
    (["--help"], "usage: flashllm-nb [-h] COMMAND"),
    (["demo", "--help"], "usage: flashllm-nb demo"),
    (["bench", "--help"], "usage: flashllm-nb bench"),
    (["generate", "--help"], "usage: flashllm-nb generate"),
    (["bench-e2e", "--help"], "usage: flashllm-nb bench-e2e"),
])
def test_help_is_plain_text_under_the_command_name(argv, usage, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(usage), out
    assert "``" not in out and "%%" not in out and "%(" not in out, out
    if argv[0] == "bench":
        assert "python -m flashllm_nb.bench" not in out
        assert "flashllm-nb bench --quick" in out and "50-90 % sparsity" in out


def test_bench_module_help_names_the_module(capsys):
    assert bench_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m flashllm_nb.bench") and "  python -m flashllm_nb.bench --quick" in out


@pytest.mark.sim
def test_bench_list_in_the_simulator_calls_only_simulated_providers_available(capsys):
    """Without a GPU, cuBLAS and the other GPU peers are unavailable, whatever importing their modules says."""
    assert main(["bench", "--list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    for name, provider in PROVIDERS.items():
        if provider.simulator:
            assert "available in the simulator" in lines[name], lines[name]
        else:
            assert "unavailable: " in lines[name], lines[name]


def test_bench_out_in_the_simulator_is_reported_as_ignored():
    """The simulator writes no files: an explicit --out is named in a note, the default one is not."""
    _, notes = resolve_sweep(build_parser().parse_args(["--out", "results"]), simulator=True)
    assert any(note.startswith("--out results ignored") for note in notes), notes
    _, notes = resolve_sweep(build_parser().parse_args([]), simulator=True)
    assert not any("--out" in note for note in notes), notes
