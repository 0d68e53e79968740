"""The x axis of the sweep: weight shapes of real LLM linear layers, as M x K = out_features x in_features.

OPT presets are the four layers of one decoder block that Flash-LLM's kernel benchmark uses (hidden size h):

    QKV       3h x h     (the fused query/key/value projection)
    out proj   h x h
    FFN1      4h x h
    FFN2       h x 4h

Llama-2 presets list q/k/v/o and the gated FFN's gate/up/down; layers of equal shape are merged into one entry
("q/k/v/o") so that the geometric mean over a preset's shapes weighs each distinct shape once. Llama-2-70B uses
grouped-query attention: 8 key/value heads of 128, so k and v are 1024 x 8192.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["Shape", "shape_label", "PRESETS", "SIMULATOR_SHAPES", "opt_block", "llama_block", "parse_shape",
           "resolve_shapes"]


@dataclass(frozen=True)
class Shape:
    """One weight matrix: ``M`` output features by ``K`` input features (``W`` is M x K, ``Y = X @ W.T``)."""

    model: str  # "OPT-66B", or "custom" for --shape
    layer: str  # "QKV", "q/k/v/o", ...; "" for --shape
    M: int
    K: int

    @property
    def label(self) -> str:
        """Short row label for tables, e.g. ``OPT-66B QKV 27648x9216``, ``custom 4096x4096``."""
        return shape_label(self.model, self.layer, self.M, self.K)


def shape_label(model: str, layer: str, m: int, k: int) -> str:
    """``model layer MxK``, skipping an empty layer name."""
    return " ".join(part for part in (model, layer, f"{m}x{k}") if part)


def opt_block(model: str, h: int) -> tuple[Shape, ...]:
    """The four linear layers of an OPT decoder block of hidden size ``h``."""
    return (
        Shape(model, "QKV", 3 * h, h),
        Shape(model, "out proj", h, h),
        Shape(model, "FFN1", 4 * h, h),
        Shape(model, "FFN2", h, 4 * h),
    )


def llama_block(model: str, hidden: int, intermediate: int, heads: int, kv_heads: int) -> tuple[Shape, ...]:
    """The distinct linear-layer shapes of a Llama decoder block; equal shapes merged (``q/k/v/o``)."""
    kv = kv_heads * (hidden // heads)
    layers = [
        ("q", hidden, hidden), ("k", kv, hidden), ("v", kv, hidden), ("o", hidden, hidden),
        ("gate", intermediate, hidden), ("up", intermediate, hidden), ("down", hidden, intermediate),
    ]
    merged: dict[tuple[int, int], list[str]] = {}
    for name, m, k in layers:
        merged.setdefault((m, k), []).append(name)
    return tuple(Shape(model, "/".join(names), m, k) for (m, k), names in merged.items())


_OPT = {"opt-30b": opt_block("OPT-30B", 7168), "opt-66b": opt_block("OPT-66B", 9216),
        "opt-175b": opt_block("OPT-175B", 12288)}
_LLAMA = {
    "llama2-7b": llama_block("Llama-2-7B", 4096, 11008, 32, 32),
    "llama2-13b": llama_block("Llama-2-13B", 5120, 13824, 40, 40),
    "llama2-70b": llama_block("Llama-2-70B", 8192, 28672, 64, 8),
}

#: Every preset by name; ``opt`` and ``llama2`` are the three models of each family together.
PRESETS: dict[str, tuple[Shape, ...]] = {
    **_OPT,
    **_LLAMA,
    "opt": tuple(s for shapes in _OPT.values() for s in shapes),
    "llama2": tuple(s for shapes in _LLAMA.values() for s in shapes),
}

#: The simulator runs every thread as a Python thread: one 2 x 2 grid of 128 x 64 tiles is all it can afford.
SIMULATOR_SHAPES: tuple[Shape, ...] = (Shape("simulator", "tiny", 256, 128),)


def parse_shape(text: str) -> Shape:
    """Parse ``--shape M,K`` (e.g. ``9216,36864``) into a custom :class:`Shape`.

    Raises ``argparse.ArgumentTypeError`` so that argparse reports it as ``argument --shape: ...``.
    """
    parts = text.replace("x", ",").split(",")
    try:
        m, k = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected M,K (two positive integers, out_features,in_features, e.g. 9216,36864), got {text!r}"
        ) from None
    if m < 1 or k < 1:
        raise argparse.ArgumentTypeError(f"expected M,K both >= 1, got {text!r}")
    return Shape("custom", "", m, k)


def resolve_shapes(presets: list[str] | None, shapes: list[Shape] | None, default: str) -> tuple[Shape, ...]:
    """The presets' shapes followed by the custom ones, duplicates (same M, K) dropped; ``default`` if neither."""
    chosen = [s for name in (presets or []) for s in PRESETS[name]] + list(shapes or [])
    if not chosen:
        chosen = list(PRESETS[default])
    seen: set[tuple[int, int]] = set()
    unique = []
    for s in chosen:
        if (s.M, s.K) not in seen:
            seen.add((s.M, s.K))
            unique.append(s)
    return tuple(unique)
