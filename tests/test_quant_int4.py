"""INT4 tables and float16 row scales (lpo.numerics.quant): pure numpy, against naive references."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from lpo.errors import ConfigError
from lpo.numerics import quant as Q

RNG = np.random.default_rng(4)


# ------------------------------------------------------------------ naive references
def ref_pack(q):
    """Byte j of a row: column j in the low nibble, column j + ceil(D/2) in the high one."""
    n, d = q.shape
    p = (d + 1) // 2
    out = np.zeros((n, p), np.uint8)
    for i in range(n):
        for j in range(p):
            lo = int(q[i, j])
            hi = int(q[i, j + p]) if j + p < d else 0
            out[i, j] = lo + 16 * hi
    return out


def ref_unpack(b, d):
    n, p = b.shape
    out = np.zeros((n, d), np.uint8)
    for i in range(n):
        for c in range(d):
            byte = int(b[i, c % p])
            out[i, c] = byte % 16 if c < p else byte // 16
    return out


def ref_int4_row(row):
    """One row, per_row, with python floats: base, fp16 offset (down) and scale (up), codes."""
    lo, hi = float(np.min(row)), float(np.max(row))
    peak = max(abs(lo), abs(hi))
    base = 1.0
    if peak > 0:
        exp = int(np.floor(np.log2(peak)))
        base = 2.0 ** max(exp - 14, -126)
    return lo, hi, base


# ------------------------------------------------------------------ pack / unpack
@pytest.mark.parametrize("d", [1, 2, 3, 7, 8, 15, 16, 17])
def test_pack_unpack_match_reference(d):
    q = RNG.integers(0, 16, size=(9, d)).astype(np.uint8)
    packed = Q.pack_int4(q)
    assert packed.dtype == np.uint8 and packed.shape == (9, (d + 1) // 2)
    np.testing.assert_array_equal(packed, ref_pack(q))
    np.testing.assert_array_equal(Q.unpack_int4(packed, d), q)
    np.testing.assert_array_equal(ref_unpack(packed, d), q)
    if d % 2:  # the pad nibble is zero
        assert np.all(packed[:, -1] >> 4 == 0)


def test_unpack_any_rank_and_bad_width():
    q = RNG.integers(0, 16, size=(6, 5)).astype(np.uint8)
    packed = Q.pack_int4(q).reshape(2, 3, 3)  # a [2, 3] lookup of 5-wide rows
    np.testing.assert_array_equal(Q.unpack_int4(packed, 5), q.reshape(2, 3, 5))
    with pytest.raises(ConfigError, match="packed columns"):
        Q.unpack_int4(packed, 7)


# ------------------------------------------------------------------ fp16 rounding helpers
def test_fp16_round_up_and_down():
    x = np.array([0.0, 1e-9, 2.0 ** -24, 0.1, 1.0, 1.0 + 2.0 ** -12, 65504.0, 3.3e-5], np.float64)
    up, down = Q.fp16_round_up(x), Q.fp16_round_down(x)
    assert np.all(up.astype(np.float64) >= x) and np.all(down.astype(np.float64) <= x)
    # adjacent: no float16 lies strictly between down and up
    with np.errstate(over="ignore"):
        assert np.all(np.nextafter(down, np.float16(np.inf)) >= up)
    assert up[1] == np.float16(2.0 ** -24) and down[1] == 0  # positive never rounds up to 0
    assert up[4] == 1 and down[4] == 1 and up[5] > 1 and down[5] == 1
    neg = Q.fp16_round_down(np.array([-0.1, -65504.0]))
    assert np.all(neg.astype(np.float64) <= [-0.1, -65504.0])


def test_pow2_base():
    assert Q.pow2_base(0.0) == 1.0
    for peak in (1e-30, 3e-5, 0.7, 1.0, 65504.0, 1e9, 3e38):
        b = Q.pow2_base(peak)
        assert np.frexp(b)[0] == 0.5  # a power of two
        assert 2 ** 14 <= peak / b < 2 ** 15
    assert Q.pow2_base(1e-44) == np.float32(2.0 ** -126)  # clamped to float32's smallest normal


# ------------------------------------------------------------------ INT4 numerics
@pytest.mark.parametrize("d", [1, 5, 16])
def test_int4_per_row_matches_reference(d):
    x = (RNG.standard_normal((40, d)) * RNG.uniform(0.01, 3, (40, 1))).astype(np.float32)
    x[3] = 0.25  # constant row
    x[4] = 0
    packed, s16, o16, base = Q.quantize_int4(x, "per_row")
    assert packed.shape == (40, (d + 1) // 2) and packed.dtype == np.uint8
    assert s16.dtype == o16.dtype == np.float16 and s16.shape == o16.shape == (40, 1)
    assert isinstance(base, np.float32)
    _, _, b = ref_int4_row(x)  # base is per table: the peak of all rows
    assert base == np.float32(2.0 ** (int(np.floor(np.log2(np.abs(x).max()))) - 14))
    codes = Q.unpack_int4(packed, d)
    for i in range(40):
        lo, hi = float(x[i].min()), float(x[i].max())
        o = float(o16[i, 0]) * float(base)
        s = float(s16[i, 0]) * float(base)
        assert o <= lo and (lo - o) <= abs(lo) * 2 ** -10 + 2 ** -24 * float(base)  # offset rounded down
        assert s * 15 >= hi - o  # scale rounded up: nothing clips
        for j in range(d):
            want = 0 if s == 0 else min(15, max(0, int(np.rint((float(x[i, j]) - o) / s))))
            assert codes[i, j] == want
    deq = Q.dequantize_int4(packed, d, s16, o16, base)
    want = codes.astype(np.float32) * (s16.astype(np.float32) * base) + o16.astype(np.float32) * base
    assert deq.dtype == np.float32 and deq.tobytes() == want.tobytes()
    assert np.all(np.abs(deq - x) <= Q.int4_error_bound(s16, base))
    np.testing.assert_array_equal(deq[4], 0)


@pytest.mark.parametrize("d", [1, 4, 9])
def test_int4_per_dim_matches_reference(d):
    x = RNG.standard_normal((30, d)).astype(np.float32)
    packed, scale, offset, base = Q.quantize_int4(x, "per_dim")
    assert base is None and scale.dtype == offset.dtype == np.float32 and scale.shape == (d,)
    np.testing.assert_array_equal(offset, x.min(axis=0))
    assert np.all(scale.astype(np.float64) * 15 >= x.max(axis=0).astype(np.float64) - offset)
    codes = Q.unpack_int4(packed, d)
    ref = np.clip(np.rint((x.astype(np.float64) - offset) / scale.astype(np.float64)), 0, 15)
    np.testing.assert_array_equal(codes, ref)
    assert np.all(codes.max(axis=0) == 15) and np.all(codes.min(axis=0) == 0)
    deq = Q.dequantize_int4(packed, d, scale, offset)
    assert np.all(np.abs(deq - x) <= Q.int4_error_bound(scale))


@pytest.mark.parametrize("scheme", ["per_row", "per_dim"])
def test_int4_chunking_does_not_change_bits(scheme):
    x = RNG.standard_normal((101, 7)).astype(np.float32)
    whole = Q.quantize_int4(x, scheme)
    for chunk in (1, 3, 50):
        part = Q.quantize_int4(x, scheme, chunk_rows=chunk)
        for a, b in zip(whole, part):
            assert (a is None and b is None) or np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_int4_refuses_bad_input():
    with pytest.raises(ConfigError, match="non-finite"):
        Q.quantize_int4(np.array([[1, np.nan]], np.float32), "per_row", name="emb")
    with pytest.raises(ConfigError, match="beyond what INT4"):
        Q.quantize_int4(np.array([[1e38, 0]], np.float32), "per_dim", name="emb")
    with pytest.raises(ConfigError, match="scheme"):
        Q.quantize_int4(np.ones((2, 2), np.float32), "per_tensor")
    with pytest.raises(ConfigError, match="2-D"):
        Q.quantize_int4(np.ones(3, np.float32), "per_row")


# ------------------------------------------------------------------ float16 row scales (INT8 per_row)
@pytest.mark.parametrize("magnitude", [1.0, 1e-9, 3e-6, 1e7, 1e30])
def test_int8_rows_fp16_scales_keep_fp32_accuracy(magnitude):
    """Tables far outside float16's range (scales < 2**-24 or > 65504) lose nothing: the base absorbs it."""
    x = (RNG.standard_normal((64, 8)) * magnitude).astype(np.float32)
    q, s16, base = Q.quantize_int8_rows(x)
    assert s16.dtype == np.float16 and s16.shape == (64, 1) and np.all(np.isfinite(s16))
    assert np.all(s16 > 0) and np.all(s16.astype(np.float32) < 2 ** 15)
    deq = Q.dequantize_int8_rows(q, s16, base)
    _, s32 = Q.quantize_int8(x, 0)
    # within the float32-scale bound, up to float16's relative rounding of the scale (2**-10)
    assert np.all(np.abs(deq - x) <= s32 * (0.5 + 2.0 ** -10))
    assert np.abs(q).max() == 127


def test_int8_rows_zero_rows_and_mixed_magnitudes():
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    x[1] = 0
    x[2] *= 1e-12  # 2**40 below the table's largest row: float16 subnormal territory
    q, s16, base = Q.quantize_int8_rows(x)
    deq = Q.dequantize_int8_rows(q, s16, base)
    assert s16[1, 0] == 0 and np.all(q[1] == 0) and np.all(deq[1] == 0)
    assert s16[2, 0] > 0  # never flushed to zero: rounded up to the smallest subnormal at worst
    # absolute error of the tiny row is bounded by half a float16 subnormal step times base
    assert np.all(np.abs(deq[2] - x[2]) <= 2.0 ** -25 * base + 1e-12 * 4 / 127)
    assert np.all(np.abs(deq - x) <= np.abs(x).max() / 127)


# ------------------------------------------------------------------ size rule
def test_table_bytes_and_int4_size_rule():
    assert Q.table_bytes(1000, 16, "INT4", "per_row") == 1000 * 8 + 4000 + 4
    assert Q.table_bytes(1000, 16, "INT8", "per_dim") == 16000 + 64
    assert Q.table_bytes(1000, 16, "INT8", "per_row") == 16000 + 2000 + 4
    assert Q.table_bytes(1000, 1, "INT4", "per_dim") == 1000 + 8
    assert Q.int4_layout(1000, 16) == ("INT4", "per_row")
    assert Q.int4_layout(1000, 16, "per_dim") == ("INT4", "per_dim")
    assert Q.int4_layout(10 ** 6, 4) == ("INT4", "per_dim")  # 6 bytes/row row-wise vs 4 at INT8 per_dim
    # D=1: 5 bytes/row row-wise, 1 + 8/n per_dim: never within INT8 per_dim's 1 + 4/n
    assert Q.int4_layout(10 ** 6, 1) == ("INT8", "per_dim")
    for d in range(1, 65):
        for n in (1, 3, 10, 1000, 10 ** 7):
            dtype, scheme = Q.int4_layout(n, d)
            assert Q.table_bytes(n, d, dtype, scheme) <= Q.table_bytes(n, d, "INT8", "per_dim")
            if n >= 1000:  # any real table: row-wise from D=8, per_dim INT4 below, INT8 only for D=1
                want = "per_row" if d >= 8 else "per_dim"
                assert (dtype, scheme) == (("INT4", want) if d > 1 else ("INT8", "per_dim"))


# ------------------------------------------------------------------ properties
_EXTREMES = [0.0, -0.0, 1e30, -1e30, 1e-45, -1e-45, 1.1754944e-38, 1e-40, 65504.0, -65504.0, 1.0, -1.0]


@st.composite
def _tables(draw):
    shape = draw(st.tuples(st.integers(1, 10), st.integers(1, 7)))
    elems = st.one_of(st.floats(min_value=-2.0 ** 119, max_value=2.0 ** 119, width=32, allow_nan=False),
                      st.sampled_from(_EXTREMES))
    return draw(hnp.arrays(np.float32, shape, elements=elems))


@settings(max_examples=200, deadline=None)
@given(_tables(), st.sampled_from(["per_row", "per_dim"]), st.integers(1, 4))
def test_property_int4_round_trip(x, scheme, chunk):
    packed, s, o, base = Q.quantize_int4(x, scheme, chunk_rows=chunk)
    d = x.shape[1]
    deq = Q.dequantize_int4(packed, d, s, o, base)
    assert np.all(np.isfinite(deq))
    assert np.all(np.abs(deq.astype(np.float64) - x) <= Q.int4_error_bound(s, base))
    np.testing.assert_array_equal(Q.pack_int4(Q.unpack_int4(packed, d)), packed)


@settings(max_examples=200, deadline=None)
@given(_tables(), st.integers(1, 4))
def test_property_int8_rows_round_trip(x, chunk):
    q, s16, base = Q.quantize_int8_rows(x, chunk_rows=chunk)
    deq = Q.dequantize_int8_rows(q, s16, base)
    assert np.all(np.isfinite(deq)) and np.all(np.isfinite(s16))
    assert np.all(np.abs(deq.astype(np.float64) - x) <= Q.int8_error_bound(Q.effective_scale(s16, base)))
    q2, s2, b2 = Q.quantize_int8_rows(x)
    assert q.tobytes() == q2.tobytes() and s16.tobytes() == s2.tobytes() and base == b2
