#!/bin/bash
# Everything a GPU session checks, in one command (about 10 minutes on an H200):
#   bash bench/gpu_session.sh [OUT_DIR] [--quick]   (default bench/out; --quick: the sweep at N = 16 only)
# 1. the GPU tests (kernel, format, PTX layer); 2. compute-sanitizer memcheck and racecheck on a mid-size case;
# 3. the host cost of one linear() call and of a prepared call; 4. the layout A/B (bank-interleaved vs row-major entry order);
# 5. the full benchmark sweep (python -m flashllm_nb.bench), written to OUT_DIR. Logs go to OUT_DIR too.
set -u
OUT=${1:-bench/out}
SWEEP=${2:-}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pytest -q tests/test_spmm_gpu.py tests/test_tiled_csl_gpu.py tests/test_ptx_gpu.py 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck racecheck; do
    "$SANITIZER" --tool "$tool" python3 tests/gpu_sanitizer_case.py > "$OUT/$tool.log" 2>&1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer case" "$OUT/$tool.log"
done
python3 - <<'PY' | tee "$OUT/launch_cost.txt"
import time, numpy as np, cupy as cp, flashllm_nb as fl
rng = np.random.default_rng(0)
W = rng.standard_normal((4096, 4096)).astype(np.float16); W[rng.random(W.shape) < 0.8] = 0
A = fl.TiledCSL.from_dense(cp.asarray(W)); X = cp.asarray(rng.standard_normal((16, 4096)).astype(np.float16))
Y = fl.linear(X, A)
for _ in range(50): fl.linear(X, A, out=Y)
cp.cuda.Device().synchronize(); t = time.perf_counter()
for _ in range(200): fl.linear(X, A, out=Y)
print(f"host time per linear(X, A, out=Y) call: {(time.perf_counter() - t) / 200 * 1e6:.1f} us")
cp.cuda.Device().synchronize()
P = fl.prepare_linear(X, A, out=Y)
for _ in range(50): P()
cp.cuda.Device().synchronize(); t = time.perf_counter()
for _ in range(200): P()
print(f"host time per prepared call P() (P = prepare_linear(X, A, out=Y)): {(time.perf_counter() - t) / 200 * 1e6:.1f} us")
cp.cuda.Device().synchronize()
PY
python3 bench/layout_ab.py 2>&1 | tee "$OUT/layout_ab.txt"
python3 -m flashllm_nb.bench --out "$OUT" $SWEEP 2>&1 | tail -3
