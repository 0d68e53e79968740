"""How a problem is mapped onto the GPU: block width from N, split-K from the SM count and occupancy. Pure
arithmetic, checked without a GPU."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashllm_nb.kernels.launch import MIN_K_TILES_PER_SPLIT, PROLOGUE_TILES, choose_splits, plan, tile_n_for


@pytest.mark.parametrize("n,expected", [(1, 8), (8, 8), (9, 16), (16, 16), (17, 32), (32, 32), (33, 64), (256, 64)])
def test_block_width_covers_n(n, expected):
    assert tile_n_for(n) == expected


@given(blocks=st.integers(1, 5000), k_tiles=st.integers(1, 600), slots=st.integers(1, 2000))
def test_split_choice_is_the_cheapest_allowed(blocks, k_tiles, slots):
    """choose_splits returns a factor within [1, k_tiles / MIN_K_TILES_PER_SPLIT] whose estimated cost (waves x
    k-tiles per block, plus the per-block fixed cost) no other allowed factor beats."""
    s = choose_splits(blocks, k_tiles, slots)
    allowed = range(1, max(1, k_tiles // MIN_K_TILES_PER_SPLIT) + 1)
    assert s in allowed

    def cost(f):
        return -(-blocks * f // slots) * (-(-k_tiles // f) + PROLOGUE_TILES)

    assert cost(s) == min(cost(f) for f in allowed)


def test_a_grid_of_whole_waves_is_not_split():
    """Ten full waves: splitting only adds per-block fixed cost."""
    assert choose_splits(blocks=6600, k_tiles=144, slots=660) == 1


def test_a_partial_last_wave_may_be_split_away():
    """15.2 waves run as 16; split in two they run as 31 half-length waves, which the model counts as cheaper."""
    assert choose_splits(blocks=10_000, k_tiles=144, slots=660) == 2


def test_a_small_grid_is_split_to_fill_the_gpu():
    """9216 x 9216 (72 tile rows) on 132 SMs x 5 blocks: splitting K is the only way to fill the GPU."""
    assert choose_splits(blocks=72, k_tiles=144, slots=660) > 4


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
    from flashllm_nb.kernels import launch

    names = ("words", "offsets", "x", "y", "bias", "workspace", "tickets")
    arrays = tuple(_StubArray(0x1000 * (i + 1), 10 + i, 2 + (i % 3)) for i in range(len(names)))
    buffer, _, _ = launch._new_parameter_block()
    launch._pack_parameters(buffer, arrays, (72, 1, 3, 4, 5, 6, 7))
    assert buffer[launch.X_POINTER_SLOT] == arrays[2].data.ptr
    assert buffer[launch.Y_POINTER_SLOT] == arrays[3].data.ptr
    assert buffer[launch.BIAS_POINTER_SLOT] == arrays[4].data.ptr
    x = launch.X_POINTER_SLOT - 4  # meminfo, parent, nitems, itemsize, data, shape, stride
    assert list(buffer[x:x + 7]) == [0, 0, 12, 4, 0x3000, 12, 4]
    assert buffer[x + 7] == 72  # ldx follows x
    assert list(buffer[launch._N_PARAMETERS - 5:]) == [3, 4, 5, 6, 7]


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
    forced = plan(1000, n, 640, "bfloat16", "nk", mma="sync").config
    assert (forced.mma, forced.warps, forced.dtype) == ("sync", 4, "bfloat16")


def test_bad_mma_choices_are_named():
    from flashllm_nb.kernels.spmm_tiled_csl import SpmmConfig

    with pytest.raises(ValueError, match=r"Invalid mma: expected one of \('sync', 'wgmma'\) or None, got 'hmma'"):
        plan(128, 16, 64, "float16", "nk", mma="hmma")
    with pytest.raises(ValueError, match=r"mma='wgmma' needs x_layout='nk'.*got x_layout='kn'"):
        SpmmConfig(tile_n=16, x_layout="kn", mma="wgmma")
    with pytest.raises(ValueError, match=r"Invalid mma of SpmmConfig: expected one of .*got 'x'"):
        SpmmConfig(tile_n=16, mma="x")
