"""The lane-level emulator of mma.m16n8k16 and ldmatrix (flashllm_nb/reference/fragments.py) against the PTX ISA.

Three kinds of evidence, because a fragment table that is wrong the same way in gathering and scattering would still
multiply correctly:
- spot values read off the PTX ISA figures by hand;
- the two figures agree with each other: ``ldmatrix`` of a row-major tile with the canonical addressing yields
  exactly the ``mma`` A and B fragments (what every Tensor-Core kernel relies on);
- hypothesis: ``mma_m16n8k16`` of the fragments of A, B, C equals A @ B + C within the fp32-accumulation bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import flashllm_nb.reference.fragments as fr
from flashllm_nb.formats.tiled_csl import swizzle

_EXPONENT_MASK = {"f16": 0x7C00, "bf16": 0x7F80}


def _finite16(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Random 16-bit patterns made finite (and, for bf16, of moderate size so that sums stay in fp32 range)."""
    bits = bits.astype(np.uint16)
    if dtype == "f16":
        nonfinite = (bits & 0x7C00) == 0x7C00
        return np.where(nonfinite, bits & ~np.uint16(0x4000), bits).astype(np.uint16)
    exponent = (bits >> 7) & 0xFF
    moderate = np.where(exponent == 0, 0, 97 + exponent % 61).astype(np.uint16)  # 2**-30 .. 2**30, zeros kept
    return ((bits & 0x807F) | (moderate << 7)).astype(np.uint16)


def _matrix(draw, shape, dtype):
    return _finite16(draw(arrays(np.uint16, shape)), dtype)


# --- spot values from the PTX ISA figures ---------------------------------------------------------------------------


def test_a_fragment_matches_the_figure():
    """Figure "MMA .m16n8k16 fragment layout for matrix A": lane 0 holds a0,a1 = (0,0),(0,1), a2,a3 = (8,0),(8,1),
    a4,a5 = (0,8),(0,9), a6,a7 = (8,8),(8,9); lane 5 (group 1, thread 1) holds row 1 / 9, columns 2,3 / 10,11."""
    assert fr.A_FRAGMENT[0].tolist() == [[[0, 0], [0, 1]], [[8, 0], [8, 1]], [[0, 8], [0, 9]], [[8, 8], [8, 9]]]
    assert fr.A_FRAGMENT[5].tolist() == [[[1, 2], [1, 3]], [[9, 2], [9, 3]], [[1, 10], [1, 11]], [[9, 10], [9, 11]]]
    assert fr.A_FRAGMENT[31].tolist() == [
        [[7, 6], [7, 7]], [[15, 6], [15, 7]], [[7, 14], [7, 15]], [[15, 14], [15, 15]]
    ]


def test_b_fragment_matches_the_figure():
    """Figure "MMA .m16n8k16 fragment layout for matrix B": lane 0 holds b0,b1 = (k 0,1; n 0), b2,b3 = (k 8,9; n 0);
    lane 6 (group 1, thread 2) holds k 4,5 and 12,13 of column 1."""
    assert fr.B_FRAGMENT[0].tolist() == [[[0, 0], [1, 0]], [[8, 0], [9, 0]]]
    assert fr.B_FRAGMENT[6].tolist() == [[[4, 1], [5, 1]], [[12, 1], [13, 1]]]


def test_c_fragment_matches_the_figure():
    """Figure "MMA .m16n8k16 fragment layout for accumulator matrix C/D": lane 0 holds (0,0),(0,1),(8,0),(8,1);
    lane 30 (group 7, thread 2) holds (7,4),(7,5),(15,4),(15,5)."""
    assert fr.C_FRAGMENT[0].tolist() == [[0, 0], [0, 1], [8, 0], [8, 1]]
    assert fr.C_FRAGMENT[30].tolist() == [[7, 4], [7, 5], [15, 4], [15, 5]]


def test_every_element_is_held_exactly_once():
    for table, shape in ((fr.A_FRAGMENT, (16, 16)), (fr.B_FRAGMENT, (16, 8)), (fr.C_FRAGMENT, (16, 8))):
        flat = table.reshape(-1, 2)
        counts = np.zeros(shape, int)
        np.add.at(counts, (flat[:, 0], flat[:, 1]), 1)
        assert (counts == 1).all()


def test_ldmatrix_x1_spot_values():
    """Figure "ldmatrix fragment layout": lane l gets row l // 4, elements 2(l % 4) and 2(l % 4) + 1 (low half first);
    with .trans, column l // 4, rows 2(l % 4) and 2(l % 4) + 1."""
    memory = np.arange(64, dtype=np.uint16)  # element (r, c) of the 8 x 8 matrix is 8r + c
    rows = np.arange(32) * 8 % 64
    plain = fr.ldmatrix(memory, rows, 1, False)[:, 0]
    assert plain[0] == 0 | 1 << 16 and plain[5] == 10 | 11 << 16 and plain[31] == 62 | 63 << 16
    trans = fr.ldmatrix(memory, rows, 1, True)[:, 0]
    assert trans[0] == 0 | 8 << 16 and trans[5] == 17 | 25 << 16 and trans[31] == 55 | 63 << 16


# --- the ldmatrix and mma figures agree ------------------------------------------------------------------------------


@given(st.data())
def test_ldmatrix_x4_of_row_major_a_is_the_a_fragment(data):
    """Lane l naming row l % 16 at column 8 (l // 16) of a row-major 16 x 16 A gives a0..a3 exactly."""
    a = data.draw(arrays(np.uint16, (16, 16)))
    rows = (np.arange(32) % 16) * 16 + (np.arange(32) // 16) * 8
    np.testing.assert_array_equal(fr.ldmatrix(a, rows, 4, False), fr.fragment_a_from_matrix(a))


@given(st.data())
def test_ldmatrix_x2_trans_of_row_major_b_is_the_b_fragment(data):
    """Lane l < 16 naming row k = l of a row-major 16 x 8 B (K x N), transposed, gives b0, b1 exactly."""
    b = data.draw(arrays(np.uint16, (16, 8)))
    rows = (np.arange(32) % 16) * 8
    np.testing.assert_array_equal(fr.ldmatrix(b, rows, 2, True), fr.fragment_b_from_matrix(b))


@given(st.data())
def test_ldmatrix_x2_of_n_major_b_is_the_b_fragment(data):
    """B stored as B.T (N x K row-major, X of a linear layer): lanes 0-7 name n at k 0, lanes 8-15 n at k 8."""
    b = data.draw(arrays(np.uint16, (16, 8)))
    bt = np.ascontiguousarray(b.T)
    lane = np.arange(32)
    rows = (lane % 8) * 16 + (lane // 8 % 2) * 8
    np.testing.assert_array_equal(fr.ldmatrix(bt, rows, 2, False), fr.fragment_b_from_matrix(b))


@given(st.data(), st.sampled_from([1, 2, 4]), st.booleans())
def test_ldmatrix_matches_the_per_lane_rule(data, num, trans):
    """Any rows of any 16-byte aligned shared memory (here 32 rows of 8), restated lane by lane from the PTX text."""
    memory = data.draw(arrays(np.uint16, 32 * 8))
    picks = np.array(data.draw(st.lists(st.integers(0, 31), min_size=32, max_size=32)))
    regs = fr.ldmatrix(memory, picks * 8, num, trans)
    for j in range(num):
        matrix = memory.reshape(32, 8)[picks[8 * j : 8 * j + 8]]  # row r of matrix j comes from lane 8j + r
        for lane in range(32):
            r, c = lane // 4, 2 * (lane % 4)
            lo, hi = (matrix[c, r], matrix[c + 1, r]) if trans else (matrix[r, c], matrix[r, c + 1])
            assert regs[lane, j] == int(lo) | int(hi) << 16


def test_ldmatrix_reads_any_dtype_by_element_index():
    """Indices count elements of the array's own dtype: float32 index 4 is byte 16."""
    memory = np.arange(64, dtype=np.uint16)
    as_f32 = memory.view(np.float32)
    np.testing.assert_array_equal(
        fr.ldmatrix(as_f32, np.full(32, 4), 1, False), fr.ldmatrix(memory, np.full(32, 8), 1, False)
    )


def test_ldmatrix_refuses_misaligned_and_out_of_range_rows():
    memory = np.zeros(64, np.uint16)
    with pytest.raises(ValueError, match="lane 3"):
        fr.ldmatrix(memory, np.array([0, 8, 16, 20] + [0] * 28), 1, False)
    with pytest.raises(ValueError, match="inside 128 bytes"):
        fr.ldmatrix(memory, np.full(32, 64), 1, False)
    with pytest.raises(ValueError, match="num"):
        fr.ldmatrix(memory, np.zeros(32, int), 3, False)


# --- mma against A @ B + C ------------------------------------------------------------------------------------------


@given(st.data(), st.sampled_from(["f16", "bf16"]))
def test_mma_is_a_times_b_plus_c(data, dtype):
    """D = A @ B + C elementwise within the fp32-accumulation bound, for any finite f16/bf16 A, B and fp32 C."""
    a_bits = _matrix(data.draw, (16, 16), dtype)
    b_bits = _matrix(data.draw, (16, 8), dtype)
    c = data.draw(arrays(np.float32, (16, 8), elements=st.floats(-1e6, 1e6, width=32)))
    a_regs, b_regs = fr.fragment_a_from_matrix(a_bits), fr.fragment_b_from_matrix(b_bits)
    d_regs = fr.mma_m16n8k16(a_regs, b_regs, fr.fragment_c_from_matrix(c), dtype)
    d = fr.matrix_from_fragment_c(d_regs).astype(np.float64)
    a, b = fr.decode16(a_bits, dtype), fr.decode16(b_bits, dtype)
    reference = a @ b + c.astype(np.float64)
    assert (np.abs(d - reference) <= fr.mma_error_bound(a, b, c)).all()


def test_mma_rounds_the_exact_sum_once():
    """1 + 2**-24 (exact in float64) rounds to 1 in fp32, but 1 + 2**-24 + 2**-24 rounds to 1 + 2**-23: the emulator
    sums in float64 before rounding, so D does not depend on the order of the k terms."""
    a = np.zeros((16, 16), np.float16)
    b = np.zeros((16, 8), np.float16)
    a[0, :2] = np.float16(2.0**-12)
    b[:2, 0] = np.float16(2.0**-12)  # two products of 2**-24 in D[0, 0]
    c = np.zeros((16, 8), np.float32)
    c[0, 0] = 1.0
    d = fr.matrix_from_fragment_c(
        fr.mma_m16n8k16(fr.fragment_a_from_matrix(a), fr.fragment_b_from_matrix(b), fr.fragment_c_from_matrix(c), "f16")
    )
    assert d[0, 0] == np.float32(1 + 2.0**-23)


def test_c_fragment_round_trips():
    c = np.arange(128, dtype=np.float32).reshape(16, 8)
    np.testing.assert_array_equal(fr.matrix_from_fragment_c(fr.fragment_c_from_matrix(c)), c)


def test_decode16_reads_both_formats():
    bits = np.array([0x3C00, 0xC000, 0x7C00, 0x0001], np.uint16)
    np.testing.assert_array_equal(fr.decode16(bits, "f16"), [1.0, -2.0, np.inf, 2.0**-24])
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0x0001], np.uint16)
    np.testing.assert_array_equal(fr.decode16(bits, "bf16"), [1.0, -2.0, np.inf, 2.0**-133])
    with pytest.raises(ValueError, match="dtype"):
        fr.decode16(bits, "f32")


def test_wrong_shapes_are_named():
    with pytest.raises(ValueError, match="Invalid shape of a_regs"):
        fr.mma_m16n8k16(np.zeros((32, 2), np.uint32), np.zeros((32, 2), np.uint32), np.zeros((32, 4)), "f16")
    with pytest.raises(TypeError, match="16-bit"):
        fr.fragment_a_from_matrix(np.zeros((16, 16), np.float32))


# --- wgmma: the accumulator layout and the 128-byte swizzle --------------------------------------------------------


@pytest.mark.parametrize("n", [8, 16, 24, 64, 256])
def test_wgmma_d_fragment_holds_every_element_once(n):
    table = fr.wgmma_d_fragment(n)
    assert table.shape == (fr.WARPGROUP, n // 2, 2)
    held = np.zeros((64, n), int)
    np.add.at(held, (table[..., 0], table[..., 1]), 1)
    assert (held == 1).all()
    # The figure's spot values: thread 0 starts at D[0, 0..1], rows 8 below in registers 2-3; warp 1 at row 16;
    # lane 5 (g = 1, t = 1) at D[1, 2]; register 4 is the next n8 block.
    assert table[0, :4].tolist() == [[0, 0], [0, 1], [8, 0], [8, 1]]
    assert table[32, 0].tolist() == [16, 0] and table[5, 0].tolist() == [1, 2]
    if n >= 16:
        assert table[0, 4].tolist() == [0, 8]


def test_sw128_operand_reads_the_tiled_csl_positions():
    """A K-major operand laid out at position r * 64 + ((c // 8) ^ (r % 8)) * 8 + c % 8 (the format's swizzle) reads
    back as the matrix, k16 step ks starting 32 bytes further, the second m64 half 8192 bytes further."""
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 1 << 16, (128, 64), dtype=np.uint16)
    memory = np.zeros(128 * 64, np.uint16)
    memory[swizzle(np.arange(128 * 64))] = matrix.reshape(-1)
    for half in range(2):
        for ks in range(4):
            got = fr.sw128_k_major_operand(memory, half * 8192 + 32 * ks, 64)
            np.testing.assert_array_equal(got, matrix[64 * half:64 * half + 64, 16 * ks:16 * ks + 16])


def test_sw128_operand_refuses_a_misaligned_or_outside_start():
    memory = np.zeros(64 * 64, np.uint16)
    with pytest.raises(ValueError, match="byte_offset"):
        fr.sw128_k_major_operand(memory, 8, 64)
    with pytest.raises(ValueError, match="byte_offset"):
        fr.sw128_k_major_operand(memory, 32, 72)


@given(st.data(), st.sampled_from(["f16", "bf16"]), st.sampled_from([8, 16, 40]))
def test_wgmma_is_a_times_b_plus_c(data, dtype, n):
    a_bits = _matrix(data.draw, (64, 16), dtype)
    b_t_bits = _matrix(data.draw, (n, 16), dtype)
    c = data.draw(arrays(np.float32, (64, n), elements=st.floats(-1e6, 1e6, width=32)))
    table = fr.wgmma_d_fragment(n)
    d_regs = fr.wgmma_m64nNk16(a_bits, b_t_bits, c[table[..., 0], table[..., 1]], dtype)
    d = np.empty((64, n), np.float64)
    d[table[..., 0], table[..., 1]] = d_regs
    a, b = fr.decode16(a_bits, dtype), fr.decode16(b_t_bits, dtype).T
    assert (np.abs(d - (a @ b + c)) <= fr.mma_error_bound(a, b, c)).all()
