"""How a problem is mapped onto the GPU: block width from N, split-K from the SM count and occupancy. Pure
arithmetic, checked without a GPU."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashllm_nb.kernels.spmm.plan import (
    CLEAR_ENTRIES_TILE_N,
    CLEAR_ENTRIES_UPTO,
    ENTRIES_MID_PREFETCH_UPTO,
    ENTRIES_SMALL_PREFETCH_UPTO,
    MIN_K_TILES_PER_SPLIT,
    Force,
    PARTIAL_WAVE_FLOOR,
    PREFETCH_MORE_FROM,
    PREFETCH_MORE_TILE_N,
    PROLOGUE_TILES,
    WGMMA_CLEAR_ENTRIES_UPTO,
    choose_splits,
    clear_for,
    plan,
    prefetch_for,
    split_cost,
    stages_for,
    tile_n_for,
)


@pytest.mark.parametrize("n,expected", [(1, 8), (8, 8), (9, 16), (16, 16), (17, 32), (32, 32), (33, 64), (256, 64)])
def test_block_width_covers_n(n, expected):
    assert tile_n_for(n) == expected


@given(blocks=st.integers(1, 5000), k_tiles=st.integers(1, 600), sms=st.integers(1, 200), per_sm=st.integers(1, 8),
       tile_n=st.sampled_from([8, 16, 32, 64]), tile_vectors=st.none() | st.integers(1, 2048))
def test_split_choice_is_the_cheapest_allowed(blocks, k_tiles, sms, per_sm, tile_n, tile_vectors):
    """choose_splits returns a factor within [1, k_tiles / MIN_K_TILES_PER_SPLIT] that no other allowed factor
    beats in the estimated cost."""
    s = choose_splits(blocks, k_tiles, sms, per_sm, tile_n, tile_vectors)
    allowed = range(1, max(1, k_tiles // MIN_K_TILES_PER_SPLIT) + 1)
    assert s in allowed
    costs = [split_cost(blocks, k_tiles, sms, per_sm, f, tile_n, tile_vectors) for f in allowed]
    assert costs[s - 1] == min(costs)
    assert min(costs) not in costs[:s - 1]  # on a tie, the smaller factor (fewer partial sums)


@given(waves=st.integers(0, 5), rest=st.integers(0, 2000), sms=st.integers(1, 200), per_sm=st.integers(1, 8),
       k_tiles=st.integers(1, 600))
def test_a_partial_wave_costs_its_occupancy_between_the_floor_and_a_full_wave(waves, rest, sms, per_sm, k_tiles):
    """Unsplit, ``waves`` full waves plus ``rest`` blocks: each full wave costs per_sm block-lengths, the partial
    one its blocks per SM, never below PARTIAL_WAVE_FLOOR of a full wave and never above one."""
    rest %= sms * per_sm
    length = k_tiles + PROLOGUE_TILES
    cost = split_cost(waves * sms * per_sm + rest, k_tiles, sms, per_sm, 1, 16)
    partial = cost - waves * per_sm * length
    if rest == 0:
        assert partial == 0
    else:
        assert PARTIAL_WAVE_FLOOR * per_sm * length - 1e-9 <= partial <= per_sm * length + 1e-9
    if rest + sms < sms * per_sm:  # one more block per SM in the partial wave never makes it cheaper
        assert split_cost(waves * sms * per_sm + rest + sms, k_tiles, sms, per_sm, 1, 16) >= cost - 1e-9


@pytest.mark.parametrize("tile_n", [8, 64])
def test_partial_sums_cost_more_for_wider_and_sparser_tiles(tile_n):
    """A split block's partial tile (128 x tile_n fp32) weighs more against fewer words per k-tile: the same split
    costs more at tile_n 64 than at 8, and more for a 90 %-sparse matrix (~205 vectors per tile) than at 70 %."""
    unsplit = split_cost(72, 144, 132, 5, 1, tile_n, 615)
    assert split_cost(72, 144, 132, 5, 9, tile_n, 205) > split_cost(72, 144, 132, 5, 9, tile_n, 615)
    assert split_cost(72, 144, 132, 5, 1, tile_n, 205) == unsplit  # no partials without a split
    assert split_cost(72, 144, 132, 5, 9, 64, 410) > split_cost(72, 144, 132, 5, 9, 8, 410)


def test_a_grid_of_whole_waves_is_not_split():
    """Ten full waves: splitting only adds per-block fixed cost and partial sums."""
    assert choose_splits(blocks=6600, k_tiles=144, sms=132, blocks_per_sm=5, tile_n=16) == 1


def test_a_small_grid_is_split_to_fill_the_gpu():
    """9216 x 9216 (72 tile rows) on 132 SMs x 5 blocks: splitting K is the only way to fill the GPU."""
    assert choose_splits(blocks=72, k_tiles=144, sms=132, blocks_per_sm=5, tile_n=16) > 4


# The factors dev/split_k.py measured fastest (or within 1 %) on an H100, 132 SMs (docs/kernel-design.md,
# Split-K): what the model's constants were fitted to. Not listed, the two it misses: N = 8 FFN1 (it picks 4,
# 4 % slower than 9) and N = 32 QKV at 70 % (4, 2 % slower than 7). tile_vectors: ~410 at 80 %, ~615 at 70 %.
MEASURED_FASTEST = [
    ("FFN1 36864x9216, N=16, 80 %", 288, 144, 5, 16, 410, {4}),
    ("FFN2 9216x36864, N=16, 80 %", 72, 576, 5, 16, 410, {9}),
    ("QKV 27648x9216, N=16, 80 %", 216, 144, 5, 16, 410, {3}),
    ("out proj 9216x9216, N=16, 80 %", 72, 144, 5, 16, 410, {9}),
    ("FFN1, N=32, 80 %", 288, 144, 4, 32, 410, {5, 4}),
    ("FFN1, N=32, 70 %", 288, 144, 4, 32, 615, {5}),
    ("FFN2, N=32, 70 %", 72, 576, 4, 32, 615, {7}),
    ("out proj, N=32, 70 %", 72, 144, 4, 32, 615, {7, 5}),
    ("FFN1, N=64, 80 %", 288, 144, 3, 64, 410, {4, 3}),
    ("FFN1, N=64, 70 %", 288, 144, 3, 64, 615, {4}),
    ("QKV, N=64, 80 %", 216, 144, 3, 64, 410, {3}),
    ("QKV, N=64, 70 %", 216, 144, 3, 64, 615, {3}),
    ("FFN2, N=64, 70 %", 72, 576, 3, 64, 615, {11}),
    ("out proj, N=64, 70 %", 72, 144, 3, 64, 615, {5}),
]


@pytest.mark.parametrize("layer,tile_rows,k_tiles,blocks_per_sm,tile_n,tile_vectors,fastest", MEASURED_FASTEST,
                         ids=[case[0] for case in MEASURED_FASTEST])
def test_the_split_model_picks_the_measured_fastest_factor(layer, tile_rows, k_tiles, blocks_per_sm, tile_n,
                                                           tile_vectors, fastest):
    assert choose_splits(tile_rows, k_tiles, 132, blocks_per_sm, tile_n, tile_vectors) in fastest, layer


@pytest.mark.parametrize("warps,tile_n,tile_vectors,expected", [
    (4, 16, None, 512), (4, 16, 410, 512), (4, 16, PREFETCH_MORE_FROM, 512), (4, 16, PREFETCH_MORE_FROM + 1, 640),
    (4, 8, 2048, 640), (4, PREFETCH_MORE_TILE_N * 2, 2048, 512), (8, 16, 615, 512),
])
def test_the_larger_prefetch_goes_to_dense_matrices_on_narrow_4_warp_blocks(warps, tile_n, tile_vectors, expected):
    """80 % sparse tiles hold ~410 vectors, 70 % ~615: only the latter get the larger register buffer, and never
    an 8-warp block (its 640 / 256 threads is not whole) or a wide one (no registers to spare)."""
    assert prefetch_for(warps, tile_n, tile_vectors) == expected


@pytest.mark.sim
@given(m=st.integers(1, 5000), n=st.integers(1, 300), k=st.integers(1, 5000), split_k=st.none() | st.integers(1, 200))
def test_plan_covers_the_problem_without_empty_splits(m, n, k, split_k):
    """The grid covers every tile row, every column block and every k-tile, and no split is empty."""
    p = plan(m, n, k, "float16", "nk", split_k)
    tile_rows, n_blocks, splits = p.grid
    k_tiles = -(-k // 64)
    assert tile_rows * 128 >= m and n_blocks * p.config.tile_n >= n
    assert splits * p.k_tiles_per_split >= k_tiles
    assert (splits - 1) * p.k_tiles_per_split < k_tiles
    assert p.config.splits == (splits > 1)
    if split_k is not None:
        assert splits <= split_k


class _StubArray:
    """What _pack_parameters reads of a CuPy array: size, itemsize and data.ptr."""

    def __init__(self, ptr, size, itemsize):
        self.size, self.itemsize = size, itemsize
        self.data = type("Pointer", (), {"ptr": ptr})()


def test_pointer_slots_name_x_y_and_bias_in_the_packed_block():
    """The fast path of repeated calls patches X's, the output's and the bias's pointers in place: the slot
    constants must be where _pack_parameters writes those pointers, and each array's slots Numba's ABI order."""
    from flashllm_nb.kernels.spmm import driver

    names = ("words", "offsets", "x", "y", "bias", "workspace", "tickets")
    arrays = tuple(_StubArray(0x1000 * (i + 1), 10 + i, 2 + (i % 3)) for i in range(len(names)))
    buffer, _, _ = driver._new_parameter_block()
    driver._pack_parameters(buffer, arrays, (72, 1, 3, 4, 5, 6, 7))
    assert buffer[driver.X_POINTER_SLOT] == arrays[2].data.ptr
    assert buffer[driver.Y_POINTER_SLOT] == arrays[3].data.ptr
    assert buffer[driver.BIAS_POINTER_SLOT] == arrays[4].data.ptr
    x = driver.X_POINTER_SLOT - 4  # meminfo, parent, nitems, itemsize, data, shape, stride
    assert list(buffer[x:x + 7]) == [0, 0, 12, 4, 0x3000, 12, 4]
    assert buffer[x + 7] == 72  # ldx follows x
    assert list(buffer[driver._N_PARAMETERS - 5:]) == [3, 4, 5, 6, 7]


@pytest.mark.sim
@pytest.mark.parametrize("n, warps", [(1, 4), (16, 4), (17, 8), (64, 8), (200, 8)])
def test_linear_takes_wgmma_on_the_simulated_hopper_and_spmm_mma_sync(n, warps):
    """The simulator plays a compute-capability-9.0 GPU: "nk" (linear) plans wgmma, 8 warps from tile_n 32 on;
    "kn" (spmm, an N-major operand wgmma cannot take as laid out) plans mma.sync with 4 warps."""
    from flashllm_nb.kernels import ptx

    assert ptx.SIMULATOR
    nk = plan(1000, n, 640, "float16", "nk").config
    assert (nk.mma, nk.warps) == ("wgmma", warps)
    kn = plan(1000, n, 640, "float16", "kn").config
    assert (kn.mma, kn.warps) == ("sync", 4)
    forced = plan(1000, n, 640, "bfloat16", "nk", force=Force(mma="sync")).config
    assert (forced.mma, forced.warps, forced.dtype) == ("sync", 4, "bfloat16")


def test_bad_mma_choices_are_named():
    from flashllm_nb.kernels.spmm.config import SpmmConfig

    with pytest.raises(ValueError, match=r"Invalid mma: expected one of \('sync', 'wgmma'\) or None, got 'hmma'"):
        Force(mma="hmma")
    with pytest.raises(ValueError, match=r"mma='wgmma' needs x_layout='nk'.*got x_layout='kn'"):
        SpmmConfig(tile_n=16, x_layout="kn", mma="wgmma")
    with pytest.raises(ValueError, match=r"Invalid mma of SpmmConfig: expected one of .*got 'x'"):
        SpmmConfig(tile_n=16, mma="x")


def test_plan_gives_dense_matrices_the_larger_prefetch_on_narrow_blocks():
    """``tile_vectors`` (A's mean stored vectors per tile) reaches the configuration; 64-wide blocks (8 warps on
    Hopper's wgmma path, 4 elsewhere) keep 512. Forced split_k: no occupancy query, so no compilation on a GPU."""
    assert plan(1000, 16, 640, "float16", "nk", split_k=1, tile_vectors=615).config.prefetch_vectors == 640
    assert plan(1000, 16, 640, "float16", "nk", split_k=1, tile_vectors=410).config.prefetch_vectors == 512
    assert plan(1000, 16, 640, "float16", "kn", split_k=1, tile_vectors=615).config.prefetch_vectors == 640
    assert plan(1000, 64, 640, "float16", "nk", split_k=1, tile_vectors=615).config.prefetch_vectors == 512


@pytest.mark.parametrize("warps,prefetch", [(4, 600), (8, 640), (8, 384), (4, 0)])
def test_bad_prefetch_choices_are_named(warps, prefetch):
    from flashllm_nb.kernels.spmm.config import SpmmConfig

    expected = (rf"Invalid prefetch_vectors of SpmmConfig: expected one of \(256, 384, 512, 640\) and a multiple "
                rf"of the {32 * warps} threads of {warps} warps, got {prefetch}")
    with pytest.raises(ValueError, match=expected):
        SpmmConfig(tile_n=64, warps=warps, prefetch_vectors=prefetch)


_CLEAR_CASES = [
    (4, 16, 205, "entries", 256), (4, 8, 246, "entries", 256), (4, 16, ENTRIES_SMALL_PREFETCH_UPTO, "entries", 256),
    (4, 16, ENTRIES_SMALL_PREFETCH_UPTO + 1, "entries", 384), (4, 16, ENTRIES_MID_PREFETCH_UPTO, "entries", 384),
    (4, 16, CLEAR_ENTRIES_UPTO, "entries", 384),
    (4, 16, 0, "entries", 256), (4, 16, None, "rows", 512), (4, CLEAR_ENTRIES_TILE_N * 2, 205, "rows", 512),
    (8, 16, 205, "rows", 512),
]


@pytest.mark.parametrize("mma", ["sync", "wgmma"])
@pytest.mark.parametrize("warps,tile_n,tile_vectors,clear,prefetch", _CLEAR_CASES)
def test_sparse_matrices_on_narrow_4_warp_blocks_clear_by_entries(mma, warps, tile_n, tile_vectors, clear, prefetch):
    """90 % sparse tiles hold ~205 vectors, 88 % ~246, 85 % ~307: those get clear="entries" with the register
    buffer that holds most of them (256 up to 248 on average, else 384 up to 336; 512 beyond, on the wgmma path
    only: see the next test), on either Tensor-Core path; 8-warp and wide blocks, and unknown densities, keep
    "rows" (measured slower with 8 warps)."""
    assert clear_for(mma, warps, tile_n, tile_vectors) == clear
    assert prefetch_for(warps, tile_n, tile_vectors, clear) == prefetch


@pytest.mark.parametrize("mma,tile_n,tile_vectors,clear,prefetch", [
    ("wgmma", 16, ENTRIES_MID_PREFETCH_UPTO + 1, "entries", 512), ("wgmma", 8, 410, "entries", 512),
    ("wgmma", 16, WGMMA_CLEAR_ENTRIES_UPTO, "entries", 512), ("wgmma", 16, WGMMA_CLEAR_ENTRIES_UPTO + 1, "rows", 640),
    ("sync", 16, CLEAR_ENTRIES_UPTO + 1, "rows", 512), ("sync", 8, 410, "rows", 512),
])
def test_wgmma_blocks_clear_by_entries_down_to_77_percent(mma, tile_n, tile_vectors, clear, prefetch):
    """The wgmma path zeroes first (spmm.tiled_csl), which measured faster than clearing rows down to 77 % sparse
    (471 vectors; 80 %: 410) with the 512-vector buffer; mma.sync blocks keep "rows" from 337 vectors on."""
    assert WGMMA_CLEAR_ENTRIES_UPTO < 512
    assert clear_for(mma, 4, tile_n, tile_vectors) == clear
    assert prefetch_for(4, tile_n, tile_vectors, clear) == prefetch


def test_plan_passes_the_clearing_on():
    assert plan(1000, 16, 640, "float16", "nk", split_k=1, tile_vectors=205).config.clear == "entries"
    assert plan(1000, 16, 640, "float16", "kn", split_k=2, tile_vectors=205).config.prefetch_vectors == 256
    assert plan(1000, 16, 640, "float16", "nk", split_k=1, tile_vectors=410,
                force=Force(mma="sync")).config.clear == "rows"
    config = plan(1000, 16, 640, "float16", "nk", split_k=1, tile_vectors=410, force=Force(mma="wgmma")).config
    assert (config.clear, config.prefetch_vectors, config.stages) == ("entries", 512, 4)


@pytest.mark.parametrize("mma,warps,tile_n,clear,prefetch,stages", [
    ("wgmma", 4, 16, "entries", 256, 2), ("wgmma", 4, 16, "entries", 384, 4), ("wgmma", 4, 8, "entries", 256, 4),
    ("sync", 4, 16, "entries", 256, 4), ("wgmma", 4, 16, "rows", 512, 4), ("wgmma", 8, 16, "entries", 256, 4),
])
def test_two_activation_stages_only_where_a_sixth_block_fits_and_was_measured(mma, warps, tile_n, clear, prefetch,
                                                                              stages):
    assert stages_for(mma, warps, tile_n, clear, prefetch) == stages


def test_forced_warps_decide_the_stages_too():
    """Eight forced warps on a configuration that would get two stages with four: four stages, no refusal."""
    config = plan(4096, 16, 4096, "float16", "nk", tile_vectors=200, force=Force(warps=8, clear="entries")).config
    assert (config.warps, config.clear, config.prefetch_vectors, config.stages) == (8, "entries", 256, 4)


def test_plan_passes_the_stages_on_and_they_fit_six_blocks():
    """A 90 %-sparse matrix at N = 16 on the wgmma path (forced, so that the test means the same on any device):
    entries, 256 vectors, 2 stages, and a block's shared memory (k-tiles of a 9216-wide layer split 3 ways) small
    enough for 6 blocks on a 228 KB SM (1 KB reserved per block)."""
    config = plan(1000, 16, 9216, "float16", "nk", split_k=3, tile_vectors=205, force=Force(mma="wgmma")).config
    assert (config.mma, config.clear, config.prefetch_vectors, config.stages) == ("wgmma", "entries", 256, 2)
    assert config.launch_bounds == (128, 6)
    assert 6 * (config.shared_bytes(48) + 1024) <= 228 * 1024
    assert plan(1000, 16, 9216, "float16", "nk", split_k=3, tile_vectors=205,
                force=Force(mma="sync")).config.stages == 4
    assert plan(1000, 16, 9216, "float16", "kn", split_k=3, tile_vectors=205).config.stages == 4
    assert plan(1000, 16, 9216, "float16", "nk", split_k=3, tile_vectors=410,
                force=Force(mma="wgmma")).config.stages == 4


@pytest.mark.parametrize("changes", [dict(clear="rows", prefetch_vectors=512), dict(prefetch_vectors=384),
                                     dict(tile_n=8), dict(warps=8), dict(mma="sync")])
def test_two_stages_outside_what_was_built_are_refused(changes):
    from flashllm_nb.kernels.spmm.config import SpmmConfig

    config = dict(tile_n=16, warps=4, mma="wgmma", clear="entries", prefetch_vectors=256, stages=2)
    assert SpmmConfig(**config).launch_bounds == (128, 6)
    with pytest.raises(ValueError, match=r"stages=2 is built only with mma='wgmma', warps=4, tile_n=16, "
                                         r"clear='entries' and prefetch_vectors=256"):
        SpmmConfig(**(config | changes))


def test_bad_stages_are_named():
    from flashllm_nb.kernels.spmm.config import SpmmConfig

    with pytest.raises(ValueError, match=r"Invalid stages of SpmmConfig: expected one of \(2, 4\), got 3"):
        SpmmConfig(tile_n=16, stages=3)


def test_bad_clear_is_named():
    from flashllm_nb.kernels.spmm.config import SpmmConfig

    expected = r"Invalid clear of SpmmConfig: expected one of \('rows', 'entries'\), got 'none'"
    with pytest.raises(ValueError, match=expected):
        SpmmConfig(tile_n=16, clear="none")


def test_bad_ticket_is_named_and_the_plan_builds_acq_rel_unless_forced():
    from flashllm_nb.kernels.spmm.config import SpmmConfig

    expected = r"Invalid ticket of SpmmConfig: expected one of \('fences', 'acq_rel'\), got 'atomic'"
    with pytest.raises(ValueError, match=expected):
        SpmmConfig(tile_n=16, ticket="atomic")
    assert plan(1000, 16, 64 * 40, "float16", "nk", split_k=5).config.ticket == "acq_rel"
    assert plan(1000, 16, 64 * 40, "float16", "nk", split_k=5, force=Force(ticket="fences")).config.ticket == "fences"


def test_force_fixes_each_choice_and_refuses_what_is_not_built():
    """Force replaces a decision, field by field; the rest are decided as usual; SpmmConfig refuses a variant the
    kernel is not built for. Plans are cached per force (a forced plan never answers an unforced call)."""
    free = plan(1000, 16, 640, "float16", "nk", split_k=1, tile_vectors=410).config
    forced = plan(1000, 16, 640, "float16", "nk", split_k=1, tile_vectors=410,
                  force=Force(mma="sync", clear="entries", prefetch_vectors=384)).config
    assert (forced.mma, forced.clear, forced.prefetch_vectors, forced.warps) == ("sync", "entries", 384, 4)
    assert free == plan(1000, 16, 640, "float16", "nk", split_k=1, tile_vectors=410).config != forced
    assert plan(1000, 64, 640, "float16", "nk", force=Force(mma="wgmma", warps=4)).config.warps == 4
    assert plan(1000, 16, 64 * 40, "float16", "nk", force=Force(split_k=5)).splits == 5
    assert plan(1000, 16, 64 * 40, "float16", "nk", split_k=2, force=Force(split_k=5)).splits == 2  # argument first
    with pytest.raises(ValueError, match="stages=2 is built only with"):
        plan(1000, 16, 640, "float16", "nk", force=Force(mma="sync", stages=2))


def test_shared_bytes_for_at_most_finds_the_least_padding_that_caps_the_blocks():
    """Against an occupancy model of a Hopper SM (228 KiB of shared memory, 1 KiB reserved a block, at most 6
    blocks by registers), the padding is the least number of bytes with at most the asked blocks resident, and
    none when the kernel already needs enough."""
    from flashllm_nb.kernels.spmm.plan import shared_bytes_for_at_most

    def resident(shared_bytes):
        return min(6, 228 * 1024 // (shared_bytes + 1024))

    limit = 227 * 1024
    for cap in (1, 2, 3, 4, 5):
        padded = shared_bytes_for_at_most(cap, 37_000, resident, limit)
        assert resident(padded) <= cap < resident(padded - 1), (cap, padded)
    assert shared_bytes_for_at_most(6, 37_000, resident, limit) == 37_000
    assert shared_bytes_for_at_most(4, 60_000, resident, limit) == 60_000  # 3 resident already
    assert shared_bytes_for_at_most(1, 100, lambda b: 2, limit) == limit  # nothing caps it: the most there is


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_bad_blocks_per_sm_is_named(bad):
    with pytest.raises(ValueError, match=r"Invalid blocks_per_sm: expected an integer >= 1 or None"):
        Force(blocks_per_sm=bad)


def test_blocks_per_sm_cap_reaches_the_plan():
    """The capped plan asks for at least the shared memory its configuration needs and leaves at most 4 blocks an
    SM; under the simulator, whose occupancy calculator says one block, it is the uncapped plan."""
    from flashllm_nb.kernels import ptx
    from flashllm_nb.kernels.spmm import driver

    capped = plan(1000, 16, 64 * 40, "float16", "nk", force=Force(blocks_per_sm=4))
    assert capped.shared_bytes >= capped.config.shared_bytes(capped.k_tiles_per_split)
    assert driver.blocks_per_sm(capped.config, capped.shared_bytes) <= 4
    if ptx.SIMULATOR:
        free = plan(1000, 16, 64 * 40, "float16", "nk")
        assert (capped.config, capped.grid, capped.shared_bytes) == (free.config, free.grid, free.shared_bytes)


@given(units=st.integers(1, 20_000), data=st.data())
def test_stream_k_ranges_partition_the_k_tiles_equally(units, data):
    """``stream_k.block_range`` cuts the k-tile sequence into contiguous ranges, in block order, whose lengths
    differ by one at most, and ``block_of`` names the block whose range holds each unit."""
    from flashllm_nb.kernels.spmm import stream_k

    blocks = data.draw(st.integers(1, min(units, 1000)), label="blocks")
    ranges = [stream_k.block_range(b, blocks, units) for b in range(blocks)]
    assert ranges[0][0] == 0 and ranges[-1][1] == units
    assert all(ranges[b][1] == ranges[b + 1][0] for b in range(blocks - 1))
    lengths = {end - first for first, end in ranges}
    assert lengths <= {units // blocks, -(-units // blocks)}, lengths
    for unit in data.draw(st.lists(st.integers(0, units - 1), min_size=1, max_size=50), label="units"):
        b = stream_k.block_of(unit, blocks, units)
        assert ranges[b][0] <= unit < ranges[b][1], (unit, b, ranges[b])


@given(tile_rows=st.integers(1, 300), k_tiles=st.integers(1, 500), data=st.data())
def test_stream_k_passes_take_distinct_slots_and_cover_each_tile_once(tile_rows, k_tiles, data):
    """The kernel's bookkeeping for a stream-K grid of at least a block per tile row (what the plan builds),
    replayed in Python with the same functions: each block makes one pass or two, one per tile row its range meets;
    a tile row's passes are its sharers (from the block of its first k-tile to its last's, ``count`` of them, the
    pass's ``index`` among them) and cover its k-tiles exactly once; no two passes share a workspace slot (block +
    tile row), which is below the plan's ``partial_tiles``."""
    from flashllm_nb.kernels.spmm import stream_k

    units = tile_rows * k_tiles
    blocks = data.draw(st.integers(tile_rows, max(tile_rows, min(units, 2000))), label="blocks")
    covered = [[] for _ in range(tile_rows)]
    slots = set()
    for b in range(blocks):
        first, end = stream_k.block_range(b, blocks, units)
        tile_row = stream_k.tile_row_of(first, k_tiles)
        row_end = (tile_row + 1) * k_tiles
        passes = [(tile_row, first, min(end, row_end))] + ([(tile_row + 1, row_end, end)] if end > row_end else [])
        assert all(end_ <= (row + 1) * k_tiles for row, _, end_ in passes), "a range meets three tile rows"
        for row, pass_first, pass_end in passes:
            sharer_first = stream_k.block_of(row * k_tiles, blocks, units)
            count = stream_k.block_of(row * k_tiles + k_tiles - 1, blocks, units) - sharer_first + 1
            assert 0 <= b - sharer_first < count
            covered[row].append((b - sharer_first, count, pass_first, pass_end))
            slot = sharer_first + row + (b - sharer_first)
            assert slot not in slots and slot < blocks + tile_rows
            slots.add(slot)
    for row, passes in enumerate(covered):
        passes.sort()
        assert [index for index, _, _, _ in passes] == list(range(len(passes)))
        assert {count for _, count, _, _ in passes} == {len(passes)}
        assert passes[0][2] == row * k_tiles and passes[-1][3] == (row + 1) * k_tiles
        assert all(passes[i][3] == passes[i + 1][2] for i in range(len(passes) - 1))


def test_stream_k_blocks_fill_every_slot_within_the_work():
    from flashllm_nb.kernels.spmm.plan import stream_k_blocks

    assert stream_k_blocks(6272, 1, 132, 5) == 660  # OPT-30B's 7168 x 7168: every slot of an H100
    assert stream_k_blocks(6272, 2, 132, 5) == 330  # two column blocks share the slots
    assert stream_k_blocks(100, 1, 132, 5) == 100 // MIN_K_TILES_PER_SPLIT  # no block below the minimum
    assert stream_k_blocks(3, 1, 132, 5) == 1
    assert stream_k_blocks(6272, 8, 4, 1) == 1


@pytest.mark.parametrize("m, k, n", [(7168, 7168, 1), (28672, 7168, 16), (1000, 64, 2), (300, 640, 70), (130, 1, 1)])
def test_forced_stream_k_plan(m, k, n):
    """``Force(stream_k=True)``: a stream-K configuration (with the fix-up), a grid of ``stream_k_blocks`` from the
    kernel's own occupancy but at least a block per tile row, a block's longest pass, and shared memory sized for a
    whole tile row of offsets; the workspace holds a slot per (block, tile row) pair."""
    from flashllm_nb.kernels.spmm import driver
    from flashllm_nb.kernels.spmm.plan import multiprocessors, stream_k_blocks

    p = plan(m, n, k, "float16", "nk", tile_vectors=410, force=Force(stream_k=True))
    tile_rows, k_tiles, columns = -(-m // 128), -(-k // 64), -(-n // 64) if n > 64 else 1
    assert p.config.stream_k and p.config.splits and p.tile_rows == tile_rows
    resident = driver.blocks_per_sm(p.config, p.shared_bytes)
    blocks = max(stream_k_blocks(tile_rows * k_tiles, columns, multiprocessors(), resident), tile_rows)
    assert p.grid == (blocks, columns, 1) and p.splits == 1
    assert p.k_tiles_per_split == min(k_tiles, -(-tile_rows * k_tiles // blocks))
    assert p.shared_bytes == p.config.shared_bytes(k_tiles)
    assert p.tickets == tile_rows * columns and p.partial_tiles == (blocks + tile_rows) * columns
    assert not plan(m, n, k, "float16", "nk", tile_vectors=410).config.stream_k  # never unless forced


def test_stream_k_refuses_what_it_cannot_build():
    from flashllm_nb.kernels.spmm.config import SpmmConfig

    with pytest.raises(ValueError, match="stream_k=True shares the k-tiles by blocks, not by a split-K factor"):
        Force(stream_k=True, split_k=2)
    with pytest.raises(ValueError, match="Invalid split_k of plan: Force\\(stream_k=True\\)"):
        plan(1000, 16, 640, "float16", "nk", split_k=2, force=Force(stream_k=True))
    with pytest.raises(ValueError, match="stream_k=True sums output tiles that several blocks share"):
        SpmmConfig(tile_n=8, stream_k=True)
    with pytest.raises(ValueError, match="exceed the kernel's 32-bit index arithmetic"):
        plan(128 * 2048, 1, 64 * 1024, "float16", "nk", force=Force(stream_k=True))


def test_timeline_plan_keeps_the_grid_and_the_padding():
    """``driver.timeline_plan`` changes the kernel to its timeline variant and nothing else: a plan padded by
    ``Force.blocks_per_sm`` keeps its padding, so that a timeline shows the capped placement it is asked about."""
    import dataclasses

    from flashllm_nb.kernels.spmm import driver

    p = plan(1000, 16, 64 * 40, "float16", "nk", force=Force(stream_k=True))
    padded = dataclasses.replace(p, min_shared_bytes=p.shared_bytes + 12_345)
    timed = driver.timeline_plan(padded)
    assert timed.config == dataclasses.replace(p.config, timeline=True)
    assert (timed.grid, timed.k_tiles_per_split, timed.tile_rows, timed.shared_bytes) == \
        (padded.grid, padded.k_tiles_per_split, padded.tile_rows, padded.shared_bytes)


def test_default_force_reaches_plans_without_their_own():
    """``set_default_force`` (bench-e2e's --stream-k) reaches every plan whose caller gives no force, not one that
    does, and is undone by setting the previous one back."""
    from flashllm_nb.kernels.spmm.plan import set_default_force

    previous = set_default_force(Force(stream_k=True))
    try:
        assert plan(7168, 1, 7168, "float16", "nk", tile_vectors=410).config.stream_k
        assert not plan(7168, 1, 7168, "float16", "nk", tile_vectors=410, force=Force(mma="sync")).config.stream_k
    finally:
        assert set_default_force(previous) == Force(stream_k=True)
    assert not plan(7168, 1, 7168, "float16", "nk", tile_vectors=410).config.stream_k
    with pytest.raises(TypeError, match="Invalid default force: expected a flashllm_nb.kernels.spmm.plan.Force"):
        set_default_force({"stream_k": True})
