"""What the benchmark prints and writes: derived metrics, markdown tables, CSV, JSON, the plot, a progress bar.

Everything here works on result rows as plain dicts (``Result.as_row()``, or the ``results`` list of a JSON file),
with NumPy and matplotlib only, so that the notebook can redraw any results file on a machine without a GPU.

Columns (per provider, per case):

==================  ==========================================================================================
``time_ms``         median of the device loop (CUDA events), with ``p10_ms`` / ``p90_ms``
``speedup``         cuBLAS's median / this median, same shape, N and sparsity, same process; only for ``ok`` rows
``tflops``          dense-equivalent 2*M*N*K / time: what a dense GEMM would need to reach to be as fast
``gbps``            ``bytes`` / time, with bytes = the provider's weight bytes + activations read + output written
``bound_fraction``  (bytes / copy bandwidth) / time: 1.0 = as fast as moving those bytes can possibly be
==================  ==========================================================================================
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .shapes import shape_label
from .timing import geometric_mean

__all__ = [
    "derive_metrics", "case_table", "headline", "headline_table", "simulator_table", "notes_lines", "header_lines",
    "markdown_report", "write_json", "write_csv", "write_markdown", "plot", "write_all", "load_results",
    "find_results", "Progress",
]

BASELINE = "cublas"  # same as providers.BASELINE; repeated so this module imports without the GPU-side modules
_CSV_FIELDS = [
    "model", "layer", "M", "K", "N", "sparsity", "dtype", "provider", "status", "time_ms", "p10_ms", "p90_ms",
    "speedup", "tflops", "gbps", "bound_fraction", "call_us", "weight_bytes", "bytes", "worst_error", "reps",
    "slots", "spacer_us", "label", "reason", "note",
]


def _key(row: dict) -> tuple:
    return row["M"], row["K"], row["N"], row["sparsity"]


def derive_metrics(rows: list[dict], copy_gbps: float | None) -> None:
    """Fill ``speedup``, ``tflops``, ``gbps`` and ``bound_fraction`` of every ``ok`` row, in place.

    A WRONG row keeps its time but gets none of these: the speed of a wrong answer is not a result.
    """
    baseline = {_key(r): r["time_ms"] for r in rows if r["provider"] == BASELINE and r["status"] == "ok"}
    for r in rows:
        r["speedup"] = r["tflops"] = r["gbps"] = r["bound_fraction"] = None
        if r["status"] != "ok" or not r.get("time_ms"):
            continue
        seconds = r["time_ms"] * 1e-3
        r["tflops"] = 2.0 * r["M"] * r["N"] * r["K"] / seconds / 1e12
        if r.get("bytes"):
            r["gbps"] = r["bytes"] / seconds / 1e9
            if copy_gbps:
                r["bound_fraction"] = r["bytes"] / (copy_gbps * 1e9) / seconds
        if _key(r) in baseline:
            r["speedup"] = baseline[_key(r)] / r["time_ms"]


# ------------------------------------------------------------------------------------------- markdown tables

def _providers(rows: Iterable[dict]) -> list[tuple[str, str]]:
    """(name, label) of every provider in first-seen order, the baseline first."""
    seen: dict[str, str] = {}
    for r in rows:
        seen.setdefault(r["provider"], r.get("label") or r["provider"])
    return sorted(seen.items(), key=lambda item: item[0] != BASELINE)


def _cell(row: dict | None) -> str:
    if row is None or row["status"] == "skipped":
        return "–"
    if row["status"] == "error":
        return "error"
    if row["status"] == "WRONG":
        return "WRONG" if row.get("time_ms") is None else f"WRONG ({row['time_ms']:.3f})"
    if row.get("time_ms") is None:  # simulator: checked, not timed
        return "ok"
    parts = [f"{row['time_ms']:.3f}"]
    parts.append("–" if row.get("speedup") is None else f"{row['speedup']:.2f}x")
    parts.append("–" if row.get("bound_fraction") is None else f"{row['bound_fraction']:.2f}")
    return " / ".join(parts)


def case_table(rows: list[dict]) -> str:
    """One row per shape x N x sparsity; one column per provider: ``time ms / speedup / fraction of bound``."""
    provs = _providers(rows)
    by_case: dict[tuple, dict[str, dict]] = defaultdict(dict)
    order: list[tuple] = []
    for r in rows:
        case = (r["model"], r["layer"], r["M"], r["K"], r["N"], r["sparsity"])
        if case not in by_case:
            order.append(case)
        by_case[case][r["provider"]] = r
    lines = ["| shape (M x K) | N | sparsity | " + " | ".join(label for _, label in provs) + " |",
             "|---|---:|---:|" + "---:|" * len(provs)]
    shape_order: dict[tuple, int] = {}
    for case in order:
        shape_order.setdefault(case[:4], len(shape_order))
    for case in sorted(order, key=lambda c: (shape_order[c[:4]], c[4], c[5])):
        model, layer, m, k, n, s = case
        cells = [_cell(by_case[case].get(name)) for name, _ in provs]
        lines.append(f"| {shape_label(model, layer, m, k)} | {n} | {s:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(rows: list[dict]) -> dict[tuple[str, int, float], dict]:
    """Geometric mean over shapes of speedup and fraction of bound, per (provider, N, sparsity).

    Each value: ``{"speedup": gm or nan, "bound_fraction": gm or nan, "shapes_ok": k, "shapes": n}``; a mean over
    fewer shapes than the sweep had (k < n) is marked in the tables, as it is not comparable.
    """
    groups: dict[tuple[str, int, float], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["provider"], r["N"], r["sparsity"])].append(r)
    out = {}
    for key, group in groups.items():
        ok = [r for r in group if r.get("speedup")]
        fractions = [r["bound_fraction"] for r in ok if r.get("bound_fraction")]
        out[key] = {"speedup": geometric_mean([r["speedup"] for r in ok]), "bound_fraction": geometric_mean(fractions),
                    "shapes_ok": len(ok), "shapes": len(group)}
    return out


def headline_table(rows: list[dict]) -> str:
    """The headline: rows N x sparsity, columns the sparse providers, cells ``speedup (fraction of bound)``."""
    summary = headline(rows)
    provs = [(name, label) for name, label in _providers(rows) if name != BASELINE]
    cases = sorted({(n, s) for _, n, s in summary})
    lines = ["| N | sparsity | " + " | ".join(label for _, label in provs) + " |",
             "|---:|---:|" + "---:|" * len(provs)]
    for n, s in cases:
        cells = []
        for name, _ in provs:
            h = summary.get((name, n, s))
            if h is None or h["shapes_ok"] == 0:
                cells.append("–")
                continue
            cell = f"{h['speedup']:.2f}x"
            if not math.isnan(h["bound_fraction"]):
                cell += f" ({h['bound_fraction']:.2f})"
            if h["shapes_ok"] < h["shapes"]:
                cell += f" [{h['shapes_ok']}/{h['shapes']} shapes]"
            cells.append(cell)
        lines.append(f"| {n} | {s:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def simulator_table(rows: list[dict]) -> str:
    """The simulator's correctness table: one row per check, no times."""
    lines = ["| shape (M x K) | N | sparsity | provider | result | worst error / tolerance |",
             "|---|---:|---:|---|---|---:|"]
    for r in rows:
        worst = "–" if r.get("worst_error") is None else f"{r['worst_error']:.3g}"
        lines.append(f"| {shape_label(r['model'], r['layer'], r['M'], r['K'])} | {r['N']} | {r['sparsity']:.0%} | "
                     f"{r['label']} | {r['status']} | {worst} |")
    return "\n".join(lines)


def notes_lines(rows: list[dict]) -> list[str]:
    """Each provider's note and each distinct reason a case was skipped or errored, once; per provider with WRONG
    results, how many and the worst one."""
    seen: dict[str, None] = {}
    wrong: dict[str, list[dict]] = defaultdict(list)
    cases: dict[str, int] = defaultdict(int)
    for r in rows:
        cases[r["provider"]] += 1
        if r.get("note"):
            seen.setdefault(f"{r['provider']}: {r['note']}", None)
        if r["status"] == "WRONG":
            wrong[r["provider"]].append(r)
    for r in rows:
        if r["status"] in ("skipped", "error") and r.get("reason"):
            seen.setdefault(f"{r['provider']} {r['status']}: {r['reason']}", None)
    for provider, bad in wrong.items():
        w = max(bad, key=lambda r: r.get("worst_error") or 0.0)
        seen.setdefault(f"{provider} WRONG in {len(bad)} of {cases[provider]} cases; the worst, "
                        f"{w['M']}x{w['K']} N={w['N']} {w['sparsity']:.0%}: {w['reason']}", None)
    return list(seen)


def header_lines(meta: dict) -> list[str]:
    """Who, where and how: card, versions, bandwidth, command, date."""
    dev = meta.get("device", {})
    lines = []
    if meta.get("sample"):
        lines.append("**SAMPLE: synthetic numbers, not a measurement.** " + meta.get("note", ""))
    card = dev.get("name", "?")
    if "sm_count" in dev:
        card += (f", {dev['sm_count']} SMs, L2 {dev['l2_bytes'] / 1e6:.0f} MB, compute capability "
                 f"{dev.get('compute_capability', '?')}")
    lines.append(f"- card: {card}")
    if meta.get("driver_version"):
        lines.append(f"- CUDA driver {meta['driver_version']}, runtime {meta.get('runtime_version')}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items() if v))
    if meta.get("copy_bandwidth_gbps"):
        lines.append(f"- device-to-device copy bandwidth: {meta['copy_bandwidth_gbps']:.0f} GB/s (read + written)")
    sweep = meta.get("sweep", {})
    if sweep:
        lines.append(f"- dtype {sweep.get('dtype')}, up to {sweep.get('reps')} repetitions after "
                     f"{sweep.get('warmup')} warm-up calls, seed {sweep.get('seed')}")
    lines.append(f"- command: `{meta.get('command', '')}`")
    lines.append(f"- date: {meta.get('date', '')}")
    return lines


# ------------------------------------------------------------------------------------------------- files

def write_json(path: Path, meta: dict, rows: list[dict]) -> Path:
    """``{"meta": {...}, "results": [row, ...]}``, one result per line (compact, and diffs line by line); floats
    to 6 significant digits (a nanosecond on a millisecond)."""
    lines = ",\n".join(json.dumps({k: _g6(v) for k, v in r.items()}, default=str) for r in rows)
    path.write_text(f'{{"meta": {json.dumps(meta, indent=1, default=str)},\n"results": [\n{lines}\n]}}\n')
    return path


def _g6(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) and math.isfinite(value) else value


def write_csv(path: Path, meta: dict, rows: list[dict]) -> Path:
    """One line per result; the metadata as ``#`` comment lines first (``pandas.read_csv(path, comment="#")``)."""
    with path.open("w", newline="") as f:
        for line in header_lines(meta):
            f.write("# " + line.lstrip("- ") + "\n")
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown_report(meta: dict, rows: list[dict]) -> str:
    """The whole report as markdown: header, headline, per-case table, notes."""
    parts = ["# flashllm_nb kernel benchmark", "", *header_lines(meta), ""]
    parts += ["## Speedup over cuBLAS: geometric mean over shapes (fraction of the bandwidth bound)", "",
              headline_table(rows), ""]
    parts += ["## Per case: time ms / speedup over cuBLAS / fraction of the bandwidth bound", "", case_table(rows), ""]
    notes = notes_lines(rows)
    if notes:
        parts += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(parts)


def write_markdown(path: Path, meta: dict, rows: list[dict]) -> Path:
    path.write_text(markdown_report(meta, rows))
    return path


def plot(rows: list[dict], meta: dict, path: Path | None = None):
    """Speedup over cuBLAS vs sparsity: one panel per N, one line per provider (geometric mean over shapes; a point
    only where every shape passed, so a line may have gaps).

    Also drawn: cuBLAS itself (1.0) and the Tiled-CSL byte bound 1 / (2 (1 - s)), the best speedup 4-byte entries
    allow over 2-byte dense weights when moving the weights is all that counts. Returns the figure; saves it (PNG)
    when ``path`` is given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    summary = headline(rows)
    ns = sorted({n for _, n, _ in summary})
    provs = [(name, label) for name, label in _providers(rows) if name != BASELINE]
    cols = min(len(ns), 2) or 1
    nrows = max(1, math.ceil(len(ns) / cols))
    legend_in = 1.0  # inches below the panels for the legend
    height = 4 * nrows + legend_in
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, height), squeeze=False, sharey=True)
    for ax, n in zip(axes.flat, ns):
        sparsities = sorted({s for _, m, s in summary if m == n})
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="cuBLAS (dense)")
        bound = [(s, 1 / (2 * (1 - s))) for s in sparsities if s < 1]
        if bound:
            ax.plot([100 * s for s, _ in bound], [b for _, b in bound], color="gray", linestyle=":",
                    label="Tiled-CSL byte bound")
        for name, label in provs:
            # Only means over every shape: a mean over the shapes that happened to pass is not comparable.
            pts = [(s, summary[(name, n, s)]["speedup"]) for s in sparsities if (name, n, s) in summary
                   and 0 < summary[(name, n, s)]["shapes_ok"] == summary[(name, n, s)]["shapes"]]
            ax.plot([100 * s for s, _ in pts], [v for _, v in pts], marker="o", label=label)
        ax.set_title(f"N = {n}")
        ax.set_xticks([100 * s for s in sparsities])
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("speedup over cuBLAS")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(ns):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2 * cols, fontsize=8)
    device, sweep = meta.get("device", {}), meta.get("sweep", {})
    title = (f"{device.get('name', '?')}, {sweep.get('dtype', '')}, {meta.get('date', '')}\n"
             "speedup over cuBLAS, geometric mean over shapes")
    if meta.get("sample"):
        title = "SAMPLE (synthetic numbers, not a measurement): " + title
    fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def write_all(out_dir: Path, meta: dict, rows: list[dict], stamp: str | None = None) -> dict[str, Path]:
    """Write ``kernel_bench_<stamp>.{json,csv,md,png}`` into ``out_dir``; the PNG only where matplotlib imports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"kernel_bench_{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    paths = {
        "json": write_json(stem.with_suffix(".json"), meta, rows),
        "csv": write_csv(stem.with_suffix(".csv"), meta, rows),
        "md": write_markdown(stem.with_suffix(".md"), meta, rows),
    }
    try:
        paths["png"] = stem.with_suffix(".png")
        plot(rows, meta, paths["png"])
    except ImportError as exc:
        del paths["png"]
        print(f"no plot: {exc}", file=sys.stderr)
    return paths


def load_results(path: str | Path) -> tuple[dict, list[dict]]:
    """(meta, rows) of a results file written by :func:`write_json`."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("meta", {}).get("tool") != "flashllm_nb.bench":
        raise ValueError(f"Invalid content of path: expected a flashllm_nb.bench results file, got {path}")
    return data["meta"], data["results"]


def find_results(root: str | Path) -> Path | None:
    """The newest real (not sample, not simulator) results file under ``root``, by the date inside; or None."""
    best: tuple[str, Path] | None = None
    for path in Path(root).rglob("*.json"):
        try:
            meta, _ = load_results(path)
        except (ValueError, OSError, KeyError):
            continue
        if meta.get("sample") or meta.get("simulator"):
            continue
        if best is None or str(meta.get("date", "")) > best[0]:
            best = (str(meta.get("date", "")), path)
    return None if best is None else best[1]


# --------------------------------------------------------------------------------------------- progress bar

class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise (logs)."""

    def __init__(self, total: int, stream: Any = None, width: int = 30):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_decile = -1

    def advance(self, k: int, what: str = "") -> None:
        self.done = min(self.done + k, self.total)
        frac = self.done / self.total
        elapsed = time.perf_counter() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(self.width * frac) + "." * (self.width - int(self.width * frac))
        text = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s, ~{eta:.0f}s left  {what}"
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150))
            if self.done == self.total:
                self.stream.write("\n")
        elif int(10 * frac) > self._last_decile:
            self._last_decile = int(10 * frac)
            self.stream.write(text + "\n")
        self.stream.flush()

    def log(self, message: str) -> None:
        """A message that does not tear the bar."""
        self.stream.write(("\n" if self.tty and 0 < self.done < self.total else "") + message + "\n")
        self.stream.flush()
