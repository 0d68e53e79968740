#!/bin/bash
# Everything a GPU session checks, in one command (about 10 minutes on an H200):
#   bash dev/gpu_session.sh [OUT_DIR] [SWEEP ARGS...]   (default bench/out; e.g. --quick: the sweep at N = 16 only)
# 1. the GPU tests (kernel, format, PTX layer); 2. compute-sanitizer memcheck and racecheck on a mid-size case;
# 3. the host cost of one linear() call and of a prepared call (queued behind a spin kernel, so only the host is
# timed); 4. the full benchmark sweep (python -m flashllm_nb.bench), written to OUT_DIR. Logs go to OUT_DIR too.
set -u
OUT=${1:-bench/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pytest -q tests/test_spmm.py tests/test_spmm_gpu.py tests/test_tiled_csl.py tests/test_tiled_csl_gpu.py tests/test_ptx.py tests/test_ptx_gpu.py tests/test_prepared.py 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
# --report-api-errors no: Numba's context creation probes cuGetProcAddress for entry points this driver lacks
# (CUDA_ERROR_INVALID_VALUE, 34 host-side "errors" per run); only the kernels' memory accesses are of interest here.
for tool in memcheck racecheck; do
    "$SANITIZER" --tool "$tool" --report-api-errors no python3 tests/gpu_sanitizer_case.py > "$OUT/$tool.log" 2>&1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer case" "$OUT/$tool.log"
done
python3 -m dev.launch_cost | tee "$OUT/launch_cost.txt"
python3 -m flashllm_nb.bench --out "$OUT" "${@:2}" 2>&1 | tail -3
