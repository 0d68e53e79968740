#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): install the carried wheels, then run the named steps, each logged
# under $OUT. Steps: tests-llm, tests-spmm (the kernel's own tests), tests-kernel (those, the format's and the PTX
# layer's), tests-torch, profile, profile-hf (a transformers decode step by kernel, dense and sparsified, the sparse
# products captured as dependents and not), profile-hf-layers (the sparsified step at 24 layers), profile-hf-full (all
# 48, dense and sparsified; profile-hf-full-sparse the sparsified alone; profile-hf-eager: 8 layers, eager),
# profile-pairs (where kernels meet, batch 16), bench-smoke, bench-smoke-ordinary, bench-smoke-at (bench-smoke of the
# package at an earlier commit), bench-opt66b-80, bench-opt66b, bench-opt30b, bench-hf-sparse, bench-hf-matrix
# (transformers eager and compiled, dense and sparsified, issue 24's rows; or in three calls, bench-hf-compiled (80 %),
# bench-hf-compiled-90 and bench-hf-eager; bench-hf-eager-80 its 80 % half), bench-hf-stacking (compiled at 80 %,
# batch 1: the siblings stacked and not, beside dense), bench-hf-llama (the same A/B on Llama-2-13B: q, k, v and
# gate, up stacked), load-speed,
# bench-llama70b, bench-kernel (the kernel against cuBLAS),
# split-k (the plan's split-K factor against forced ones, the decoders' shapes at one token), split-k-fixed (7168 rows
# at one token against K, split 1 and 9: what a launch costs beyond its bytes), block-timeline (per-block timelines of
# queued launches on three of those shapes), graph-issue (what a captured step holds and how long its launch takes,
# dense and sparse), kernel-vs-commit (today's kernel, built with griddepcontrol or not, beside an earlier commit's),
# ticket-ab (the split-K ticket as one acquire-release add against the two fences, timed beside cuBLAS and as
# timelines), blocks-ab (at most 4 resident blocks an SM against the plan's occupancy: even placement of a
# dependent launch's blocks), stream-ab (stream-K against the plan's split-K, timed beside cuBLAS and as
# timelines), bench-hf-stream and bench-hf-cap4 (bench-hf-stacked's rows with every sparse product stream-K, or
# at most 4 blocks an SM: run beside bench-hf-stacked), bitmap-ab (Tiled-Bitmap against Tiled-CSL and cuBLAS on
# OPT-30B's decode shapes), bench-hf-bitmap (bench-hf-stacking's rows with Tiled-Bitmap weights instead of
# unstacked ones), bench-hf-stacked (dense and stacked only, batch 1), tests-bitmap; on two
# GPUs (kind nvidia-h100-x2): tests-parallel, bench-tp2, bench-opt175b-tp2. The two steps with an
# earlier commit need `python -m dev.kernel_vs_commit extract COMMIT` run here first and .scratch/kernel_at carried.
# Usage (from the repository root, wheels in .whl/): bash dev/device_run.sh tests-llm bench-smoke
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee "$OUT/gpu.txt"
bench() { local limit=$1; shift; timeout "$limit" python3 -m flashllm_nb.cli bench-e2e "$@"; }
for step in "$@"; do
  echo "=== $step ($(date -u +%H:%M:%S))"
  case $step in
    tests-llm) timeout 330 python3 -m pytest -v -p no:cacheprovider -o faulthandler_timeout=120 --durations=12 \
                 tests/test_llm_gpu.py tests/test_llm.py 2>&1 | tee "$OUT/tests-llm.log" | tail -60 ;;
    tests-spmm) timeout 420 python3 -m pytest -q -p no:cacheprovider -x tests/test_ptx_gpu.py tests/test_spmm.py \
                  tests/test_spmm_gpu.py tests/test_prepared.py 2>&1 | tee "$OUT/tests-spmm.log" | tail -15 ;;
    tests-kernel) timeout 420 python3 -m pytest -q -p no:cacheprovider -x tests/test_tiled_csl.py tests/test_tiled_csl_gpu.py tests/test_prepared.py tests/test_ptx.py tests/test_spmm.py \
                    tests/test_spmm_gpu.py tests/test_ptx_gpu.py 2>&1 | tee "$OUT/tests-kernel.log" | tail -15 ;;
    bench-smoke) bench 300 --model opt-66b --sparsity 0.8 --batch 1 16 --new 128 --out "$OUT" \
                   2>&1 | tee "$OUT/bench-smoke.log" | tail -12 ;;
    bench-smoke-at) PYTHONPATH=/tmp/site:$PWD/.scratch/kernel_at:$PWD timeout 300 python3 -m flashllm_at.cli bench-e2e \
                      --model opt-66b --sparsity 0.8 --batch 1 16 --new 128 --out "$OUT/at" \
                      2>&1 | tee "$OUT/bench-smoke-at.log" | tail -12 ;;
    bench-smoke-ordinary) bench 300 --model opt-66b --sparsity 0.8 --batch 1 16 --new 128 --ordinary-launches \
                            --out "$OUT" 2>&1 | tee "$OUT/bench-smoke-ordinary.log" | tail -12 ;;
    bench-opt66b-80) bench 170 --model opt-66b --sparsity 0.8 --batch 1 16 --out "$OUT" \
                       2>&1 | tee "$OUT/bench-opt66b-80.log" | tail -12 ;;
    bench-opt66b) bench 540 --model opt-66b --sparsity 0.7 0.8 0.9 --batch 1 8 16 32 64 --out "$OUT" \
                    2>&1 | tee "$OUT/bench-opt66b.log" | tail -25 ;;
    bench-opt30b) bench 540 --model opt-30b --sparsity 0 0.8 0.9 --batch 1 16 --hf --hf-new 128 \
                    --out "$OUT" 2>&1 | tee "$OUT/bench-opt30b.log" | tail -25 ;;
    profile) timeout 240 python3 dev/profile_e2e.py --model opt-66b --layers 8 --sparsity 0.8 --batch 1 16 \
               2>&1 | tee "$OUT/profile.log" ;;
    profile-pairs) timeout 300 python3 dev/profile_e2e.py --model opt-66b --layers 8 --sparsity 0.8 --batch 16 \
                     --pairs 2>&1 | tee "$OUT/profile-pairs.log" ;;
    profile-hf) timeout 300 python3 dev/profile_hf.py --model opt-30b --layers 8 --sparsity 0 0.8 --batch 1 \
                  2>&1 | tee "$OUT/profile-hf.log" | grep -v "^ *$" | tail -80
                timeout 200 python3 dev/profile_hf.py --model opt-30b --layers 8 --sparsity 0.8 --batch 1 \
                  --ordinary-launches 2>&1 | tee "$OUT/profile-hf-ordinary.log" | grep -v "^ *$" | tail -40 ;;
    profile-hf-layers) timeout 300 python3 dev/profile_hf.py --model opt-30b --layers 24 --sparsity 0.8 --batch 1 \
                         2>&1 | tee "$OUT/profile-hf-layers.log" | grep -v "^ *$" | tail -40 ;;
    profile-hf-full) timeout 420 python3 dev/profile_hf.py --model opt-30b --layers 48 --sparsity 0 0.8 --batch 1 \
                       2>&1 | tee "$OUT/profile-hf-full.log" | grep -v "^ *$" | tail -40 ;;
    profile-hf-full-sparse) timeout 300 python3 dev/profile_hf.py --model opt-30b --layers 48 --sparsity 0.8 \
                              --batch 1 2>&1 | tee "$OUT/profile-hf-full-sparse.log" | grep -v "^ *$" | tail -40 ;;
    profile-hf-eager) timeout 240 python3 dev/profile_hf.py --model opt-30b --layers 8 --sparsity 0 0.8 --batch 1 \
                        --eager 2>&1 | tee "$OUT/profile-hf-eager.log" ;;
    tests-torch) timeout 300 python3 -m pytest -v -p no:cacheprovider -o faulthandler_timeout=120 --durations=8 \
                   tests/test_torch.py tests/test_torch_siblings.py tests/test_tile_rows.py 2>&1 \
                   | tee "$OUT/tests-torch.log" | tail -40
                 timeout 60 python3 dev/torch_host_cost.py 2>&1 | tee "$OUT/torch-host.log" ;;
    bench-hf-sparse) bench 240 --model opt-30b --sparsity 0.8 --batch 1 --hf-compile --hf-sparse \
                       --hf-new 128 --new 128 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-sparse.log" | tail -25 ;;
    bench-hf-matrix) bench 590 --model opt-30b --sparsity 0.8 0.9 --batch 1 16 --hf --hf-compile --hf-sparse \
                       --hf-new 64 --new 64 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-matrix.log" | tail -40 ;;
    bench-hf-compiled) bench 450 --model opt-30b --sparsity 0.8 --batch 1 16 --hf-compile --hf-sparse \
                         --hf-new 64 --new 64 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-compiled.log" | tail -30 ;;
    bench-hf-stacked) bench 300 --model opt-30b --sparsity 0.8 --batch 1 --hf-compile --hf-sparse --hf-new 64 \
                        --new 64 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-stacked.log" | tail -30 ;;
    bench-hf-stream) bench 300 --model opt-30b --sparsity 0.8 --batch 1 --hf-compile --hf-sparse --hf-new 64 \
                       --new 64 --stream-k --out "$OUT" 2>&1 | tee "$OUT/bench-hf-stream.log" | tail -30 ;;
    bench-hf-cap4) bench 300 --model opt-30b --sparsity 0.8 --batch 1 --hf-compile --hf-sparse --hf-new 64 \
                     --new 64 --blocks-per-sm 4 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-cap4.log" | tail -30 ;;
    bench-hf-compiled-90) bench 450 --model opt-30b --sparsity 0.9 --batch 1 16 --hf-compile --hf-sparse \
                            --hf-new 64 --new 64 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-compiled-90.log" | tail -30 ;;
    bench-hf-stacking) bench 580 --model opt-30b --sparsity 0.8 --batch 1 --hf-compile --hf-sparse --hf-unstacked \
                         --hf-new 64 --new 64 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-stacking.log" | tail -30 ;;
    bench-hf-llama) bench 540 --model llama-2-13b --sparsity 0.8 --batch 1 --hf-compile --hf-sparse --hf-unstacked \
                      --hf-new 64 --new 64 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-llama.log" | tail -30 ;;
    bench-hf-eager-80) bench 300 --model opt-30b --sparsity 0.8 --batch 1 16 --hf --hf-sparse \
                         --hf-new 32 --new 32 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-eager-80.log" | tail -30 ;;
    bench-hf-eager) bench 480 --model opt-30b --sparsity 0.8 0.9 --batch 1 16 --hf --hf-sparse \
                      --hf-new 32 --new 32 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-eager.log" | tail -30 ;;
    tests-parallel) timeout 300 python3 -m pytest -v -p no:cacheprovider tests/test_parallel_gpu.py \
                      2>&1 | tee "$OUT/tests-parallel.log" | tail -20 ;;
    bench-tp2) bench 560 --model opt-66b --sparsity 0.8 --batch 1 16 --tp 2 --new 128 --out "$OUT" \
                 2>&1 | tee "$OUT/bench-tp2.log" | tail -20 ;;
    bench-opt175b-tp2) bench 560 --model opt-175b --sparsity 0.8 --batch 8 --tp 2 --out "$OUT" \
                         2>&1 | tee "$OUT/bench-opt175b-tp2.log" | tail -20 ;;
    load-speed) timeout 300 python3 dev/load_speed.py --model opt-6.7b --sparsity 0.8 2>&1 | tee "$OUT/load.log" ;;
    bench-llama70b) bench 300 --model llama-2-70b --sparsity 0.8 --batch 1 16 --new 128 --out "$OUT" \
                      2>&1 | tee "$OUT/bench-llama70b.log" | tail -12 ;;
    bench-kernel) timeout 400 python3 -m flashllm_nb.bench --providers cublas,flashllm_tiled_csl --n 16 8 32 64 \
                    --sparsity 0.7 0.8 0.9 --out "$OUT" 2>&1 | tee "$OUT/bench-kernel.log" | tail -30 ;;
    kernel-vs-commit) timeout 420 python3 -m dev.kernel_vs_commit time 8 16 32 64 --sparsities 0.7,0.8,0.9 \
                        --force dependent=0,upto=64 2>&1 | tee "$OUT/kernel-vs-commit.log" | tail -30 ;;
    split-k) for shape in "7168 7168" "21504 7168" "9216 9216" "7168 28672" "28672 7168"; do  # OPT-30B/66B, 1 token
               timeout 100 python3 -m dev.split_k $shape 1 0.8 1 2 3 4 5 6 8 10 12 2>&1 | tee -a "$OUT/split-k.log"
             done ;;
    split-k-fixed) for k in 576 1152 2304 4608 7168; do  # 7168 rows, 1 token: time against K, the fixed cost
                     timeout 60 python3 -m dev.split_k 7168 $k 1 0.8 1 9 2>&1 | tee -a "$OUT/split-k-fixed.log"
                   done ;;
    block-timeline) for shape in "7168 7168" "7168 576" "28672 7168"; do  # OPT-30B's decode shapes at one token
                      timeout 120 python3 -m dev.block_timeline $shape 1 0.8 --out "$OUT" 2>&1 \
                        | tee -a "$OUT/block-timeline.log"
                    done ;;
    ticket-ab) timeout 420 python3 -m dev.kernel_ab 1 8 16 --variant plan --variant fences:ticket=fences \
                 --check fences --sparsities 0.8,0.9 --shapes 7168x7168,7168x28672,28672x7168,9216x9216 2>&1 \
                 | tee "$OUT/ticket-ab.log" | tail -30
               for ticket in fences acq_rel; do  # where the split-K end goes, each way
                 timeout 60 python3 -m dev.block_timeline 7168 7168 1 0.8 --ticket $ticket --out "$OUT" 2>&1 \
                   | tee -a "$OUT/ticket-ab.log"
               done ;;
    blocks-ab) timeout 420 python3 -m dev.kernel_ab 1 16 --variant plan --variant cap4:blocks=4 --check cap4 \
                 --sparsities 0.8,0.9 --shapes 7168x7168,21504x7168,28672x7168,7168x28672,9216x9216 2>&1 \
                 | tee "$OUT/blocks-ab.log" | tail -30
               for cap in "" 4; do  # where a dependent launch's blocks land, each way
                 timeout 60 python3 -m dev.block_timeline 7168 7168 1 0.8 ${cap:+--blocks-per-sm $cap} --out "$OUT" \
                   2>&1 | tee -a "$OUT/blocks-ab.log"
               done ;;
    stream-ab) timeout 480 python3 -m dev.kernel_ab 1 16 --variant plan --variant stream:stream=1 --check stream \
                 --sparsities 0.8,0.9 --shapes 7168x7168,21504x7168,28672x7168,7168x28672,9216x9216 2>&1 \
                 | tee "$OUT/stream-ab.log" | tail -30
               for mode in "" --stream-k; do  # where the blocks land and when their k-tiles end, each way
                 timeout 60 python3 -m dev.block_timeline 7168 7168 1 0.8 $mode --out "$OUT" 2>&1 \
                   | tee -a "$OUT/stream-ab.log"
               done ;;
    bitmap-ab) timeout 560 python3 -m dev.kernel_ab 1 16 --variant plan --variant bitmap:format=bitmap \
                 --sparsities 0.8,0.9,0.7 --shapes 7168x7168,21504x7168,28672x7168,7168x28672 2>&1 \
                 | tee "$OUT/bitmap-ab.log" | tail -40 ;;
    bench-hf-bitmap) bench 580 --model opt-30b --sparsity 0.8 --batch 1 --hf-compile --hf-sparse --hf-bitmap \
                       --hf-new 64 --new 64 --out "$OUT" 2>&1 | tee "$OUT/bench-hf-bitmap.log" | tail -30 ;;
    tests-bitmap) timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/test_tiled_bitmap.py 2>&1 \
                    | tee "$OUT/tests-bitmap.log" | tail -15 ;;
    graph-issue) timeout 300 python3 -m dev.graph_issue --model opt-30b --layers 8 --sparsity 0 0.8 --batch 1 16 \
                   2>&1 | tee "$OUT/graph-issue.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
