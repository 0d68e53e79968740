"""The kernel benchmark (``flashllm_nb.bench``) without a GPU: arguments, presets, statistics, the tolerance rule,
the report writers, the runner's verdicts, and (marked ``sim``) the simulator path end to end. The notebook
(notebooks/02_kernel_benchmark.ipynb, on the bundled sample) runs in tests/test_notebooks.py with every other.

The GPU path itself (CuPy events, peers, rotation) needs a CUDA device and is exercised by running
``python -m flashllm_nb.bench --quick`` there; bench/README.md says how.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from flashllm_nb.bench import build_parser, main, report
from flashllm_nb.bench.command import DEFAULT_NS, DEFAULT_SPARSITIES, resolve_sweep
from flashllm_nb.bench.providers import BASELINE, PROVIDERS, Provider, register
from flashllm_nb.bench.sample import synthetic_results
from flashllm_nb.bench.shapes import PRESETS, SIMULATOR_SHAPES, parse_shape, resolve_shapes
from flashllm_nb.bench.sweep import prune_random, random_normal
from flashllm_nb.bench.timing import device_reps, geometric_mean, rotation_count, summarize
from flashllm_nb.reference.tolerance import check_close, probable_bound

ROOT = Path(__file__).resolve().parents[1]


def gpu_sweep(*argv: str):
    """The sweep the arguments ask for on a GPU machine (no GPU needed to resolve it)."""
    return resolve_sweep(build_parser().parse_args(list(argv)), simulator=False)[0]


# -------------------------------------------------------------------------------------------------- arguments

def test_defaults_are_the_opt66b_sweep():
    sweep = gpu_sweep()
    assert [(s.M, s.K) for s in sweep.shapes] == [(27648, 9216), (9216, 9216), (36864, 9216), (9216, 36864)]
    assert sweep.ns == DEFAULT_NS == (8, 16, 32, 64)
    assert sweep.sparsities == DEFAULT_SPARSITIES == (0.5, 0.6, 0.7, 0.8, 0.9)
    assert sweep.dtype == "fp16" and sweep.providers[0] == BASELINE and set(sweep.providers) == set(PROVIDERS)


def test_quick_is_a_small_subset_and_explicit_options_win():
    quick = gpu_sweep("--quick")
    assert quick.shapes == PRESETS["opt-66b"] and quick.ns == (16,) and quick.sparsities == (0.7, 0.8, 0.9)
    mixed = gpu_sweep("--quick", "--n", "8", "64", "--shape", "128,64")
    assert mixed.ns == (8, 64) and [(s.M, s.K) for s in mixed.shapes] == [(128, 64)]


def test_presets_shapes_and_providers_combine():
    sweep = gpu_sweep("--preset", "llama2-7b", "--preset", "opt-30b", "--shape", "9216x36864", "--shape", "4096,4096",
                      "--providers", "flashllm_tiled_csl", "--dtype", "bf16", "--reps", "7", "--warmup", "0")
    shapes = [(s.M, s.K) for s in sweep.shapes]
    assert shapes[:3] == [(4096, 4096), (11008, 4096), (4096, 11008)]
    assert shapes[-1] == (9216, 36864) and shapes.count((4096, 4096)) == 1  # duplicates dropped
    assert sweep.providers == (BASELINE, "flashllm_tiled_csl")  # the baseline always runs, first
    assert (sweep.dtype, sweep.reps, sweep.warmup) == ("bf16", 7, 0)


def test_simulator_sweep_is_tiny_and_runs_only_simulated_providers():
    sweep, notes = resolve_sweep(build_parser().parse_args(["--preset", "opt-175b"]), simulator=True)
    assert sweep.shapes == SIMULATOR_SHAPES and sweep.ns == (8, 16) and sweep.sparsities == (0.5, 0.9)
    assert all(PROVIDERS[p].simulator for p in sweep.providers) and "flashllm_tiled_csl" in sweep.providers
    assert any("--preset" in n for n in notes)


@pytest.mark.parametrize("argv, argument", [
    (["--shape", "9216"], "--shape"),
    (["--shape", "9216,abc"], "--shape"),
    (["--shape", "0,64"], "--shape"),
    (["--n", "0"], "--n"),
    (["--n", "sixteen"], "--n"),
    (["--sparsity", "80"], "--sparsity"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--preset", "gpt-5"], "--preset"),
    (["--providers", "cublas,nope"], "--providers"),
    (["--dtype", "fp8"], "--dtype"),
    (["--reps", "-1"], "--reps"),
])
def test_bad_arguments_exit_2_naming_the_argument(argv, argument, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {argument}" in err, err


def test_parse_shape_message_says_what_is_expected():
    with pytest.raises(Exception, match=r"expected M,K .* got '12'"):
        parse_shape("12")
    assert (parse_shape("128,64").M, parse_shape("128,64").K) == (128, 64)


def test_list_and_help_exit_0(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "opt-66b" in out and "flashllm_tiled_csl" in out
    assert main(["--help"]) == 0


# ----------------------------------------------------------------------------------------------------- presets

def test_opt_presets_follow_flash_llm_kernel_benchmark():
    for name, h in (("opt-30b", 7168), ("opt-66b", 9216), ("opt-175b", 12288)):
        assert [(s.layer, s.M, s.K) for s in PRESETS[name]] == [
            ("QKV", 3 * h, h), ("out proj", h, h), ("FFN1", 4 * h, h), ("FFN2", h, 4 * h)]


def test_llama_presets_merge_equal_shapes_and_use_gqa_for_70b():
    assert [(s.layer, s.M, s.K) for s in PRESETS["llama2-7b"]] == [
        ("q/k/v/o", 4096, 4096), ("gate/up", 11008, 4096), ("down", 4096, 11008)]
    assert [(s.layer, s.M, s.K) for s in PRESETS["llama2-13b"]] == [
        ("q/k/v/o", 5120, 5120), ("gate/up", 13824, 5120), ("down", 5120, 13824)]
    assert [(s.layer, s.M, s.K) for s in PRESETS["llama2-70b"]] == [
        ("q/o", 8192, 8192), ("k/v", 1024, 8192), ("gate/up", 28672, 8192), ("down", 8192, 28672)]
    assert len(PRESETS["opt"]) == 12 and len(PRESETS["llama2"]) == 10


def test_resolve_shapes_default_and_dedup():
    assert resolve_shapes(None, None, "opt-66b") == PRESETS["opt-66b"]
    assert len(resolve_shapes(["opt-66b", "opt-66b"], None, "opt-30b")) == 4


# ------------------------------------------------------------------------------------------ timing statistics

def test_summarize_median_and_percentiles():
    s = summarize([float(v) for v in range(1, 11)])
    assert (s.median, s.p10, s.p90, s.mean, s.n) == pytest.approx((5.5, 1.9, 9.1, 5.5, 10))
    assert summarize([2.0]).p90 == 2.0
    with pytest.raises(ValueError, match="samples_ms"):
        summarize([])


def test_geometric_mean():
    assert geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    assert geometric_mean([0.5, 2.0, 1.0]) == pytest.approx(1.0)
    assert math.isnan(geometric_mean([]))
    with pytest.raises(ValueError, match="positive"):
        geometric_mean([1.0, 0.0])


def test_rotation_keeps_at_least_twice_l2_within_caps():
    l2 = 50 << 20
    for slot in (1 << 20, 7 << 20, 34 << 20, 99 << 20, 100 << 20, 1 << 30):
        k = rotation_count(slot, l2)
        assert k * slot >= 2 * l2 or k == 64
        assert k == 1 or (k - 1) * slot < 2 * l2  # no more copies than needed
    assert rotation_count(1000, l2) == 64  # tiny weights: capped slots
    assert rotation_count(3 << 30, l2) == 1
    assert rotation_count(1 << 20, l2, max_bytes=10 << 20) == 10  # capped bytes
    with pytest.raises(ValueError, match="slot_bytes"):
        rotation_count(0, l2)


def test_device_reps_shrinks_for_slow_calls_but_keeps_ten():
    assert device_reps(20e-6, 100, 0.5) == 100
    assert device_reps(10e-3, 100, 0.5) == 50
    assert device_reps(2.0, 100, 0.5) == 10
    assert device_reps(2.0, 4, 0.5) == 4  # never more than asked


# ------------------------------------------------------------------------------------------------- tolerance

def _problem(m=256, k=4096, n=8, sparsity=0.5, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, k)).astype(np.float16)
    W[rng.random((m, k)) < sparsity] = 0
    X = rng.standard_normal((n, k)).astype(np.float16)
    return X.astype(np.float32), W.astype(np.float32)


def _check(y, ref, X, W, ref_dtype="float16"):
    return check_close(np.asarray(y, np.float32), np.asarray(ref, np.float64), np.linalg.norm(X, axis=1),
                       np.linalg.norm(W, axis=1), X.shape[1], str(np.asarray(y).dtype), ref_dtype)


def test_tolerance_passes_any_fp32_summation_order():
    """Tile order, reversed split-K and float64 rounded once are all 'one fp16 rounding of an fp32 sum'."""
    X, W = _problem()
    ref = (X @ W.T).astype(np.float16)
    tiles = np.zeros((X.shape[0], W.shape[0]), np.float32)
    for k0 in reversed(range(0, X.shape[1], 64)):
        tiles += X[:, k0:k0 + 64] @ W[:, k0:k0 + 64].T
    exact = X.astype(np.float64) @ W.astype(np.float64).T
    for y in (tiles.astype(np.float16), exact.astype(np.float16), tiles):
        check = _check(y, ref, X, W)
        assert check.ok and check.worst < 0.5, check
    assert _check(tiles.astype(np.float16), exact, X, W, "float64").ok


@pytest.mark.parametrize("out, ref, u, eta", [
    ("float16", "float16", 2.0**-11 + 2.0**-11, 2.0**-25 + 2.0**-25),
    ("bfloat16", "float64", 2.0**-8 + 2.0**-53, 2.0**-134),
    ("torch.float16", np.dtype(np.float32), 2.0**-11 + 2.0**-24, 2.0**-25 + 2.0**-150),
])
def test_tolerance_is_the_rule_in_bench_readme(out, ref, u, eta):
    """|y - r| <= (u_y + u_r) |r| + (eta_y + eta_r) + 2^-20 sqrt(K) ||x_i|| ||w_j||, any spelling of the dtypes."""
    ref_abs = np.array([[0.0, 1.0, 300.0], [1e-6, 2.0, 5.0]])
    x_norm, w_norm = np.array([2.0, 0.25]), np.array([0.5, 1.0, 3.0])
    expected = u * ref_abs + eta + 2.0**-20 * 64.0 * np.outer(x_norm, w_norm)
    np.testing.assert_allclose(probable_bound(ref_abs, x_norm, w_norm, 4096, out, ref), expected, rtol=1e-15)


def test_tolerance_catches_wrong_outputs():
    X, W = _problem()
    ref = (X @ W.T).astype(np.float16)
    dropped = W.copy()
    dropped[:128, 640:704] = 0  # one 128 x 64 tile lost
    assert not _check((X @ dropped.T).astype(np.float16), ref, X, W).ok
    one_off = ref.copy()
    one_off[3, 17] = np.float16(float(one_off[3, 17]) * 1.01)  # a single element 1 % off
    check = _check(one_off, ref, X, W)
    assert (check.ok, check.n_bad) == (False, 1) and "(n=3, m=17)" in check.message
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert not _check(nan, ref, X, W).ok and math.isinf(_check(nan, ref, X, W).worst)
    assert not _check(ref[:, :-1], ref, X, W).ok  # wrong shape


# ---------------------------------------------------------------------------------------------- input data

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.73, 0.9])
def test_pruning_zeroes_exactly_the_requested_count(sparsity):
    W = random_normal(np, (256, 128), seed=3)
    assert np.count_nonzero(W) == W.size  # random normal: no zeros to begin with
    pruned = prune_random(W, sparsity, seed=1, log=lambda _: None)
    assert pruned.shape == W.shape and pruned.dtype == W.dtype
    assert W.size - np.count_nonzero(pruned) == round(sparsity * W.size)
    kept = pruned != 0
    assert (pruned[kept] == W[kept]).all()


# ---------------------------------------------------------------------------------------------------- registry

def test_registry_is_declared_once_per_name():
    assert next(iter(PROVIDERS)) == BASELINE
    assert all(isinstance(p, Provider) and p.name == name for name, p in PROVIDERS.items())
    with pytest.raises(ValueError, match="provider.name"):
        register(PROVIDERS[BASELINE])
    assert PROVIDERS["sparse24_torch"].unavailable("fp16", 0.7)  # 2:4 only at 50 %, always with a reason


# ------------------------------------------------------------------------------------------------------ report

def test_derive_metrics_speedup_bound_and_wrong_rows():
    meta, rows = synthetic_results(ns=(16,), sparsities=(0.5, 0.8))
    cublas = {(r["M"], r["K"], r["N"], r["sparsity"]): r for r in rows if r["provider"] == BASELINE}
    for r in rows:
        base = cublas[(r["M"], r["K"], r["N"], r["sparsity"])]
        if r["status"] == "ok":
            assert r["speedup"] == pytest.approx(base["time_ms"] / r["time_ms"])
            assert r["tflops"] == pytest.approx(2 * r["M"] * r["N"] * r["K"] / (r["time_ms"] * 1e-3) / 1e12)
            assert r["bound_fraction"] == pytest.approx(r["bytes"] / 4000e9 / (r["time_ms"] * 1e-3))
        else:
            assert r["speedup"] is None and r["bound_fraction"] is None
    assert any(r["status"] == "WRONG" for r in rows) and any(r["status"] == "skipped" for r in rows)


def test_headline_is_the_geometric_mean_over_shapes():
    rows = [{"provider": p, "label": p, "model": "m", "layer": str(m), "M": m, "K": 64, "N": 16, "sparsity": 0.8,
             "dtype": "fp16", "status": "ok", "time_ms": t, "bytes": 1000} for p, m, t in
            [(BASELINE, 1, 1.0), (BASELINE, 2, 1.0), ("fast", 1, 0.5), ("fast", 2, 0.125)]]
    report.derive_metrics(rows, copy_gbps=1.0)
    h = report.headline(rows)[("fast", 16, 0.8)]
    assert h["speedup"] == pytest.approx(4.0) and (h["shapes_ok"], h["shapes"]) == (2, 2)
    assert "4.00x" in report.headline_table(rows)


def test_writers_produce_json_csv_markdown_and_png(tmp_path):
    meta, rows = synthetic_results()
    paths = report.write_all(tmp_path, meta, rows, stamp="test")
    assert sorted(paths) == ["csv", "json", "md", "png"]
    meta2, rows2 = report.load_results(paths["json"])
    assert meta2["sample"] is True and len(rows2) == len(rows)
    assert rows2[0]["time_ms"] == pytest.approx(rows[0]["time_ms"], rel=1e-5)
    lines = paths["csv"].read_text().splitlines()
    assert lines[0].startswith("# ") and "SAMPLE" in lines[0]
    table = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert len(table) == len(rows) and {"speedup", "bound_fraction", "p10_ms", "p90_ms"} <= set(table[0])
    md = paths["md"].read_text()
    assert "geometric mean over shapes" in md and "WRONG" in md and "| OPT-66B QKV 27648x9216 | 8 | 50% |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_find_results_prefers_the_newest_real_file(tmp_path):
    meta, rows = synthetic_results(ns=(16,), sparsities=(0.8,))
    report.write_json(tmp_path / "sample.json", meta, rows)
    assert report.find_results(tmp_path) is None  # a sample is never a result
    for date in ("2026-01-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"):
        report.write_json(tmp_path / f"r{date[:7]}.json", {**meta, "sample": False, "date": date}, rows)
    (tmp_path / "other.json").write_text(json.dumps({"not": "ours"}))
    assert report.find_results(tmp_path).name == "r2026-03.json"


def test_progress_bar_logs_a_line_per_tenth_when_not_a_terminal():
    stream = io.StringIO()
    bar = report.Progress(40, stream=stream)
    for _ in range(40):
        bar.advance(1, "x")
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 11 and lines[-1].startswith("[" + "#" * 30 + "] 40/40")


def test_bundled_sample_is_labelled_and_current():
    """notebooks/data/bench_sample.json is labelled a SAMPLE and has today's row format (else: regenerate it with
    ``python -m flashllm_nb.bench.sample``)."""
    meta, rows = report.load_results(ROOT / "notebooks" / "data" / "bench_sample.json")
    assert meta["sample"] is True and "Not a measurement" in meta["note"]
    fresh_meta, fresh_rows = synthetic_results()
    assert set(meta) == set(fresh_meta) and len(rows) == len(fresh_rows)
    assert [(set(r), r["status"]) for r in rows] == [(set(r), r["status"]) for r in fresh_rows]


# -------------------------------------------------------------------------------------------------- simulator

@pytest.mark.sim
def test_simulator_path_end_to_end(tmp_path, capsys):
    """``python -m flashllm_nb.bench`` without a GPU: checks the kernel against float64, prints no timings."""
    rc = main(["--n", "8", "--sparsity", "0.9", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "SIMULATOR MODE" in out and "timings would be meaningless" in out
    assert "| flashllm_nb Tiled-CSL | ok |" in out, out
    assert rc == 0 and "x /" not in out and not list(tmp_path.iterdir())  # no speedups, no files


def _fake(name, scale=1.0, raises=None):
    """A host 'kernel' (NumPy X @ W.T, optionally scaled or raising) registered like flashllm_nb's own."""
    from flashllm_nb import TiledCSL
    from flashllm_nb.bench.providers import Prepared

    def prepare(W):
        if raises:
            raise raises
        w32 = W.astype(np.float32)
        return Prepared(W.nbytes, lambda X: lambda: (X.astype(np.float32) @ w32.T * scale).astype(np.float16),
                        encoded=TiledCSL.from_dense(W))

    return Provider(name, name, lambda dtype, s: None, prepare, simulator=True, ours=True)


def test_runner_reports_ok_wrong_and_skipped_and_the_exit_status(monkeypatch):
    """The runner's verdicts, without a kernel: right -> ok, 1 % off -> WRONG, NotImplementedError -> skipped."""
    from flashllm_nb.bench.run import _exit_status
    from flashllm_nb.bench.sweep import Sweep, run_simulator

    for fake in (_fake("right"), _fake("off", scale=1.01), _fake("todo", raises=NotImplementedError("not yet"))):
        monkeypatch.setitem(PROVIDERS, fake.name, fake)
    sweep = Sweep(shapes=SIMULATOR_SHAPES, ns=(8,), sparsities=(0.8,), providers=("right", "off", "todo"))
    rows = [r.as_row() for r in run_simulator(sweep, advance=lambda k, what: None, log=lambda m: None)]
    assert [(r["provider"], r["status"]) for r in rows] == [("right", "ok"), ("off", "WRONG"), ("todo", "skipped")]
    assert "NotImplementedError: not yet" in rows[2]["reason"] and rows[1]["worst_error"] > 1
    assert _exit_status(rows, None) == 1 and _exit_status(rows[::2], None) == 0 and _exit_status(rows[:1], "x") == 1


def test_layout_ab_script_builds_the_row_major_twin_and_runs_in_the_simulator():
    """dev/layout_ab.py: its row-major twin holds the same matrix in Flash-LLM's order, and its simulator mode
    (what a GPU-less machine runs) checks both layouts give bit-identical products."""
    import os
    import subprocess
    import sys

    from dev import layout_ab
    from flashllm_nb.formats.tiled_csl import TiledCSL

    rng = np.random.default_rng(1)
    W = rng.standard_normal((300, 130)).astype(np.float16)
    W[rng.random(W.shape) < 0.6] = 0
    A = TiledCSL.from_dense(W)
    B = layout_ab.row_major(A, np)
    np.testing.assert_array_equal(B.tile_offsets, A.tile_offsets)
    np.testing.assert_array_equal(B.to_dense().view(np.uint16), W.view(np.uint16))
    assert (TiledCSL.from_raw(B.words, B.tile_offsets, B.shape, B.dtype, reorder=True).words == A.words).all()
    for t in range(B.n_tiles):  # row-major: positions unswizzled ascend inside each tile
        w = B.words[4 * B.tile_offsets[t] : 4 * B.tile_offsets[t + 1]]
        w = w[(w & 0xFFFF) != 0] >> 16
        index = w ^ ((w >> 3) & 0x38)
        assert (np.diff(index.astype(np.int64)) > 0).all()
    done = subprocess.run([sys.executable, "-m", "dev.layout_ab"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "bit-identical" in done.stdout


def test_word_order_ab_balanced_twin_holds_the_same_matrix_with_fewer_store_wavefronts():
    """dev/word_order_ab.py: the balanced twin moves words only inside their tiles (the same matrix, padding
    still in each tile's last vector, the canonical order back from ``from_raw(reorder=True)``), and its scatter
    columns take fewer wavefronts than the format's order on a random sparse matrix (none more on a dense one)."""
    from dev import word_order_ab
    from flashllm_nb.formats.tiled_csl import TiledCSL

    rng = np.random.default_rng(2)
    for sparsity in (0.9, 0.0):
        W = rng.standard_normal((300, 330)).astype(np.float16)  # partial tiles on both edges
        W[rng.random(W.shape) < sparsity] = 0
        A = TiledCSL.from_dense(W)
        B, before, after = word_order_ab.relaid(A)
        np.testing.assert_array_equal(B.tile_offsets, A.tile_offsets)
        np.testing.assert_array_equal(B.to_dense().view(np.uint16), W.view(np.uint16))
        assert (TiledCSL.from_raw(B.words, B.tile_offsets, B.shape, B.dtype, reorder=True).words == A.words).all()
        for t in range(A.n_tiles):  # padding (value bits 0) only in the tile's last vector
            w = B.words[4 * B.tile_offsets[t] : 4 * B.tile_offsets[t + 1]]
            assert not ((w[:-4] & 0xFFFF) == 0).any()
        if sparsity:
            assert after < 0.95 * before, (before, after)
        else:
            assert after <= before, (before, after)


def test_kernel_vs_commit_imports_a_commit_beside_todays_package(tmp_path):
    """dev/kernel_vs_commit.py: the package extracted from a commit (here HEAD) imports under its own name beside
    flashllm_nb, with its own classes, and gives the same product bit for bit (in the simulator)."""
    import subprocess
    import sys

    import flashllm_nb as fl
    from dev import kernel_vs_commit

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout: nothing to extract a commit from")
    extracted = subprocess.run([sys.executable, "-m", "dev.kernel_vs_commit", "extract", "HEAD", "--into",
                                str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=120)
    assert extracted.returncode == 0, extracted.stderr
    assert not any(b"flashllm_nb" in p.read_bytes() for p in (tmp_path / kernel_vs_commit.PACKAGE).rglob("*.py"))
    old = kernel_vs_commit.import_extracted(tmp_path)
    assert old.__name__ == kernel_vs_commit.PACKAGE and old.TiledCSL is not fl.TiledCSL
    rng = np.random.default_rng(3)
    W = rng.standard_normal((130, 70)).astype(np.float16)
    W[rng.random(W.shape) < 0.8] = 0
    X = rng.standard_normal((3, 70)).astype(np.float16)
    if not fl.simulator_enabled():
        import cupy

        W, X = cupy.asarray(W), cupy.asarray(X)
    ours, theirs = fl.linear(X, fl.TiledCSL.from_dense(W)), old.linear(X, old.TiledCSL.from_dense(W))
    assert (ours.view(np.uint16) == theirs.view(np.uint16)).all()


def test_block_timeline_reads_launch_gaps_phases_and_uneven_ends_from_records():
    """dev/block_timeline.py's arithmetic on hand-made records (microseconds; per block the marks of
    config.TIMELINE_FIELDS, then SM and whether it wrote the tile): two queues of two launches of two blocks, the
    second queue the first moved by 100 us, so every median is the one launch pair's figure."""
    from dev import block_timeline

    from flashllm_nb.kernels.spmm.config import TIMELINE_FIELDS

    marks = [name for name in TIMELINE_FIELDS if name not in ("sm", "wrote")]
    assert marks == ["start", "offsets", "waited", "loop_end", "ticket", "end"]
    first_launch = [[0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 0, 1], [0.0, 1.0, 2.0, 8.0, 9.0, 9.0, 1, 0]]
    second_launch = [[13.0, 14.0, 15.5, 20.0, 21.0, 22.0, 0, 1], [13.2, 14.2, 15.2, 18.0, 19.0, 19.0, 1, 0]]
    shifted = [[[t + 100.0 for t in block[:6]] + block[6:] for block in launch]
               for launch in (first_launch, second_launch)]
    s = block_timeline._medians([[first_launch, second_launch], shifted], marks)
    assert s["after_previous_end"] == pytest.approx(1.0)  # 13 - 12
    assert s["first_waited_after_previous_end"] == pytest.approx(3.2)  # 15.2 - 12
    assert s["start_spread"] == pytest.approx(0.2)
    assert s["span"] == pytest.approx(9.0)  # 13 .. 22
    assert s["tail"] == pytest.approx(3.0)  # the leaver's ticket at 19, the last end at 22
    assert s["half waited"] == pytest.approx(2.35)  # median(15.5, 15.2) - 13
    assert s["loop_end 10%"] == pytest.approx(5.2)  # 18 + 0.1 * (20 - 18) - 13
    assert s["loop_end 100%"] == pytest.approx(7.0)
    assert s["end after the last loop_end"] == pytest.approx(2.0)
    assert s["waited->loop_end"] == pytest.approx(3.65)  # median(4.5, 2.8)
    assert s["waited->loop_end writers"] == pytest.approx(4.5)
    assert s["loop_end->ticket writers"] == pytest.approx(1.0)
    assert s["timer_step"] == pytest.approx(0.2)  # 13.0 -> 13.2: the smallest step between two marks


def test_block_timeline_reads_where_the_blocks_land():
    """The first launch spreads its three blocks over three SMs; the second puts two on SM 0, whose k-tiles
    (waited -> loop_end) take 6 and 8 us, and one on SM 1 taking 3."""
    from dev import block_timeline

    from flashllm_nb.kernels.spmm.config import TIMELINE_FIELDS

    marks = [name for name in TIMELINE_FIELDS if name not in ("sm", "wrote")]
    first_launch = [[0.0, 1.0, 2.0, 8.0, 9.0, 9.0, sm, 0] for sm in (0, 1, 2)]
    second_launch = [[10.0, 11.0, 12.0, 18.0, 19.0, 19.0, 0, 1], [10.0, 11.0, 12.0, 20.0, 21.0, 21.0, 0, 0],
                     [10.0, 11.0, 12.0, 15.0, 16.0, 16.0, 1, 0]]
    s = block_timeline.placement([[first_launch, second_launch]], marks)
    assert s["most blocks on one SM"] == 2 and s["most blocks on one SM, first launch"] == 1
    assert s["k-tiles on the most crowded SMs"] == pytest.approx(7.0)  # median(6, 8)
    assert s["k-tiles elsewhere"] == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------------ bench-e2e

def test_hf_row_specs_round_trip_and_bad_ones_are_refused():
    """The one transformers model a child process of bench-e2e runs travels as --hf-row's text."""
    import argparse

    from flashllm_nb.bench.e2e import format_hf_row_spec, hf_row_spec

    for row in [(True, 0.0, True, "csl"), (False, 0.8, False, "csl"), (True, 0.9, True, "bitmap")]:
        assert hf_row_spec(format_hf_row_spec(*row)) == row
    for bad in ["compiled:0.8:stacked", "jit:0.8:stacked:csl", "compiled:1.5:stacked:csl", "compiled:0.8:x:csl",
                "compiled:0.8:stacked:bsr"]:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            hf_row_spec(bad)


def test_child_rows_are_read_from_the_last_marked_line():
    from flashllm_nb.bench.e2e import _CHILD_ROWS, rows_from_child_output

    lines = ["building", _CHILD_ROWS + json.dumps([{"batch": 1}]), "late log", _CHILD_ROWS + json.dumps([{"batch": 2}])]
    assert rows_from_child_output(lines) == [{"batch": 2}]
    assert rows_from_child_output(["Traceback (most recent call last):", "  ..."]) is None


def test_e2e_kernel_flags_become_one_force():
    """bench-e2e's --stream-k and --blocks-per-sm ask every sparse product for the same Force (set for the whole
    process, and passed on to the children with the rest of the command); without them, none."""
    from flashllm_nb.bench.e2e import build_parser, kernel_force
    from flashllm_nb.kernels.spmm.plan import Force

    parse = build_parser().parse_args
    assert kernel_force(parse([])) is None
    assert kernel_force(parse(["--stream-k"])) == Force(stream_k=True)
    assert kernel_force(parse(["--stream-k", "--blocks-per-sm", "4"])) == Force(stream_k=True, blocks_per_sm=4)
    assert kernel_force(parse(["--blocks-per-sm", "4"])) == Force(blocks_per_sm=4)


def _e2e_row(provider, sparsity, batch, tok_s, status="ok", model="opt-30b"):
    return {"model": model, "provider": provider, "sparsity": sparsity, "batch": batch, "decode_tok_s": tok_s,
            "status": status}


def test_e2e_speedups_compare_each_sparse_row_with_its_own_stacks_dense_row():
    """hf-compiled variants against hf-compiled dense, eager against eager, per model and batch; the engine against
    its own dense row, else transformers' compiled dense; failed rows and rows with no baseline get none."""
    from flashllm_nb.bench.e2e_plot import speedups_over_dense, stack_of

    assert [stack_of(p) for p in ("hf-compiled-unstacked", "hf-eager-bitmap", "flashllm_nb")] == \
        ["hf-compiled", "hf-eager", "flashllm_nb"]
    rows = [_e2e_row("hf-compiled", 0.0, 1, 40.0), _e2e_row("hf-compiled", 0.8, 1, 64.0),
            _e2e_row("hf-compiled-unstacked", 0.8, 1, 60.0), _e2e_row("hf-eager", 0.0, 1, 10.0),
            _e2e_row("hf-eager", 0.8, 1, 42.0), _e2e_row("flashllm_nb", 0.8, 1, 82.0),
            _e2e_row("hf-compiled", 0.8, 16, 700.0),  # no dense row at batch 16
            _e2e_row("hf-compiled-bitmap", 0.8, 1, None, status="failed: out of memory"),
            _e2e_row("flashllm_nb", 0.0, 1, 41.0, model="opt-66b"), _e2e_row("flashllm_nb", 0.9, 1, 102.5,
                                                                              model="opt-66b")]
    speedups = speedups_over_dense(rows)
    assert sorted(speedups) == [1, 2, 4, 5, 9]
    assert speedups[1] == (pytest.approx(1.6), "hf-compiled") and speedups[2] == (pytest.approx(1.5), "hf-compiled")
    assert speedups[4] == (pytest.approx(4.2), "hf-eager")
    assert speedups[5] == (pytest.approx(2.05), "hf-compiled")  # the engine with no dense row of its own
    assert speedups[9] == (pytest.approx(2.5), "flashllm_nb")


def test_e2e_figure_is_written_for_one_and_several_batches_and_for_none(tmp_path):
    from flashllm_nb.bench.e2e_plot import plot

    meta = {"device": "test card", "date": "2026-12-08"}
    for name, batches in (("one", (1,)), ("two", (1, 16))):
        rows = [_e2e_row(p, s, b, 40.0 * b * (1 + 2 * s)) for b in batches
                for p, s in (("hf-compiled", 0.0), ("hf-compiled", 0.8), ("flashllm_nb", 0.8))]
        rows.append(_e2e_row("hf-eager", 0.8, 1, None, status="failed: timed out"))
        plot(rows, meta, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot([_e2e_row("hf-compiled", 0.8, 1, None, status="failed: out of memory")], meta, tmp_path / "none.png")
    assert (tmp_path / "none.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a run whose rows all failed


def test_e2e_figure_names_a_kernel_force_in_its_title():
    """A run with --stream-k or --blocks-per-sm says so above its bars: its rows are not the plan's own kernels."""
    import matplotlib

    matplotlib.use("Agg")
    from flashllm_nb.bench.e2e_plot import figure

    rows = [_e2e_row("hf-compiled", 0.0, 1, 40.0), _e2e_row("hf-compiled", 0.8, 1, 64.0)]
    plain = figure(rows, {"device": "test card", "date": "2026-12-08"})
    forced = figure(rows, {"device": "test card", "date": "2026-12-08", "kernel_force": "Force(stream_k=True)"})
    titles = [[text.get_text() for text in fig.texts] for fig in (plain, forced)]
    assert not any("Force" in title for title in titles[0]), titles[0]
    assert any(title.endswith("every sparse product Force(stream_k=True)") for title in titles[1]), titles[1]
