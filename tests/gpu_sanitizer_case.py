"""A mid-size SpMM for ``compute-sanitizer`` (memcheck, racecheck): every kernel path once, results checked.

    compute-sanitizer --tool memcheck python tests/gpu_sanitizer_case.py
    compute-sanitizer --tool racecheck python tests/gpu_sanitizer_case.py
"""

import numpy as np
import cupy as cp

import flashllm_nb as fl

rng = np.random.default_rng(0)
# On Hopper "nk" runs wgmma (4 warps up to N = 16, 8 warps beyond), "kn" mma.sync; elsewhere both run mma.sync.
# Matrices denser than ~78 % sparsity take the larger word prefetch at N <= 16 (the 0.7 cases); sparser than ~84 %,
# clear="entries" at N <= 16 (the 0.9 and 0.95 cases up to N = 16: the mbarrier with mma.sync, a second barrier per
# step with wgmma), with two activation stages for "nk" at N 9-16 on Hopper (the 0.9 "nk" cases at N = 12 and 16).
# On Hopper "nk" at N <= 16 clears by entries from ~77 % on (the 0.8 cases, with the 512-vector buffer).
for m, k, n, sparsity, split_k, layout in [(1000, 1100, 16, 0.8, None, "nk"), (1000, 1100, 16, 0.8, 3, "nk"),
                                          (1000, 1100, 16, 0.7, None, "nk"), (520, 700, 16, 0.7, 2, "kn"),
                                          (520, 700, 40, 0.5, None, "nk"), (520, 700, 64, 0.9, 2, "nk"),
                                          (520, 700, 40, 0.0, 2, "kn"), (256, 640, 1, 0.95, 1, "nk"),
                                          (1000, 1100, 16, 0.9, None, "nk"), (1000, 1100, 12, 0.9, 3, "nk"),
                                          (520, 900, 8, 0.9, 2, "kn")]:
    W = rng.standard_normal((m, k)).astype(np.float32)
    W[rng.random((m, k)) < sparsity] = 0
    W = W.astype(np.float16)
    X = rng.standard_normal((n, k)).astype(np.float16)
    A = fl.TiledCSL.from_dense(cp.asarray(W))
    if layout == "nk":
        Y = fl.linear(cp.asarray(X), A, split_k=split_k).get().astype(np.float64)
        ref = X.astype(np.float64) @ W.astype(np.float64).T
    else:
        Y = fl.spmm(A, cp.asarray(np.ascontiguousarray(X.T)), split_k=split_k).get().astype(np.float64)
        ref = W.astype(np.float64) @ X.astype(np.float64).T
    err = np.max(np.abs(Y - ref) / (np.abs(ref) + 1))
    assert err < 1e-2, (m, k, n, sparsity, split_k, layout, err)
print("sanitizer case: all products correct")
