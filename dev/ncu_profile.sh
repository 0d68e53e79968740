#!/bin/bash
# Nsight Compute profile of the SpMM kernel on one linear() product (its third launch), with per-SASS stall samples:
#   bash dev/ncu_profile.sh M K N SPARSITY [OUT_DIR] [FORMAT]    e.g. bash dev/ncu_profile.sh 36864 9216 16 0.8
# FORMAT is the matrix's class: TiledCSL (the default) or TiledBitmap.
# Writes OUT_DIR/details.txt (all sections) and OUT_DIR/source.csv (SASS with stall reasons and shared wavefronts).
set -eu
M=$1 K=$2 N=$3 S=$4 OUT=${5:-bench/out} FORMAT=${6:-TiledCSL}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu | head -1)
"$NCU" -k regex:spmm --launch-skip 2 --launch-count 1 --set full --import-source no --clock-control none -o "$OUT/prof" -f \
    python3 -c "
import cupy as cp, flashllm_nb as fl
rng = cp.random.default_rng(0)
W = rng.standard_normal(($M, $K), dtype=cp.float32).astype(cp.float16)
W[rng.random(($M, $K), dtype=cp.float32) < $S] = 0
A = fl.$FORMAT.from_dense(W)
X = rng.standard_normal(($N, $K), dtype=cp.float32).astype(cp.float16)
Y = fl.linear(X, A)
for _ in range(3):
    fl.linear(X, A, out=Y)
cp.cuda.Device().synchronize()
" > "$OUT/ncu_run.log" 2>&1
"$NCU" --import "$OUT/prof.ncu-rep" --page details > "$OUT/details.txt"
"$NCU" --import "$OUT/prof.ncu-rep" --page source --csv --print-source sass > "$OUT/source.csv"
grep -E "Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|DRAM Throughput|L1/TEX Cache Throughput|Eligible" \
    "$OUT/details.txt"
