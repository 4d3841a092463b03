"""Tests for lpo.numerics.quant (numpy numerics); TF only where comparing against TF ops."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from lpo.numerics import quant as Q
from lpo.errors import ConfigError

RNG = np.random.default_rng(1234)


def _within(x, xr, bound):
    return np.all(np.abs(xr.astype(np.float64) - x.astype(np.float64)) <= bound)


# ------------------------------------------------------------------ int8
@pytest.mark.parametrize("axis,scale_shape", [(1, (16,)), (0, (300, 1)), (None, ())])
def test_int8_round_trip_shapes_and_bound(axis, scale_shape):
    x = (RNG.standard_normal((300, 16)) * RNG.uniform(0.01, 100, 16)).astype(np.float32)
    q, s = Q.quantize_int8(x, axis)
    assert q.dtype == np.int8 and q.shape == x.shape
    assert s.dtype == np.float32 and s.shape == scale_shape
    assert np.abs(q).max() <= 127
    d = Q.dequantize_int8(q, s)
    assert d.dtype == np.float32
    assert _within(x, d, np.broadcast_to(Q.int8_error_bound(s), x.shape))
    # the max-abs element of each slice maps to +-127
    assert np.abs(q).max() == 127


def test_int8_per_channel_transposed_weight():
    w = RNG.standard_normal((32, 8)).astype(np.float32)  # [K, N]
    q, s = Q.quantize_int8(w, 1)
    qt, st_ = Q.quantize_int8(np.ascontiguousarray(w.T), 0)  # [N, K]
    assert s.shape == (8,) and st_.shape == (8, 1)
    np.testing.assert_array_equal(s, st_[:, 0])
    np.testing.assert_array_equal(q, qt.T)


def test_int8_zero_and_constant_columns():
    x = RNG.standard_normal((50, 6)).astype(np.float32)
    x[:, 0] = 0
    x[:, 1] = -2.5
    x[3] = 0
    for axis in (0, 1):
        q, s = Q.quantize_int8(x, axis)
        d = Q.dequantize_int8(q, s)
        assert np.all(np.isfinite(d))
    q, s = Q.quantize_int8(x, 1)
    assert s[0] == 0 and np.all(q[:, 0] == 0)
    rows = np.arange(50) != 3
    assert np.all(q[rows, 1] == -127) and q[3, 1] == 0
    np.testing.assert_array_equal(Q.dequantize_int8(q, s)[rows, 1],
                                  np.float32(np.float32(2.5) / np.float32(127)) * -127)
    q, s = Q.quantize_int8(np.zeros((4, 3), np.float32), 0)
    assert np.all(s == 0) and np.all(q == 0)


def test_int8_negative_values_and_half_even():
    x = np.array([[-127.0, -2.5, -1.5, 0.5, 1.5, 2.5]], np.float32)
    q, s = Q.quantize_int8(x, 0)
    assert s[0, 0] == 1.0
    np.testing.assert_array_equal(q[0], [-127, -2, -2, 0, 2, 2])


@pytest.mark.parametrize("axis", [0, 1, None])
@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_int8_chunked_equals_unchunked(axis, chunk):
    x = RNG.standard_normal((257, 9)).astype(np.float32)
    q0, s0 = Q.quantize_int8(x, axis, chunk_rows=10 ** 9)
    q1, s1 = Q.quantize_int8(x, axis, chunk_rows=chunk)
    np.testing.assert_array_equal(q0, q1)
    np.testing.assert_array_equal(s0, s1)
    assert s0.tobytes() == s1.tobytes()


def test_int8_3d_and_1d():
    x = RNG.standard_normal((5, 4, 3)).astype(np.float32)
    q, s = Q.quantize_int8(x, 1)
    assert s.shape == (1, 4, 1)
    assert _within(x, Q.dequantize_int8(q, s), Q.int8_error_bound(s))
    q, s = Q.quantize_int8(x, -1)
    assert s.shape == (3,)
    v = RNG.standard_normal(10).astype(np.float32)
    q, s = Q.quantize_int8(v, 0)
    assert s.shape == (10,) and np.all(np.abs(q) == 127)


def test_int8_refuses_nonfinite_and_bad_axis():
    x = np.ones((3, 3), np.float32)
    x[1, 1] = np.nan
    x[2, 2] = np.inf
    with pytest.raises(ConfigError, match=r"emb/table.*1 NaN, 1 Inf"):
        Q.quantize_int8(x, 1, name="emb/table")
    with pytest.raises(ConfigError, match="axis"):
        Q.quantize_int8(np.ones((2, 2), np.float32), 2)


def test_check_finite_and_fp16_range():
    Q.check_finite(np.ones(3, np.float32), "w")
    with pytest.raises(ConfigError, match=r"'dense/kernel'.*2 NaN"):
        Q.check_finite(np.array([np.nan, 1, np.nan], np.float32), "dense/kernel")
    Q.check_fp16_range(np.array([65504.0, -65504.0], np.float32), "w")
    with pytest.raises(ConfigError, match=r"'big'.*float16"):
        Q.check_fp16_range(np.array([1.0, -70000.0], np.float32), "big")


# ------------------------------------------------------------------ bf16 / fp16
def test_bf16_rounding_known_values():
    x = np.array([1.0, 1.00390625, 1.01171875, -1.00390625, np.inf, -np.inf, np.nan,
                  3.4028235e38, 0.0, -0.0], np.float32)
    bits = Q.to_bf16_bits(x)
    assert bits.dtype == np.uint16
    # ties to even: 1 + 2^-8 -> 1.0 ; 1 + 3*2^-8 -> 1 + 2^-6
    assert list(bits[:4]) == [0x3F80, 0x3F80, 0x3F82, 0xBF80]
    assert bits[4] == 0x7F80 and bits[5] == 0xFF80 and bits[6] == 0x7FC0
    assert bits[7] == 0x7F80  # rounds past bf16 max -> inf
    assert bits[8] == 0 and bits[9] == 0x8000
    back = Q.bf16_to_f32(bits)
    assert np.isnan(back[6]) and back.dtype == np.float32
    b = Q.to_bf16(x)
    assert b.dtype.name == "bfloat16"
    np.testing.assert_array_equal(Q.bf16_to_f32(b).view(np.uint32), back.view(np.uint32))


def test_bf16_fp16_relative_bounds():
    x = (RNG.standard_normal(5000) * 10.0 ** RNG.uniform(-8, 4, 5000)).astype(np.float32)
    assert _within(x, Q.bf16_to_f32(Q.to_bf16_bits(x)), Q.error_bound("bf16", x))
    y = Q.to_fp16(x)
    assert y.dtype == np.float16
    assert _within(x, y.astype(np.float32), Q.error_bound("fp16", x))
    assert np.isinf(Q.to_fp16(np.array([65520.0], np.float32)))[0]
    assert Q.to_fp16(np.array([65510.0], np.float32))[0] == 65504
    with pytest.raises(ConfigError):
        Q.error_bound("int4", x)


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


def test_bf16_bits_match_tf_cast(tf):
    rng = np.random.default_rng(7)
    # every 2^16-th pattern plus random patterns: all exponents, ties, denormals, inf
    pats = np.concatenate([
        np.arange(0, 2 ** 32, 2 ** 16 - 1, dtype=np.uint64).astype(np.uint32),
        rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32),
        (rng.integers(0, 2 ** 16, 20_000).astype(np.uint32) << 16) | 0x8000,  # exact ties
        (rng.integers(0, 2 ** 16, 20_000).astype(np.uint32) << 16) | 0x7FFF]).astype(np.uint32)
    x = pats.view(np.float32)
    ours = Q.to_bf16_bits(x)
    theirs = tf.bitcast(tf.cast(tf.constant(x), tf.bfloat16), tf.uint16).numpy()
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    # TF's NaN sign bit depends on its vectorization; NaN-ness must agree
    assert np.all(np.isnan(Q.bf16_to_f32(theirs[nan])))
    assert np.all(ours[nan] == 0x7FC0)


@pytest.mark.parametrize("lo,hi", [(-6.0, 6.0), (0.0, 1.0), (-0.3, 7.7), (-1e-3, 5.0),
                                   (-10.0, 0.01), (0.0, 255.0), (-2.5, 3.3), (-0.01, 0.02)])
def test_fake_quant_matches_tf(tf, lo, hi):
    x = np.concatenate([np.linspace(lo - 1, hi + 1, 20001),
                        RNG.uniform(lo, hi, 5000)]).astype(np.float32)
    theirs = tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8,
                                                          narrow_range=False).numpy()
    ours = Q.fake_quant(x, lo, hi)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    nmin, nmax, scale, zp = Q.quantize_activation_params(lo, hi)
    assert nmin <= 0 <= nmax and 0 <= zp <= 255
    assert theirs.min() >= nmin and theirs.max() <= nmax
    assert Q.fake_quant(np.zeros(3, np.float32), lo, hi).tolist() == [0, 0, 0]


def test_activation_params_reject_bad_range():
    for lo, hi in [(1.0, 1.0), (2.0, 1.0), (0.0, np.inf)]:
        with pytest.raises(ConfigError):
            Q.quantize_activation_params(lo, hi)


def test_quant_module_does_not_import_tensorflow():
    import subprocess
    import sys
    code = ("import sys; import lpo.numerics.quant as q; import numpy as np; "
            "q.quantize_int8(np.ones((2, 2), np.float32), 1); "
            "assert 'tensorflow' not in sys.modules")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": root})


# ------------------------------------------------------------------ properties
_EXTREMES = [0.0, -0.0, 3e38, -3e38, 3.4028235e38, 1e-45, -1e-45, 1.1754944e-38, 1e-40,
             65504.0, -65504.0, 1.0, -1.0]


@st.composite
def _arrays(draw):
    shape = draw(st.tuples(st.integers(1, 12), st.integers(1, 6)))
    elems = st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),
                      st.sampled_from(_EXTREMES))
    x = draw(hnp.arrays(np.float32, shape, elements=elems))
    mode = draw(st.sampled_from(["plain", "zeros", "const_col", "zero_col"]))
    if mode == "zeros":
        x[:] = 0
    elif mode == "const_col":
        x[:, 0] = draw(st.sampled_from(_EXTREMES))
    elif mode == "zero_col":
        x[:, -1] = 0
    return x


@settings(max_examples=200, deadline=None)
@given(_arrays(), st.sampled_from([0, 1, None]), st.integers(1, 5))
def test_property_int8_round_trip(x, axis, chunk):
    q, s = Q.quantize_int8(x, axis, chunk_rows=chunk)
    d = Q.dequantize_int8(q, s)
    assert not np.any(np.isnan(d)) and np.all(np.isfinite(s))
    assert _within(x, d, Q.int8_error_bound(s))
    q2, s2 = Q.quantize_int8(x, axis)
    assert np.array_equal(q, q2) and s.tobytes() == s2.tobytes()


@settings(max_examples=200, deadline=None)
@given(_arrays())
def test_property_bf16_fp16_bounds(x):
    b = Q.bf16_to_f32(Q.to_bf16_bits(x))
    assert not np.any(np.isnan(b))
    assert _within(x, b, Q.error_bound("bf16", x))
    ok = np.abs(x) <= Q.FP16_MAX
    h = Q.to_fp16(x).astype(np.float32)
    assert _within(x[ok], h[ok], Q.error_bound("fp16", x[ok]))
    assert np.all(np.isinf(h[np.abs(x) >= Q.FP16_OVERFLOW]))
