"""The in-tile word order against a balanced one: same matrices, same process, cuBLAS beside.

    python -m dev.word_order_ab [N ...]          (default N = 16 8; 90 and 80 %, the four OPT-66B layers)

The kernel's scatter stores word s of 32 consecutive vectors per warp instruction (a "column"); values in one
shared-memory bank but different 4-byte words cost a wavefront each. The format deals each tile's entries round-robin
over the banks (``formats.tiled_csl.layout.layout_sorted``): about 1.6 values per bank per store at 90 %. This tool
re-deals every tile's words greedily, column by column, each column taking one entry from as many banks as it can and
more only from the banks with the most left (words move only inside their tile, padding stays in its last vector,
``TiledCSL._from_parts`` skips the canonical-order check), counts the stores' wavefronts of both orders, checks that
both give the same product bit for bit, and times both (``flashllm_nb.bench.timing.time_batched``, two rounds, the
faster kept). The same order serves the clearing by entries, which stores zeros at the same positions in the same
columns.
"""
import math
import sys

import numba
import numpy as np

import flashllm_nb as fl


@numba.njit(cache=False)
def store_wavefronts(words, offsets):
    """The scatter's shared-memory wavefronts over all tiles: per store column, its largest bank multiplicity."""
    total = 0
    for t in range(offsets.size - 2):
        v0, v1 = offsets[t], offsets[t + 1]
        V = v1 - v0
        if V == 0:
            continue
        for b in range((V + 31) // 32):
            lanes = min(32, V - 32 * b)
            for s in range(4):
                cnt = np.zeros(32, np.int64)
                for l in range(lanes):
                    w = words[4 * (v0 + 32 * b + l) + s]
                    if (w & 0xFFFF) != 0:
                        cnt[(w >> 17) & 31] += 1
                total += cnt.max()
    return total


@numba.njit(cache=False)
def balanced_order(words, offsets):
    """The words re-dealt tile by tile: each store column (block of 32 vectors, word s) takes at most m entries of
    a bank, m as small as the banks' remaining entries allow, the extra ones from the banks with the most left."""
    out = words.copy()
    for t in range(offsets.size - 2):
        v0, v1 = offsets[t], offsets[t + 1]
        V = v1 - v0
        if V == 0:
            continue
        base = 4 * v0
        rem = np.zeros(32, np.int64)  # entries per bank not yet placed (padding words, value 0, left out)
        for i in range(4 * V):
            w = words[base + i]
            if (w & 0xFFFF) != 0:
                rem[(w >> 17) & 31] += 1
        n = rem.sum()
        holes = 4 * V - n
        start = np.zeros(33, np.int64)
        for b in range(32):
            start[b + 1] = start[b] + rem[b]
        fill = start[:32].copy()
        by_bank = np.empty(n, np.uint32)
        for i in range(4 * V):
            w = words[base + i]
            if (w & 0xFFFF) != 0:
                bk = (w >> 17) & 31
                by_bank[fill[bk]] = w
                fill[bk] += 1
        nxt = start[:32].copy()  # next unused entry of each bank
        for blk in range((V + 31) // 32):
            lanes = min(32, V - 32 * blk)
            last_block = blk == (V - 1) // 32
            for s in range(4):
                size = lanes
                if last_block and s >= 4 - holes:
                    size -= 1  # the last vector's slot s is padding
                # smallest m with sum(min(rem, m)) >= size
                m = 1
                while True:
                    tot = 0
                    for b in range(32):
                        tot += min(rem[b], m)
                    if tot >= size:
                        break
                    m += 1
                take = np.zeros(32, np.int64)
                got = 0
                for b in range(32):
                    take[b] = min(rem[b], m - 1)
                    got += take[b]
                while got < size:  # one more from the bank with the most left
                    best, bv = -1, -1
                    for b in range(32):
                        if take[b] < m and rem[b] - take[b] > 0 and rem[b] - take[b] > bv:
                            best, bv = b, rem[b] - take[b]
                    take[best] += 1
                    got += 1
                l = 0
                for b in range(32):
                    for _ in range(take[b]):
                        out[base + 4 * (32 * blk + l) + s] = by_bank[nxt[b]]
                        nxt[b] += 1
                        l += 1
                    rem[b] -= take[b]
    return out


def relaid(A):
    """(A with its words in the balanced order, on A's device; the scatter's wavefronts before; after). Host
    (NumPy) or device (CuPy) A; the reordering runs on the host."""
    on_device = not isinstance(A.words, np.ndarray)
    words = A.words.get() if on_device else A.words
    offsets = (A.tile_offsets.get() if on_device else A.tile_offsets).astype(np.int64)
    new = balanced_order(words, offsets)
    assert np.array_equal(np.sort(new), np.sort(words)), "the balanced order lost or invented words"
    before, after = store_wavefronts(words, offsets), store_wavefronts(new, offsets)
    if on_device:
        import cupy as cp

        new = cp.asarray(new)
    return fl.TiledCSL._from_parts(new, A.tile_offsets, A.shape, A.dtype, A.nnz), before, after


def main():
    import cupy as cp

    from dev.kernel_dev import OPT66B, pruned_copies

    from flashllm_nb.bench.timing import copy_bandwidth, geometric_mean, time_batched

    def fastest_of_two_rounds(*variants):
        """Each variant's faster time over two rounds, the variants timed in turn within a round."""
        rounds = [[time_batched(calls) for calls in variants] for _ in range(2)]
        return [min(times) for times in zip(*rounds)]

    ns = [int(a) for a in sys.argv[1:]] or [16, 8]
    rng = cp.random.default_rng(0)
    print(f"copy bandwidth {copy_bandwidth():.0f} GB/s")
    for sparsity in (0.9, 0.8):
        res = {(n, key): [] for n in ns for key in ("cublas", "deal", "balanced")}
        for m, k in OPT66B:
            dense = (rng.standard_normal((m, k), dtype=cp.float32) * 0.05).astype(cp.float16)
            copies = pruned_copies(rng, dense, sparsity)
            rel = [relaid(A) for A in copies]
            c0 = sum(r[1] for r in rel)
            c1 = sum(r[2] for r in rel)
            l2 = cp.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
            ws = [cp.array(dense) for _ in range(max(2, math.ceil(3 * l2 / dense.nbytes)))]  # cuBLAS's rotation
            for n in ns:
                x = (rng.standard_normal((n, k), dtype=cp.float32)).astype(cp.float16)
                ys = [cp.empty((n, m), cp.float16) for _ in copies]
                y2 = [cp.empty((n, m), cp.float16) for _ in copies]
                for i, (A, (B, _, _)) in enumerate(zip(copies, rel)):
                    fl.linear(x, A, out=ys[i])
                    fl.linear(x, B, out=y2[i])
                    assert cp.array_equal(ys[i], y2[i]), "relaid words give another product"
                t_cub = time_batched([lambda w=w: x @ w.T for w in ws])
                t0, t1 = fastest_of_two_rounds(
                    [lambda A=A, y=y: fl.linear(x, A, out=y) for A, y in zip(copies, ys)],
                    [lambda B=B, y=y: fl.linear(x, B, out=y) for (B, _, _), y in zip(rel, y2)])
                res[(n, "cublas")].append(t_cub)
                res[(n, "deal")].append(t0)
                res[(n, "balanced")].append(t1)
                print(f"N={n} {sparsity:.0%} {m}x{k}: store wavefronts {c0 / c1:.3f}x fewer; "
                      f"cuBLAS {t_cub * 1e3:.1f} us  deal {t0 * 1e3:.1f} ({t_cub / t0:.3f}x)  balanced {t1 * 1e3:.1f} ({t_cub / t1:.3f}x)",
                      flush=True)
            del copies, rel, ws, dense
            cp.get_default_memory_pool().free_all_blocks()
        for n in ns:
            deal, balanced = (geometric_mean(np.array(res[(n, "cublas")]) / np.array(res[(n, key)]))
                              for key in ("deal", "balanced"))
            print(f"GEOMEAN N={n} {sparsity:.0%}: deal {deal:.3f}x  balanced {balanced:.3f}x", flush=True)


if __name__ == "__main__":
    main()
