"""A SAMPLE results file made of synthetic numbers, for the notebook and the tests: never a measurement.

``python -m flashllm_nb.bench.sample [PATH]`` writes ``notebooks/data/bench_sample.json`` (or PATH) through the same
report code as a real run, so the notebook renders exactly what a real file would give. The numbers come from a
toy model, labelled as such inside the file: every provider moves its bytes at a fixed fraction of a nominal copy
bandwidth (cuBLAS 0.88, Tiled-CSL 0.55, cuSPARSE 0.05, 2:4 0.2), with 5 us of fixed cost and 3 % of seeded noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import report
from .shapes import PRESETS
from .sweep import OK, SKIPPED, WRONG, Result

__all__ = ["synthetic_results", "SAMPLE_PATH"]

SAMPLE_PATH = Path("notebooks/data/bench_sample.json")
NOMINAL_COPY_GBPS = 4000.0
_FRACTION = {"cublas": 0.88, "cusparse_csr_cupy": 0.05, "cusparse_csr_torch": 0.05, "sparse24_torch": 0.2,
             "flashllm_tiled_csl": 0.55}
_LABEL = {"cublas": "cuBLAS (dense)", "cusparse_csr_cupy": "cuSPARSE CSR (CuPy)",
          "cusparse_csr_torch": "cuSPARSE CSR (PyTorch)", "sparse24_torch": "2:4 semi-structured (PyTorch)",
          "flashllm_tiled_csl": "flashllm_nb Tiled-CSL"}


def _weight_bytes(provider: str, m: int, k: int, s: float) -> int:
    nnz = round((1 - s) * m * k)
    return {"cublas": 2 * m * k, "cusparse_csr_cupy": 8 * nnz + 4 * (m + 1),
            "cusparse_csr_torch": 10 * nnz + 8 * (m + 1), "sparse24_torch": m * k + m * k // 8,
            "flashllm_tiled_csl": 4 * nnz}[provider]


def synthetic_results(preset: str = "opt-66b", ns: tuple[int, ...] = (8, 16, 32, 64),
                      sparsities: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9), seed: int = 0) -> tuple[dict, list]:
    """(meta, rows) in the format of a real results file, with the toy numbers of the module docstring."""
    rng = np.random.default_rng(seed)
    rows = []
    for shape in PRESETS[preset]:
        for s in sparsities:
            for provider, fraction in _FRACTION.items():
                for n in ns:
                    r = Result(model=shape.model, layer=shape.layer, M=shape.M, K=shape.K, N=n, sparsity=s,
                               dtype="fp16", provider=provider, label=_LABEL[provider], status=OK)
                    act = 4 if provider == "cusparse_csr_cupy" else 2
                    r.weight_bytes = _weight_bytes(provider, shape.M, shape.K, s)
                    r.bytes = r.weight_bytes + act * n * (shape.M + shape.K)
                    if provider == "sparse24_torch" and s != 0.5:
                        r.status, r.reason = SKIPPED, "2:4 semi-structured sparsity is 50 % by construction"
                        r.weight_bytes = r.bytes = None
                    else:
                        t = (r.bytes / (fraction * NOMINAL_COPY_GBPS * 1e9) + 5e-6) * rng.lognormal(0, 0.03)
                        r.time_ms, r.p10_ms, r.p90_ms = 1e3 * t, 0.98e3 * t, 1.03e3 * t
                        r.call_us, r.reps, r.slots, r.worst_error = 1e6 * t + 20.0, 100, 1, 0.05
                    if provider == "cusparse_csr_torch":  # to show how a failed check looks
                        r.status, r.worst_error = WRONG, 40.0
                        r.reason = "SAMPLE: a synthetic failed check, to show how one is reported"
                    rows.append(r.as_row())
    meta = {
        "tool": "flashllm_nb.bench", "schema": 1, "sample": True, "simulator": False,
        "note": "Synthetic numbers from flashllm_nb.bench.sample's toy model, to exercise the notebook and tests. "
                "Not a measurement of anything.",
        "date": "none (synthetic)", "command": "python -m flashllm_nb.bench.sample", "argv": [],
        "device": {"name": "no device"},
        "sweep": {"dtype": "fp16", "reps": 100, "warmup": 10, "seed": seed, "ns": list(ns),
                  "sparsities": list(sparsities), "providers": list(_FRACTION)},
        "copy_bandwidth_gbps": NOMINAL_COPY_GBPS,
        "versions": {},
    }
    report.derive_metrics(rows, NOMINAL_COPY_GBPS)
    return meta, rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else SAMPLE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(path, *synthetic_results())
    print(f"wrote {path} (SAMPLE: synthetic numbers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
