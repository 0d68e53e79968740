"""The figure of a ``bench-e2e`` run: one panel per model and batch size, a bar per row (decode tokens/s), each
sparse row labelled with its speedup over the dense row it is measured against (:func:`speedups_over_dense`).

A row is compared with the dense row (sparsity 0) of the same model, batch and stack: transformers compiled
(``hf-compiled``, ``-unstacked`` and ``-bitmap`` alike), transformers eager (``hf-eager...``), or this library's
engine (``flashllm_nb``). This library's engine without a dense row of its own is compared with transformers'
compiled dense, the baseline docs/torch.md measures it against; the label says which.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["stack_of", "speedups_over_dense", "figure", "plot"]

_STACKS = ("hf-compiled", "hf-eager")  # provider prefixes: each its own stack, with its variants
_ENGINE = "flashllm_nb"
_ENGINE_FALLBACK = "hf-compiled"  # what this library's engine is compared with when it has no dense row
_COLOURS = {_ENGINE: "tab:blue", "hf-compiled": "tab:green", "hf-eager": "tab:orange"}


def stack_of(provider: str) -> str:
    """The stack a provider's rows belong to: ``"hf-compiled"``, ``"hf-eager"``, or the provider itself."""
    return next((stack for stack in _STACKS if provider.startswith(stack)), provider)


def speedups_over_dense(rows: list[dict]) -> dict[int, tuple[float, str]]:
    """For each successful sparse row (by its index in ``rows``) that has a dense row to compare with: its decode
    tokens/s over that row's, and the baseline's stack. Rows without a baseline are absent."""
    dense = {(r["model"], r["batch"], stack_of(r["provider"])): r["decode_tok_s"] for r in rows
             if r["status"] == "ok" and r["sparsity"] == 0 and r.get("decode_tok_s")}
    speedups = {}
    for i, r in enumerate(rows):
        if r["status"] != "ok" or r["sparsity"] == 0 or not r.get("decode_tok_s"):
            continue
        stack = stack_of(r["provider"])
        for baseline in (stack, _ENGINE_FALLBACK) if stack == _ENGINE else (stack,):
            if (r["model"], r["batch"], baseline) in dense:
                speedups[i] = (r["decode_tok_s"] / dense[r["model"], r["batch"], baseline], baseline)
                break
    return speedups


def _label(row: dict) -> str:
    sparsity = row["sparsity"]
    return f"{row['provider']}, {'dense' if sparsity == 0 else f'{sparsity:.0%}'}"


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    """Write the figure of ``rows`` (``bench-e2e``'s result rows) to ``path`` (PNG), without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(rows, meta)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(rows: list[dict], meta: dict):
    """The figure of ``rows`` (a matplotlib Figure, on the current backend: inline in a notebook); ``meta`` names
    the device and date in its title."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    ok = [(i, r) for i, r in enumerate(rows) if r["status"] == "ok" and r.get("decode_tok_s")]
    panels = sorted({(r["model"], r["batch"]) for _, r in ok})
    speedups = speedups_over_dense(rows)
    heights = [sum(1 for _, r in ok if (r["model"], r["batch"]) == panel) for panel in panels]
    fig, axes = plt.subplots(max(len(panels), 1), 1, squeeze=False,
                             figsize=(8, 1.2 + 0.45 * sum(heights) + 0.9 * len(panels)),
                             gridspec_kw={"height_ratios": heights or [1]})
    for ax, (model, batch) in zip(axes[:, 0], panels):
        # dense rows first, then by stack and sparsity; the first row is drawn at the top
        members = sorted(((i, r) for i, r in ok if (r["model"], r["batch"]) == (model, batch)),
                         key=lambda ir: (ir[1]["sparsity"] > 0, stack_of(ir[1]["provider"]), ir[1]["sparsity"],
                                         ir[1]["provider"]))
        y = range(len(members))[::-1]
        values = [r["decode_tok_s"] for _, r in members]
        colours = [to_rgba(_COLOURS.get(stack_of(r["provider"]), "tab:gray"), 0.45 if r["sparsity"] == 0 else 0.9)
                   for _, r in members]  # dense rows paler
        ax.barh(list(y), values, color=colours)
        ax.set_yticks(list(y), [_label(r) for _, r in members], fontsize=8)
        for yi, (i, r) in zip(y, members):
            text = f" {r['decode_tok_s']:.1f}"
            if i in speedups:
                ratio, baseline = speedups[i]
                same = baseline == stack_of(r["provider"])
                text += f"  ({ratio:.2f}x {'dense' if same else baseline + ' dense'})"
            ax.text(r["decode_tok_s"], yi, text, va="center", fontsize=8)
        ax.set_xlim(0, max(values) * 1.45)
        ax.set_title(f"{model}, batch {batch}", fontsize=10, loc="left")
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("decode tokens/s")
    forced = f", every sparse product {meta['kernel_force']}" if meta.get("kernel_force") else ""
    fig.suptitle(f"bench-e2e on {meta.get('device', '?')}, {meta.get('date', '')}{forced}", fontsize=10)
    fig.tight_layout()
    return fig
