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
    packed, s16, o16, base = Q.quantize_int4(x, "per_row", search=False)
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
    packed, scale, offset, base = Q.quantize_int4(x, "per_dim", search=False)
    assert base is None and scale.dtype == offset.dtype == np.float32 and scale.shape == (d,)
    np.testing.assert_array_equal(offset, x.min(axis=0))
    assert np.all(scale.astype(np.float64) * 15 >= x.max(axis=0).astype(np.float64) - offset)
    codes = Q.unpack_int4(packed, d)
    ref = np.clip(np.rint((x.astype(np.float64) - offset) / scale.astype(np.float64)), 0, 15)
    np.testing.assert_array_equal(codes, ref)
    assert np.all(codes.max(axis=0) == 15) and np.all(codes.min(axis=0) == 0)
    deq = Q.dequantize_int4(packed, d, scale, offset)
    assert np.all(np.abs(deq - x) <= Q.int4_error_bound(scale))


@pytest.mark.parametrize("search", [True, False])
@pytest.mark.parametrize("scheme", ["per_row", "per_dim"])
def test_int4_chunking_does_not_change_bits(scheme, search):
    x = RNG.standard_t(3, (101, 7)).astype(np.float32)
    whole = Q.quantize_int4(x, scheme, search=search)
    for chunk in (1, 3, 50):
        part = Q.quantize_int4(x, scheme, chunk_rows=chunk, search=search)
        for a, b in zip(whole, part):
            assert (a is None and b is None) or np.asarray(a).tobytes() == np.asarray(b).tobytes()


def _sq_err(x, scheme, search):
    """Squared error of each row (per_row) or column (per_dim) of the dequantized table."""
    packed, s, o, base = Q.quantize_int4(x, scheme, search=search)
    e = (Q.dequantize_int4(packed, x.shape[1], s, o, base).astype(np.float64) - x) ** 2
    return e.sum(axis=1 if scheme == "per_row" else 0)


def _tables_of_every_shape():
    rng = np.random.default_rng(7)
    yield "normal", rng.standard_normal((600, 16))
    yield "uniform", rng.uniform(-1, 1, (600, 16))
    yield "student-t3", rng.standard_t(3, (600, 16))
    yield "student-t2", rng.standard_t(2, (600, 8))
    yield "row magnitudes", rng.standard_normal((600, 32)) * rng.lognormal(0, 1, (600, 1))
    yield "one outlier a row", np.where(rng.random((600, 12)) < 1 / 12, 20.0, rng.standard_normal((600, 12)))


@pytest.mark.parametrize("scheme", ["per_row", "per_dim"])
@pytest.mark.parametrize("label,x", list(_tables_of_every_shape()), ids=lambda v: v if isinstance(v, str) else "")
def test_int4_range_search_never_loses_to_min_max(scheme, label, x):
    """FBGEMM's greedy range search: every row (per_row) or column (per_dim) reconstructs with no more
    squared error than min/max, and the table with clearly less (ratios measured: 0.2-0.9)."""
    x = x.astype(np.float32)
    searched, minmax = _sq_err(x, scheme, True), _sq_err(x, scheme, False)
    assert np.all(searched <= minmax)
    assert searched.sum() < 0.95 * minmax.sum()


def test_int4_range_search_matches_a_per_row_reference():
    """A row searched alone (python loop, FBGEMM's algorithm written out) gets the same range."""
    x = RNG.standard_t(3, (12, 10)).astype(np.float32)
    _, s16, o16, base = Q.quantize_int4(x, "per_row")
    b = float(base)
    for i, row in enumerate(x.astype(np.float64)):
        def loss(lo, hi):
            o = float(Q.fp16_round_down(np.array(lo / b))) * b
            s = float(Q.fp16_round_up(np.array(max(hi / b - o / b, 0.0) / 15))) * b
            q = np.clip(np.rint((row - o) / s), 0, 15) if s > 0 else np.zeros_like(row)
            r = (q.astype(np.float32) * np.float32(s) + np.float32(o)).astype(np.float64)
            return float(np.sum((r - row) ** 2))
        lo, hi = row.min(), row.max()
        step = (hi - lo) / 200
        best, best_range, i_up, j_down = loss(lo, hi), (lo, hi), 0, 0
        for _ in range(32):
            up = loss(lo + (i_up + 1) * step, hi - j_down * step)
            down = loss(lo + i_up * step, hi - (j_down + 1) * step)
            i_up, j_down = (i_up + 1, j_down) if up < down else (i_up, j_down + 1)
            if min(up, down) < best:
                best, best_range = min(up, down), (lo + i_up * step, hi - j_down * step)
        want_o = Q.fp16_round_down(np.array(best_range[0] / b))
        assert o16[i, 0] == want_o


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
    assert Q.table_bytes(1000, 16, "INT4", "per_row_sym") == 1000 * 8 + 2000 + 4
    assert Q.table_bytes(1000, 16, "INT4", "per_row_sym8") == 1000 * 9 + 4
    assert Q.int4_layout(1000, 16) == ("INT4", "per_row_sym8")  # row-wise: 0.75 of INT8 per_dim, over 0.7
    assert Q.int4_layout(1000, 16, max_ratio=1.0) == ("INT4", "per_row")
    assert Q.int4_layout(1000, 20) == ("INT4", "per_row")  # 14 bytes a row against 20 at INT8
    assert Q.int4_layout(1000, 8) == ("INT4", "per_row_sym8")  # 5 bytes a row: 0.62 of INT8's
    assert Q.int4_layout(1000, 5) == ("INT4", "per_dim")  # row-wise 4 bytes a row: 0.8; per_dim 0.61
    assert Q.int4_layout(1000, 16, "per_dim") == ("INT4", "per_dim")
    assert Q.int4_layout(10 ** 6, 4) == ("INT4", "per_dim")  # 6 bytes/row row-wise vs 4 at INT8 per_dim
    # D=1: 5 bytes/row row-wise, 1 + 8/n per_dim: never within INT8 per_dim's 1 + 4/n
    assert Q.int4_layout(10 ** 6, 1) == ("INT8", "per_dim")
    for d in range(1, 65):
        for n in (1, 3, 10, 1000, 10 ** 7):
            dtype, scheme = Q.int4_layout(n, d)
            int8 = Q.table_bytes(n, d, "INT8", "per_dim")
            assert Q.table_bytes(n, d, dtype, scheme) <= (0.7 * int8 if dtype == "INT4" else int8)
            if n >= 1000:  # any real table: the most accurate INT4 scheme within 0.7, INT8 only for D=1
                fits = [x for x in ("per_row", "per_row_sym8", "per_dim")
                        if Q.table_bytes(n, d, "INT4", x) <= 0.7 * int8]
                assert fits or d == 1
                assert (dtype, scheme) == (("INT4", fits[0]) if d > 1 else ("INT8", "per_dim"))


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
    packed, s, o, base = Q.quantize_int4(x, scheme, chunk_rows=chunk, search=False)
    d = x.shape[1]
    deq = Q.dequantize_int4(packed, d, s, o, base)
    assert np.all(np.isfinite(deq))
    assert np.all(np.abs(deq.astype(np.float64) - x) <= Q.int4_error_bound(s, base))
    np.testing.assert_array_equal(Q.pack_int4(Q.unpack_int4(packed, d)), packed)
    # the range search: finite, and never more squared error per row / column than min/max
    with np.errstate(over="ignore"):
        searched, minmax = _sq_err(x, scheme, True), _sq_err(x, scheme, False)
    packed, s, o, base = Q.quantize_int4(x, scheme, chunk_rows=chunk)
    assert np.all(np.isfinite(Q.dequantize_int4(packed, d, s, o, base)))
    assert np.all(searched <= minmax)


@settings(max_examples=200, deadline=None)
@given(_tables(), st.integers(1, 4))
def test_property_int8_rows_round_trip(x, chunk):
    q, s16, base = Q.quantize_int8_rows(x, chunk_rows=chunk)
    deq = Q.dequantize_int8_rows(q, s16, base)
    assert np.all(np.isfinite(deq)) and np.all(np.isfinite(s16))
    assert np.all(np.abs(deq.astype(np.float64) - x) <= Q.int8_error_bound(Q.effective_scale(s16, base)))
    q2, s2, b2 = Q.quantize_int8_rows(x)
    assert q.tobytes() == q2.tobytes() and s16.tobytes() == s2.tobytes() and base == b2


# ------------------------------------------------------------------ symmetric INT4 rows (INT4:per_row_sym)
def test_int4_sym_matches_reference():
    x = (RNG.standard_normal((30, 7)) * RNG.uniform(0.01, 3, (30, 1))).astype(np.float32)
    x[2] = 0
    packed, s16, base = Q.quantize_int4_sym(x, search=False)
    assert packed.shape == (30, 4) and s16.dtype == np.float16 and s16.shape == (30, 1)
    codes = Q.unpack_int4(packed, 7)
    s = s16.astype(np.float64) * float(base)
    assert np.all(s * 7 >= np.abs(x).max(axis=1, keepdims=True))  # scale rounded up: nothing clips
    safe = np.where(s > 0, s, 1)
    np.testing.assert_array_equal(codes, np.clip(np.rint(x / safe), -7, 7) + 8)
    assert np.all(codes[2] == 8) and s16[2, 0] == 0
    deq = Q.dequantize_int4_sym(packed, 7, s16, base)
    want = (codes.astype(np.float32) - np.float32(8)) * (s16.astype(np.float32) * base)
    assert deq.tobytes() == want.tobytes() and np.all(deq[2] == 0)
    assert np.all(np.abs(deq - x) <= Q.int4_error_bound(s16, base))


@pytest.mark.parametrize("label,x", list(_tables_of_every_shape()), ids=lambda v: v if isinstance(v, str) else "")
def test_int4_sym_search_never_loses_to_max_and_chunks_change_nothing(label, x):
    x = x.astype(np.float32)
    d = x.shape[1]

    def err(search, chunk=None):
        packed, s16, base = Q.quantize_int4_sym(x, search=search, chunk_rows=chunk)
        return ((Q.dequantize_int4_sym(packed, d, s16, base).astype(np.float64) - x) ** 2).sum(axis=1), packed

    searched, packed = err(True)
    plain, _ = err(False)
    assert np.all(searched <= plain) and searched.sum() < plain.sum()
    assert err(True, 7)[1].tobytes() == packed.tobytes()
