"""Pure-numpy low-precision numerics shared by the graph rewrite and the checkpoint converter.

Everything here is deterministic: the same input gives the same bits on every call,
whatever ``chunk_rows`` is. This module imports numpy only (``ml_dtypes`` is imported
lazily by :func:`to_bf16`), never TensorFlow.

Conventions
-----------
* INT8 is symmetric: ``scale = max|x| / 127`` (float32) over every axis except the kept
  one, ``q = clip(rint(x / scale), -127, 127)`` as int8 (round half to even), and
  ``dequant = q.astype(float32) * scale``. A scale of 0 (all-zero slice) gives q = 0.
* Scale shapes returned by :func:`quantize_int8` for ``x`` of shape ``S`` (ndim ``n``):

  - ``axis`` is the last axis (``n - 1``): 1-D, shape ``[S[-1]]``. E.g. embedding
    per-dim ``[N, D]`` with ``axis=1`` -> ``[D]``; dense weight ``[K, N]`` per output
    channel with ``axis=1`` -> ``[N]``.
  - any other axis: keepdims shape, ``S[axis]`` at ``axis`` and 1 elsewhere. E.g.
    per-row ``[N, D]`` with ``axis=0`` -> ``[N, 1]``.
  - ``axis=None`` (per tensor): shape ``()``.

  In every case ``q.astype(float32) * scale`` broadcasts back to ``S``.
"""
from __future__ import annotations

import logging

import numpy as np

from lpo.errors import ConfigError

log = logging.getLogger(__name__)

INT8_MAX = 127
FP16_MAX = 65504.0
#: |x| at or above this rounds to inf in float16 (round to nearest even).
FP16_OVERFLOW = 65520.0
#: |x| at or above this rounds to inf in bfloat16 ((2 - 2**-8) * 2**127).
BF16_OVERFLOW = float((2.0 - 2.0 ** -8) * 2.0 ** 127)
BF16_REL_BOUND = 2.0 ** -8
BF16_ABS_BOUND = 2.0 ** -134  # half the bf16 subnormal spacing
FP16_REL_BOUND = 2.0 ** -11
FP16_ABS_BOUND = 2.0 ** -25  # half the fp16 subnormal spacing
_CHUNK_BYTES = 64 << 20


# ----------------------------------------------------------------------------- checks
def check_finite(x: np.ndarray, name: str) -> None:
    """Raise ConfigError naming ``name`` and the NaN/Inf counts if ``x`` is not all finite."""
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        return
    finite = np.isfinite(x)
    if finite.all():
        return
    n_nan = int(np.count_nonzero(np.isnan(x)))
    n_inf = int(x.size - np.count_nonzero(finite) - n_nan)
    raise ConfigError(
        f"variable {name!r} holds non-finite weights ({n_nan} NaN, {n_inf} Inf of "
        f"{x.size} values); refusing to quantize it. Fix the checkpoint or exclude "
        f"the variable in opt_config.")


def check_fp16_range(x: np.ndarray, name: str) -> None:
    """Raise ConfigError naming ``name`` if any |x| > 65504 (would not fit float16)."""
    x = np.asarray(x)
    if x.size == 0:
        return
    m = float(np.max(np.abs(x)))
    if not m <= FP16_MAX:  # also catches NaN
        n = int(np.count_nonzero(~(np.abs(x) <= FP16_MAX)))
        raise ConfigError(
            f"variable {name!r} has {n} value(s) outside the float16 range (max |x| = "
            f"{m:g} > {FP16_MAX:g}); they would become inf. Use BF16 or INT8 for it, or "
            f"exclude it in opt_config.")


# ----------------------------------------------------------------------------- bf16 / fp16
def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even) and return the uint16 bit patterns.

    Every NaN maps to the quiet NaN 0x7FC0 (TF's vectorized cast does the same; its
    scalar tail may keep the sign bit, so compare NaN-ness only), inf stays inf, values that
    round past the bf16 maximum become inf. Matches ``tf.cast(x, tf.bfloat16)``.
    """
    f = np.ascontiguousarray(x, dtype=np.float32)
    bits = f.view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded.reshape(f.shape)


def _bf16_dtype():
    try:
        import ml_dtypes  # noqa: PLC0415 - lazy so the module needs numpy only
    except ImportError as e:  # pragma: no cover - ml_dtypes ships with TF
        raise ConfigError("the bfloat16 numpy dtype needs the 'ml_dtypes' package "
                          "(pip install ml_dtypes); to_bf16_bits() works without it") from e
    return np.dtype(ml_dtypes.bfloat16)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to an ``ml_dtypes.bfloat16`` array (same bits as :func:`to_bf16_bits`)."""
    return to_bf16_bits(x).view(_bf16_dtype())


def bf16_to_f32(b: np.ndarray) -> np.ndarray:
    """Widen bfloat16 (uint16 bit patterns or an ml_dtypes.bfloat16 array) to float32 exactly."""
    b = np.asarray(b)
    if b.dtype != np.uint16:
        if b.dtype.name != "bfloat16":
            raise ConfigError(f"bf16_to_f32 expects uint16 bits or bfloat16, got {b.dtype}")
        b = b.view(np.uint16)
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_fp16(x: np.ndarray) -> np.ndarray:
    """Round float32 to float16 (numpy, round to nearest even).

    Saturation: |x| >= 65520 becomes +-inf and 65504 < |x| < 65520 rounds to +-65504;
    call :func:`check_fp16_range` first to refuse such tensors.
    """
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16)


def error_bound(dtype: str, x: np.ndarray) -> np.ndarray:
    """Per-element max |round_trip(x) - x| for ``dtype`` in {'bf16', 'fp16'} (inf where it overflows)."""
    d = dtype.lower().replace("bfloat16", "bf16").replace("float16", "fp16")
    ax = np.abs(np.asarray(x, dtype=np.float64))
    if d == "bf16":
        b = BF16_REL_BOUND * ax + BF16_ABS_BOUND
        return np.where(ax >= BF16_OVERFLOW, np.inf, b)
    if d == "fp16":
        b = FP16_REL_BOUND * ax + FP16_ABS_BOUND
        return np.where(ax >= FP16_OVERFLOW, np.inf, b)
    raise ConfigError(f"error_bound: unknown dtype {dtype!r}; use 'bf16' or 'fp16' "
                      f"(int8: int8_error_bound(scale))")


def int8_error_bound(scale: np.ndarray) -> np.ndarray:
    """Max |dequantize(quantize(x)) - x| per element, broadcastable like ``scale``.

    Mathematically scale/2; the returned bound adds float32 rounding slack
    (``scale * 2**-16``) and an absolute ``2**-140`` for subnormal scales.
    """
    s = np.asarray(scale, dtype=np.float64)
    return s * (0.5 + 2.0 ** -16) + 2.0 ** -140


# ----------------------------------------------------------------------------- int8
def _default_chunk_rows(x: np.ndarray) -> int:
    row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * 4)
    return max(1, _CHUNK_BYTES // row_bytes)


def _scale_from_maxabs(m: np.ndarray) -> np.ndarray:
    """float32 max|x| / 127, nudged down one ulp where 127 * scale would overflow to inf."""
    s = (np.asarray(m, dtype=np.float32) / np.float32(INT8_MAX)).astype(np.float32)
    with np.errstate(over="ignore"):
        over = np.isinf(s * np.float32(INT8_MAX)) & np.isfinite(s)
    if np.any(over):
        s = np.where(over, np.nextafter(s, np.float32(0)), s).astype(np.float32)
    return s


def _quantize_chunk(xc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    xc = np.asarray(xc, dtype=np.float32)
    safe = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.rint(xc / safe)
    r = np.where(scale > 0, r, np.float32(0))
    np.clip(r, -INT8_MAX, INT8_MAX, out=r)
    return r.astype(np.int8)


def quantize_int8(x: np.ndarray, axis: int | None, *, chunk_rows: int | None = None,
                  name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 quantization keeping one scale per index of ``axis``.

    Returns ``(q int8 of x.shape, scale float32)``; see the module docstring for scale
    shapes (``[D]`` when ``axis`` is last, keepdims otherwise, ``()`` for None). Works on
    row chunks of ``chunk_rows`` (default ~64 MB) along axis 0; the result does not
    depend on the chunking. Raises ConfigError naming ``name`` on NaN/Inf input.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim == 0:
        if axis is not None:
            raise ConfigError(f"quantize_int8: axis={axis} given for a scalar {name!r}")
        q, s = quantize_int8(x.reshape(1), None, name=name)
        return q.reshape(()), s
    if axis is not None:
        if not -x.ndim <= axis < x.ndim:
            raise ConfigError(f"quantize_int8: axis {axis} out of range for {name!r} "
                              f"of shape {x.shape}")
        axis %= x.ndim
    n = x.shape[0]
    rows = int(chunk_rows) if chunk_rows else _default_chunk_rows(x)
    rows = max(1, rows)
    q = np.empty(x.shape, dtype=np.int8)

    if axis == 0:  # per-row: one pass
        red = tuple(range(1, x.ndim))
        scale = np.empty((n,) + (1,) * (x.ndim - 1), dtype=np.float32)
        for a in range(0, n, rows):
            xc = x[a:a + rows]
            m = np.max(np.abs(xc), axis=red, keepdims=True) if red else np.abs(xc)
            if not np.all(np.isfinite(m)):
                check_finite(x, name)
            s = _scale_from_maxabs(m)
            scale[a:a + rows] = s
            q[a:a + rows] = _quantize_chunk(xc, s)
        if x.ndim == 1:
            scale = scale.reshape(n)
        return q, scale

    # per-column / per-tensor: pass 1 max-abs, pass 2 quantize
    if axis is None:
        red_chunk = None
    else:
        red_chunk = tuple(i for i in range(x.ndim) if i != axis)
    m = None
    for a in range(0, max(n, 1), rows):
        xc = x[a:a + rows]
        if xc.size == 0:
            cm = np.zeros((1,) * x.ndim if axis is None else
                          tuple(x.shape[i] if i == axis else 1 for i in range(x.ndim)),
                          dtype=np.float32)
        else:
            cm = np.max(np.abs(xc), axis=red_chunk, keepdims=True)
        m = cm if m is None else np.maximum(m, cm)
    if not np.all(np.isfinite(m)):
        check_finite(x, name)
    scale = _scale_from_maxabs(m)
    for a in range(0, n, rows):
        q[a:a + rows] = _quantize_chunk(x[a:a + rows], scale)
    if axis is None:
        scale = scale.reshape(())
    elif axis == x.ndim - 1:
        scale = scale.reshape(x.shape[axis])
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Return ``q.astype(float32) * scale`` (scale as returned by :func:`quantize_int8`)."""
    return np.asarray(q).astype(np.float32) * np.asarray(scale, dtype=np.float32)


# ----------------------------------------------------------------------------- activations
def quantize_activation_params(min_val: float, max_val: float, num_bits: int = 8,
                               narrow_range: bool = False) -> tuple[float, float, float, int]:
    """Nudged ``(min, max, scale, zero_point)`` exactly as TF's FakeQuantWithMinMaxArgs.

    Computed in float32 like TF's kernel; requires ``min_val < max_val``. The nudged
    range contains 0 exactly (0 maps to ``zero_point``).
    """
    lo, hi = np.float32(min_val), np.float32(max_val)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ConfigError(f"activation range needs finite min < max, got "
                          f"[{min_val}, {max_val}]")
    qmin = np.float32(1 if narrow_range else 0)
    qmax = np.float32((1 << num_bits) - 1)
    scale = np.float32((hi - lo) / (qmax - qmin))
    zp_from_min = np.float32(qmin - lo / scale)
    if zp_from_min < qmin:
        zp = int(qmin)
    elif zp_from_min > qmax:
        zp = int(qmax)
    else:  # std::round: half away from zero
        zp = int(np.floor(np.float64(zp_from_min) + 0.5))
    nmin = np.float32((qmin - np.float32(zp)) * scale)
    nmax = np.float32((qmax - np.float32(zp)) * scale)
    return float(nmin), float(nmax), float(scale), zp


def fake_quant(x: np.ndarray, min_val: float, max_val: float, num_bits: int = 8,
               narrow_range: bool = False) -> np.ndarray:
    """Reproduce ``tf.quantization.fake_quant_with_min_max_args`` bit for bit (float32 numpy)."""
    nmin, nmax, scale, _ = quantize_activation_params(min_val, max_val, num_bits, narrow_range)
    f = np.float32
    nmin, nmax, scale = f(nmin), f(nmax), f(scale)
    steps = f((1 << num_bits) - 1 - (1 if narrow_range else 0))
    inv = f(steps / (f(max_val) - f(min_val)))  # TF recomputes the inverse this way
    quant_zero = f(np.floor(f(f(-nmin) * inv) + f(0.5)))
    x = np.asarray(x, dtype=f)
    shifted = (np.maximum(np.minimum(x, nmax), nmin) - nmin).astype(f)
    return (np.floor(shifted * inv - quant_zero + f(0.5)) * scale).astype(f)


# ----------------------------------------------------------------------------- DeepRec EVs
# DeepRec's EmbeddingVariable checkpoint conversion, reproduced bit for bit from
# DeepRec-AI/DeepRec tensorflow/c/quantize_embedding_variable.cc (the version with
# ConvertToBF16Value/ConvertToHalfValue/ConvertToInt8Value and is_ev), which
# tools/low_precision_optimize/low_precision_optimize.py (commit 20f292d) calls through
# tensorflow/python/util/quantize_embedding_variable.py:
#   BF16: FloatToBFloat16 (TF 1.x: keeps the high 16 bits, i.e. truncates; the MKL branch
#         is behind the misspelt `#if TEL_MKL`, so it is never taken);
#   FP16: static_cast<Eigen::half> (round to nearest even);
#   INT8: per embedding dim (last axis) scale = max|x| / 127.0 (max starts at 0),
#         q = static_cast<int8_t>(round(x / scale)) (float division, round half away
#         from zero, no clipping: |x / scale| <= 127 by construction).
def ev_to_bf16(x: np.ndarray) -> np.ndarray:
    """DeepRec's EV bfloat16 conversion: the high 16 bits of each float32 (truncation)."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    bits = (f.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return bits.view(_bf16_dtype()).reshape(f.shape)


def _round_half_away(r: np.ndarray) -> np.ndarray:
    """C ``round()`` on float32: nearest integer, halves away from zero (exact, no +0.5 trick)."""
    t = np.trunc(r)
    frac = r - t  # exact in float32
    return t + np.where(np.abs(frac) >= np.float32(0.5), np.sign(r), np.float32(0)).astype(np.float32)


def ev_quantize_int8(x: np.ndarray, *, chunk_rows: int | None = None,
                     name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """DeepRec's EV INT8 conversion: ``(q int8 of x.shape, scale float32 [x.shape[-1]])``.

    One scale per embedding dim (last axis), ``float(max|x|) / 127.0`` rounded to float32;
    ``q = round_half_away(x / scale)`` in float32. An all-zero dim has scale 0 and
    q = 0 (what DeepRec's cast of NaN gives on x86). Raises ConfigError on NaN/Inf.
    Works on row chunks; the result does not depend on ``chunk_rows``.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim < 1:
        raise ConfigError(f"ev_quantize_int8: {name!r} must have at least one dimension")
    flat = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    rows = max(1, int(chunk_rows) if chunk_rows else _default_chunk_rows(flat))
    m = np.zeros(flat.shape[1], np.float32)
    for a in range(0, flat.shape[0], rows):
        c = flat[a:a + rows]
        if c.size:
            np.maximum(m, np.max(np.abs(c), axis=0), out=m)
    if not np.all(np.isfinite(m)):
        check_finite(x, name)
    scale = (m.astype(np.float64) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    q = np.empty(flat.shape, np.int8)
    for a in range(0, flat.shape[0], rows):
        r = _round_half_away((flat[a:a + rows] / safe).astype(np.float32))
        q[a:a + rows] = np.where(scale > 0, r, np.float32(0)).astype(np.int8)
    return q.reshape(x.shape), scale


# ----------------------------------------------------------------------------- fp16 row scales
#: Smallest positive normal float16; below it float16 keeps fewer significant bits.
FP16_MIN_NORMAL = 2.0 ** -14
#: Row scales are stored as float16 times one power-of-two ``base`` per tensor, chosen so
#: that the largest stored value lies in [2**14, 2**15): far from float16's overflow
#: (65504) and with 2**29 of normal range below it. Without ``base``, a table whose row
#: scales exceed 65504 would overflow and one whose scales are all below 2**-14 would lose
#: precision (or flush to zero below 2**-24) in plain float16.
_BASE_TOP_EXP = 14
_F32_MIN_EXP = -126


def fp16_round_up(x: np.ndarray) -> np.ndarray:
    """Return the smallest float16 >= ``x`` (``x`` finite, 0 <= x <= 65504)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
        low = h.astype(np.float64) < x
        return np.where(low, np.nextafter(h, np.float16(np.inf)), h).astype(np.float16)


def fp16_round_down(x: np.ndarray) -> np.ndarray:
    """Return the largest float16 <= ``x`` (``x`` finite, |x| <= 65504)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
        high = h.astype(np.float64) > x
        return np.where(high, np.nextafter(h, np.float16(-np.inf)), h).astype(np.float16)


def pow2_base(peak: float) -> np.float32:
    """Return the power of two ``b`` (float32) with ``peak / b`` in ``[2**14, 2**15)``; 1 for 0.

    ``b`` is at least 2**-126 (float32's smallest normal), so it is always a normal float32.
    """
    peak = float(peak)
    if not peak > 0:
        return np.float32(1.0)
    _, e = np.frexp(peak)  # peak = f * 2**e, f in [0.5, 1)
    exp = max(int(e) - 1 - _BASE_TOP_EXP, _F32_MIN_EXP)
    return np.float32(np.ldexp(1.0, exp))


def scales_fp16(scale: np.ndarray, base: np.float32) -> np.ndarray:
    """Store float scales (>= 0) as float16 multiples of ``base``, rounded up (never clips)."""
    return fp16_round_up(np.asarray(scale, dtype=np.float64) / np.float64(base))


def effective_scale(scale16: np.ndarray, base) -> np.ndarray:
    """The float32 scale the graph computes: ``Cast(scale16, float32) * base`` (an exact product)."""
    return np.asarray(scale16).astype(np.float32) * np.float32(base)


def quantize_int8_rows(x: np.ndarray, *, chunk_rows: int | None = None,
                       name: str = "tensor") -> tuple[np.ndarray, np.ndarray, np.float32]:
    """Symmetric INT8 with one float16 scale per row (axis 0) and a float32 power-of-two base.

    Returns ``(q int8 of x.shape, scale16 float16 [N, 1], base float32 scalar)``; dequantize
    with :func:`dequantize_int8_rows`. The row scale is ``max|row| / 127`` rounded UP to
    a float16 multiple of ``base``, so no value clips and the error per element is at
    most half the effective scale. Raises ConfigError naming ``name`` on NaN/Inf.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim != 2:
        raise ConfigError(f"quantize_int8_rows: {name!r} must be 2-D, got shape {x.shape}")
    rows = max(1, int(chunk_rows) if chunk_rows else _default_chunk_rows(x))
    n = x.shape[0]
    scale = np.empty((n, 1), dtype=np.float32)
    for a in range(0, n, rows):
        m = np.max(np.abs(x[a:a + rows]), axis=1, keepdims=True) if x.shape[1] else \
            np.zeros((min(rows, n - a), 1), np.float32)
        if not np.all(np.isfinite(m)):
            check_finite(x, name)
        scale[a:a + rows] = _scale_from_maxabs(m)
    base = pow2_base(scale.max() if n else 0.0)
    scale16 = scales_fp16(scale, base)
    s_eff = effective_scale(scale16, base)
    q = np.empty(x.shape, dtype=np.int8)
    for a in range(0, n, rows):
        q[a:a + rows] = _quantize_chunk(x[a:a + rows], s_eff[a:a + rows])
    return q, scale16, base


def dequantize_int8_rows(q: np.ndarray, scale16: np.ndarray, base) -> np.ndarray:
    """Return ``Cast(q) * (Cast(scale16) * base)`` in float32, as the rewritten graph does."""
    return np.asarray(q).astype(np.float32) * effective_scale(scale16, base)


# ----------------------------------------------------------------------------- int4
INT4_MAX = 15
INT4_SCHEMES = ("per_row", "per_dim")
#: INT4 refuses tables with |x| at or above this: ``15 * scale`` would overflow float32.
INT4_LIMIT = 2.0 ** 125


def int4_packed_cols(d: int) -> int:
    """Bytes per packed INT4 row of ``d`` values: ``ceil(d / 2)``."""
    return (int(d) + 1) // 2


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack codes ``q`` (integers in [0, 15], shape [N, D]) into uint8 ``[N, ceil(D/2)]``.

    Layout ("split halves"): with ``P = ceil(D/2)``, byte ``j`` of a row holds column ``j``
    in its low nibble and column ``j + P`` in its high nibble; for odd ``D`` the high
    nibble of the last byte is a zero pad. Unpacking is then ``concat([b & 15, b >> 4],
    -1)[..., :D]``, which needs no reshape (so it works on lookups of any rank).
    """
    q = np.asarray(q)
    if q.ndim != 2:
        raise ConfigError(f"pack_int4 expects a 2-D array, got shape {q.shape}")
    q = q.astype(np.uint8)
    n, d = q.shape
    p = int4_packed_cols(d)
    hi = np.zeros((n, p), np.uint8)
    hi[:, :d - p] = q[:, p:]
    return (q[:, :p] | (hi << np.uint8(4))).astype(np.uint8)


def unpack_int4(packed: np.ndarray, d: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: uint8 ``[..., ceil(d/2)]`` -> uint8 codes ``[..., d]``."""
    b = np.asarray(packed, dtype=np.uint8)
    if b.shape[-1] != int4_packed_cols(d):
        raise ConfigError(f"unpack_int4: {b.shape[-1]} packed columns do not hold {d} values")
    return np.concatenate([b & np.uint8(15), b >> np.uint8(4)], axis=-1)[..., :d]


def _int4_codes(x: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``clip(rint((x - offset) / scale), 0, 15)`` in float64 (0 where scale is 0)."""
    x = np.asarray(x, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    safe = np.where(s > 0, s, 1.0)
    r = np.rint((x - np.asarray(offset, dtype=np.float64)) / safe)
    r = np.where(s > 0, r, 0.0)
    return np.clip(r, 0, INT4_MAX).astype(np.uint8)


def _check_int4_range(m: float, name: str) -> None:
    if not m < INT4_LIMIT:
        raise ConfigError(f"variable {name!r} has values up to |x| = {m:g}, beyond what INT4 can store "
                          f"(|x| < {INT4_LIMIT:g}); use INT8 or FP32 for it in opt_config")


def _float32_round_up(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    f = x.astype(np.float32)
    return np.where(f.astype(np.float64) < x, np.nextafter(f, np.float32(np.inf)), f).astype(np.float32)


#: INT4 range search (FBGEMM's greedy search of its row-wise n-bit quantization): the range
#: [min, max] is cut into this many steps, and each step moves the low or the high end one step
#: inward, whichever loses less; the range of least squared error on the path is kept.
INT4_SEARCH_BINS = 200
#: The most of a row's range the search may cut (FBGEMM: 0.16).
INT4_SEARCH_RATIO_ROW = 0.16
#: The most of a column's range the search may cut: a column has many rows, so heavy tails are
#: common and clipping more pays (its losses come from a histogram, so the search is cheap).
INT4_SEARCH_RATIO_DIM = 0.6
#: Histogram bins per column for the per_dim search (counts are exact: chunking changes nothing).
INT4_HIST_BINS = 2048
#: Rows summed at a time when per_dim losses are compared exactly (fixed: the sums, and so the
#: choice, do not depend on ``chunk_rows``).
_LOSS_BLOCK_ROWS = 8192


def _row_params(lo, hi, base):
    """float16 ``(scale16, offset16)`` of row ranges ``[lo, hi]`` (float64 ``[r, 1]``) in units of ``base``."""
    b = np.float64(base)
    offset16 = fp16_round_down(lo / b)
    scale16 = fp16_round_up(np.maximum(hi / b - offset16.astype(np.float64), 0.0) / INT4_MAX)
    return scale16, offset16


def _dim_params(lo, hi):
    """float32 ``(scale, offset)`` of column ranges ``[lo, hi]`` (float64 ``[D]``)."""
    offset = lo.astype(np.float32)
    return _float32_round_up((hi - offset.astype(np.float64)) / INT4_MAX), offset


def _sq_error(x, offset, scale, axis):
    """Squared error of the float32 ``codes * scale + offset`` the graph computes, summed over ``axis``."""
    r = _int4_codes(x, offset, scale).astype(np.float32) * np.asarray(scale, np.float32) \
        + np.asarray(offset, np.float32)
    dlt = r.astype(np.float64) - np.asarray(x, np.float64)
    return np.sum(dlt * dlt, axis=axis)


def _greedy(loss, lo, hi, ratio):
    """FBGEMM's greedy range search, vectorized over independent ranges ``[lo, hi]`` (float64 arrays).

    ``loss(lo, hi)`` gives the error of each range. Each of ``ratio * INT4_SEARCH_BINS`` steps
    moves, per range, the low end up or the high end down one step (whichever loses less);
    returns the ``(lo, hi)`` of least loss on the path (the min/max range on ties).
    """
    step = (hi - lo) / INT4_SEARCH_BINS
    best = loss(lo, hi)
    best_lo, best_hi = lo.copy(), hi.copy()
    i = np.zeros(lo.shape)
    j = np.zeros(lo.shape)
    for _ in range(int(INT4_SEARCH_BINS * ratio)):
        up = loss(lo + (i + 1) * step, hi - j * step)
        down = loss(lo + i * step, hi - (j + 1) * step)
        left = up < down
        i, j = i + left, j + ~left
        cur = np.where(left, up, down)
        better = cur < best
        best = np.where(better, cur, best)
        best_lo = np.where(better, lo + i * step, best_lo)
        best_hi = np.where(better, hi - j * step, best_hi)
    return best_lo, best_hi


def _search_rows(x, lo, hi, base):
    """Per-row ranges of least squared error (``x`` one chunk ``[r, D]``, ``lo``/``hi`` ``[r, 1]``).

    The search scores ranges in float32 in units of ``base`` (fast); a row keeps the range it found
    only where its exact error (float64, the codes the converter writes) is below min/max's.
    """
    def params(a, b):
        s16, o16 = _row_params(a, b, base)
        return effective_scale(o16, base), effective_scale(s16, base)

    xs = (x / np.float32(base)).astype(np.float32)  # in units of base: |xs| < 2**15, squares stay finite

    def loss(a, b):
        s16, o16 = _row_params(a, b, base)
        o, sc = o16.astype(np.float32), s16.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
            q = np.clip(np.rint((xs - o) / np.where(sc > 0, sc, np.float32(1))), 0, INT4_MAX)
            dlt = q * sc + o - xs
            return np.sum(dlt * dlt, axis=1, keepdims=True, dtype=np.float32)

    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    s_lo, s_hi = _greedy(loss, lo64, hi64, INT4_SEARCH_RATIO_ROW)
    changed = ((s_lo != lo64) | (s_hi != hi64))[:, 0]
    if changed.any():
        keep = np.zeros(changed.shape, bool)
        xc = x[changed]
        keep[changed] = _sq_error(xc, *params(s_lo[changed], s_hi[changed]), 1) \
            < _sq_error(xc, *params(lo64[changed], hi64[changed]), 1)
        s_lo, s_hi = np.where(keep[:, None], s_lo, lo64), np.where(keep[:, None], s_hi, hi64)
    return s_lo, s_hi


def _search_dims(x, lo, hi, rows):
    """Per-column ranges of least squared error: a greedy search on exact per-column histograms, kept
    only where the exact error is no larger than min/max's (compared in fixed row blocks)."""
    n, d = x.shape
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    width = (hi64 - lo64) / INT4_HIST_BINS
    safe = np.where(width > 0, width, 1.0)
    counts = np.zeros(d * INT4_HIST_BINS, np.int64)
    cols = np.arange(d) * INT4_HIST_BINS
    for a in range(0, n, rows):
        k = np.clip(np.floor((x[a:a + rows].astype(np.float64) - lo64) / safe), 0, INT4_HIST_BINS - 1)
        counts += np.bincount((k.astype(np.int64) + cols).ravel(), minlength=d * INT4_HIST_BINS)
    counts = counts.reshape(d, INT4_HIST_BINS).T.astype(np.float64)  # [bins, D]
    centers = lo64 + (np.arange(INT4_HIST_BINS)[:, None] + 0.5) * width

    def loss(a, b):
        scale, offset = _dim_params(a, b)
        r = _int4_codes(centers, offset, scale).astype(np.float64) * scale + offset
        return np.sum(counts * (r - centers) ** 2, axis=0)

    s_lo, s_hi = _greedy(loss, lo64, hi64, INT4_SEARCH_RATIO_DIM)
    changed = (s_lo != lo64) | (s_hi != hi64)
    if not changed.any():
        return lo64, hi64
    (ms, mo), (ss, so) = _dim_params(lo64, hi64), _dim_params(s_lo, s_hi)
    err_minmax, err_search = np.zeros(d), np.zeros(d)
    for a in range(0, n, _LOSS_BLOCK_ROWS):
        xc = x[a:a + _LOSS_BLOCK_ROWS]
        err_minmax += _sq_error(xc, mo, ms, 0)
        err_search += _sq_error(xc, so, ss, 0)
    keep = changed & (err_search < err_minmax)
    return np.where(keep, s_lo, lo64), np.where(keep, s_hi, hi64)


def quantize_int4(x: np.ndarray, scheme: str, *, chunk_rows: int | None = None, name: str = "tensor",
                  search: bool = True):
    """Asymmetric 4-bit quantization of an embedding table ``x`` [N, D]: ``x ~ q * scale + offset``.

    ``per_row`` (FBGEMM's row-wise form): returns ``(packed uint8 [N, ceil(D/2)], scale16
    float16 [N, 1], offset16 float16 [N, 1], base float32)``; the effective per-row scale and
    offset are ``Cast(scale16) * base`` and ``Cast(offset16) * base`` (exact products).
    A row's range ``[lo, hi]`` gives the offset ``lo`` rounded DOWN and the scale
    ``(hi - offset) / 15`` rounded UP to float16.

    ``per_dim``: one float32 scale and offset per column: returns ``(packed, scale float32
    [D], offset float32 [D], None)``; offset ``lo``, scale ``(hi - lo) / 15`` rounded up.

    The range is ``[min, max]`` with ``search=False`` (nothing clips: the error per element is
    at most half the effective scale, plus float32 rounding); by default it is the range of
    least squared reconstruction error found by FBGEMM's greedy search (:func:`_greedy`;
    per_dim on exact column histograms), so values beyond it clip, and the error of every
    row (per_row) or column (per_dim) is at most min/max's.

    Row chunks of ``chunk_rows`` bound the temporaries; the result does not depend on them.
    Raises ConfigError naming ``name`` on NaN/Inf or a scheme it does not know.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim != 2:
        raise ConfigError(f"quantize_int4: {name!r} must be 2-D [rows, dim], got shape {x.shape}")
    if scheme not in INT4_SCHEMES:
        raise ConfigError(f"quantize_int4: scheme {scheme!r} is not one of {', '.join(INT4_SCHEMES)}")
    n, d = x.shape
    rows = max(1, int(chunk_rows) if chunk_rows else _default_chunk_rows(x))
    packed = np.empty((n, int4_packed_cols(d)), np.uint8)
    if n == 0 or d == 0:
        packed = np.zeros((n, int4_packed_cols(d)), np.uint8)
    if scheme == "per_dim":
        lo = np.full(d, np.inf, np.float32)
        hi = np.full(d, -np.inf, np.float32)
        for a in range(0, n, rows):
            xc = x[a:a + rows]
            if not np.all(np.isfinite(xc)):
                check_finite(x, name)
            lo = np.minimum(lo, xc.min(axis=0))
            hi = np.maximum(hi, xc.max(axis=0))
        if n == 0:
            lo = hi = np.zeros(d, np.float32)
        _check_int4_range(float(max(np.abs(lo).max(initial=0), np.abs(hi).max(initial=0))), name)
        lo64, hi64 = (_search_dims(x, lo, hi, rows) if search and n and d
                      else (lo.astype(np.float64), hi.astype(np.float64)))
        scale, offset = _dim_params(lo64, hi64)
        for a in range(0, n, rows):
            packed[a:a + rows] = pack_int4(_int4_codes(x[a:a + rows], offset, scale))
        return packed, scale, offset, None
    lo = np.empty((n, 1), np.float32)
    hi = np.empty((n, 1), np.float32)
    for a in range(0, n, rows):
        xc = x[a:a + rows]
        if not np.all(np.isfinite(xc)):
            check_finite(x, name)
        lo[a:a + rows] = xc.min(axis=1, keepdims=True) if d else 0
        hi[a:a + rows] = xc.max(axis=1, keepdims=True) if d else 0
    peak = float(max(np.abs(lo).max(), np.abs(hi).max())) if n else 0.0
    _check_int4_range(peak, name)
    base = pow2_base(peak)
    scale16 = np.empty((n, 1), np.float16)
    offset16 = np.empty((n, 1), np.float16)
    for a in range(0, n, rows):
        xc = x[a:a + rows]
        rlo, rhi = (_search_rows(xc, lo[a:a + rows], hi[a:a + rows], base) if search and d
                    else (lo[a:a + rows].astype(np.float64), hi[a:a + rows].astype(np.float64)))
        s16, o16 = _row_params(rlo, rhi, base)
        scale16[a:a + rows], offset16[a:a + rows] = s16, o16
        packed[a:a + rows] = pack_int4(_int4_codes(xc, effective_scale(o16, base), effective_scale(s16, base)))
    return packed, scale16, offset16, base


#: Symmetric INT4 rows: codes ``q + 8`` for ``q`` in [-7, 7]; the search scans clips down to this
#: fraction of a row's max|x| cut off.
INT4_SYM_MAX = 7
INT4_SEARCH_RATIO_SYM = 0.3


def quantize_int4_sym(x: np.ndarray, *, chunk_rows: int | None = None, name: str = "tensor", search: bool = True):
    """Symmetric 4-bit rows with one float16 scale each: ``x ~ (codes - 8) * scale``.

    Returns ``(packed uint8 [N, ceil(D/2)], scale16 float16 [N, 1], base float32)``: a row's clip
    ``c`` (max|x|, or with ``search`` the clip of least squared error among ``max|x| * (1 - i /
    INT4_SEARCH_BINS)``, never more error than max|x|'s) gives the scale ``c / 7`` rounded UP to a
    float16 multiple of the table's power-of-two ``base`` and codes ``clip(rint(x / scale), -7, 7) + 8``
    (1..15). 2 bytes of row header where :func:`quantize_int4` per_row takes 4.
    The result does not depend on ``chunk_rows``. ConfigError naming ``name`` on NaN/Inf.
    """
    x, rows, m = _row_maxabs(x, "quantize_int4_sym", name, chunk_rows)
    n, d = x.shape
    peak = float(m.max()) if n else 0.0
    base = pow2_base(peak / INT4_SYM_MAX)
    packed = np.zeros((n, int4_packed_cols(d)), np.uint8)
    scale16 = np.zeros((n, 1), np.float16)
    for a in range(0, n, rows):
        xc, mc = x[a:a + rows], m[a:a + rows].astype(np.float64)
        s16 = _sym_scale(mc, base)
        if search and d:
            s16 = _search_sym(xc, mc, base, s16)
        scale16[a:a + rows] = s16
        packed[a:a + rows] = pack_int4(_sym_codes(xc, effective_scale(s16, base)))
    return packed, scale16, base


def _row_maxabs(x, what: str, name: str, chunk_rows):
    """``(x float32 [N, D], rows a chunk, max|row| float32 [N, 1])``; ConfigError on a bad shape, NaN/Inf
    or values beyond INT4's range."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim != 2:
        raise ConfigError(f"{what}: {name!r} must be 2-D [rows, dim], got shape {x.shape}")
    n, d = x.shape
    rows = max(1, int(chunk_rows) if chunk_rows else _default_chunk_rows(x))
    m = np.zeros((n, 1), np.float32)
    for a in range(0, n, rows):
        xc = x[a:a + rows]
        if not np.all(np.isfinite(xc)):
            check_finite(x, name)
        if d:
            m[a:a + rows] = np.max(np.abs(xc), axis=1, keepdims=True)
    _check_int4_range(float(m.max()) if n else 0.0, name)
    return x, rows, m


def _sym_scale(clip, base):
    """float16 row scales ``clip / 7`` rounded up in units of ``base``."""
    return fp16_round_up(clip / INT4_SYM_MAX / np.float64(base))


def _sym_codes(x, scale):
    """``clip(rint(x / scale), -7, 7) + 8`` as uint8 (8 where the scale is 0)."""
    s = np.asarray(scale, np.float64)
    r = np.rint(np.asarray(x, np.float64) / np.where(s > 0, s, 1.0))
    return (np.clip(np.where(s > 0, r, 0.0), -INT4_SYM_MAX, INT4_SYM_MAX) + 8).astype(np.uint8)


def _search_sym(x, m, base, s16):
    """Row scales of least squared error over clips ``m * (1 - i / INT4_SEARCH_BINS)`` (scored in float32 in
    units of ``base``; a row keeps its find only where the exact float64 error is below max|x|'s)."""
    xs = (x / np.float32(base)).astype(np.float32)

    def loss(sc16):
        sc = sc16.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
            q = np.clip(np.rint(xs / np.where(sc > 0, sc, np.float32(1))), -INT4_SYM_MAX, INT4_SYM_MAX)
            dlt = q * sc - xs
            return np.sum(dlt * dlt, axis=1, keepdims=True, dtype=np.float32)

    best, best16 = loss(s16), s16
    for i in range(1, int(INT4_SEARCH_BINS * INT4_SEARCH_RATIO_SYM) + 1):
        cand = _sym_scale(m * (1.0 - i / INT4_SEARCH_BINS), base)
        cur = loss(cand)
        better = cur < best
        best, best16 = np.where(better, cur, best), np.where(better, cand, best16)
    changed = (best16 != s16)[:, 0]
    if changed.any():
        keep = np.zeros(changed.shape, bool)
        xc = x[changed]
        keep[changed] = _sym_error(xc, best16[changed], base) < _sym_error(xc, s16[changed], base)
        best16 = np.where(keep[:, None], best16, s16)
    return best16


def _sym_error(x, s16, base):
    """Exact squared error per row of the float32 ``(codes - 8) * scale`` the graph computes."""
    deq = dequantize_int4_sym(pack_int4(_sym_codes(x, effective_scale(s16, base))), x.shape[1], s16, base)
    dlt = deq.astype(np.float64) - x
    return np.sum(dlt * dlt, axis=1)


def dequantize_int4_sym(packed: np.ndarray, d: int, scale16: np.ndarray, base) -> np.ndarray:
    """Return float32 ``(Cast(codes) + -8) * (Cast(scale16) * base)`` as the rewritten graph computes it."""
    codes = unpack_int4(packed, d).astype(np.float32)
    return (codes + np.float32(-8)) * effective_scale(scale16, base)


#: ``INT4:per_row_sym8``: a row's scale is one byte ``k = e * 16 + m`` (4-bit exponent, 4-bit mantissa):
#: ``scale = (1 + m/16) * 2**(e - 15) * base`` (steps of at most 6.25%, 15 octaves below the largest),
#: built in the graph from float32 bits (exact).
_E4M4_BITS = ((np.arange(256, dtype=np.uint32) >> 4) + 112) << 23 | (np.arange(256, dtype=np.uint32) & 15) << 19
E4M4_SCALES = _E4M4_BITS.view(np.float32)


def quantize_int4_sym8(x: np.ndarray, *, chunk_rows: int | None = None, name: str = "tensor", search: bool = True):
    """Symmetric 4-bit rows with a one-byte scale code each: ``x ~ (codes - 8) * E4M4_SCALES[k] * base``.

    Returns ``(packed uint8 [N, ceil(D/2) + 1], base float32)``: a row's codes packed as
    :func:`pack_int4` does, then its scale code ``k``. ``base`` is the power of two with the
    largest row scale in ``[base/2, base)``; ``k`` is the smallest code whose scale covers the
    row's clip / 7 (max|x|, or with ``search`` the clip of least squared error as in
    :func:`quantize_int4_sym`). 1 byte of row header. Independent of ``chunk_rows``.
    """
    x, rows, m = _row_maxabs(x, "quantize_int4_sym8", name, chunk_rows)
    n, d = x.shape
    peak = float(m.max()) / INT4_SYM_MAX if n else 0.0
    base = np.float32(np.ldexp(1.0, int(np.frexp(peak)[1]))) if peak > 0 else np.float32(1.0)
    scales = E4M4_SCALES.astype(np.float64) * float(base)
    p = int4_packed_cols(d)
    packed = np.zeros((n, p + 1), np.uint8)
    for a in range(0, n, rows):
        xc, mc = x[a:a + rows], m[a:a + rows].astype(np.float64)

        def code(clip):
            return np.minimum(np.searchsorted(scales, clip[:, 0] / INT4_SYM_MAX), 255).astype(np.uint8)[:, None]

        k = code(mc)
        if search and d:
            xs = (xc / base).astype(np.float32)

            def loss(kk):
                sc = E4M4_SCALES[kk]
                with np.errstate(under="ignore"):
                    dlt = np.clip(np.rint(xs / sc), -INT4_SYM_MAX, INT4_SYM_MAX) * sc - xs
                    return np.sum(dlt * dlt, axis=1, keepdims=True, dtype=np.float32)

            best, best_k = loss(k), k
            for i in range(1, int(INT4_SEARCH_BINS * INT4_SEARCH_RATIO_SYM) + 1):
                cand = code(mc * (1.0 - i / INT4_SEARCH_BINS))
                cur = loss(cand)
                better = cur < best
                best, best_k = np.where(better, cur, best), np.where(better, cand, best_k)
            changed = (best_k != k)[:, 0]
            if changed.any():
                err = [np.sum((_sym8_rows(xc[changed], kk[changed], base).astype(np.float64) - xc[changed]) ** 2,
                              axis=1) for kk in (best_k, k)]
                keep = np.zeros(changed.shape, bool)
                keep[changed] = err[0] < err[1]
                k = np.where(keep[:, None], best_k, k)
        sc = E4M4_SCALES[k[:, 0]][:, None] * base
        packed[a:a + rows, :p] = pack_int4(_sym_codes(xc, sc))
        packed[a:a + rows, p:] = k
    return packed, base


def _sym8_rows(x, k, base):
    """Rows ``x`` through scale codes ``k``, dequantized (float32, as the graph computes them)."""
    sc = E4M4_SCALES[k[:, 0]][:, None] * np.float32(base)
    return (_sym_codes(x, sc).astype(np.float32) + np.float32(-8)) * sc


def dequantize_int4_sym8(packed: np.ndarray, d: int, base) -> np.ndarray:
    """Return float32 ``(Cast(codes) + -8) * (bitcast(scale code) * base)`` as the rewritten graph computes it."""
    packed = np.asarray(packed, np.uint8)
    sc = E4M4_SCALES[packed[..., -1:].astype(np.intp)] * np.float32(base)
    return (unpack_int4(packed[..., :-1], d).astype(np.float32) + np.float32(-8)) * sc


def dequantize_int4(packed: np.ndarray, d: int, scale: np.ndarray, offset: np.ndarray, base=None) -> np.ndarray:
    """Return float32 ``Cast(codes) * scale + offset`` exactly as the rewritten graph computes it.

    With ``base`` (per_row), ``scale``/``offset`` are the float16 values and the graph
    multiplies each by ``base`` after the cast; without, they are float32 per column.
    """
    codes = unpack_int4(packed, d).astype(np.float32)
    if base is not None:
        scale, offset = effective_scale(scale, base), effective_scale(offset, base)
    return codes * np.asarray(scale, np.float32) + np.asarray(offset, np.float32)


def int4_error_bound(scale: np.ndarray, base=None) -> np.ndarray:
    """Max |dequantize_int4(quantize_int4(x)) - x|, broadcastable like ``scale``.

    Half the effective scale plus float32 rounding slack of the multiply-add.
    """
    s = np.asarray(effective_scale(scale, base) if base is not None else scale, dtype=np.float64)
    return s * (0.5 + 2.0 ** -16) + 2.0 ** -120


# ----------------------------------------------------------------------------- table sizes
def table_bytes(n: int, d: int, dtype: str, scheme: str | None = None) -> int:
    """Bytes one [n, d] embedding table takes in the checkpoint at ``dtype``/``scheme`` (data only).

    The storage form's ``nbytes`` (:func:`lpo.formats.table_bytes`).
    """
    from lpo import formats  # noqa: PLC0415 - the registry builds on this module

    return formats.table_bytes(n, d, dtype, scheme)


def int4_layout(n: int, d: int, requested: str = "per_row", max_ratio: float | None = None) -> tuple[str, str]:
    """Return the ``(dtype, scheme)`` an [n, d] table asked to be INT4 ``requested`` is stored as.

    INT4's size rule (:func:`lpo.formats.int4.layout`): at most ``max_ratio`` (default
    :data:`lpo.options.INT4_MAX_SIZE_RATIO`) of INT8 per_dim's bytes.
    """
    from lpo.formats import int4  # noqa: PLC0415 - the registry builds on this module

    dtype, scheme = int4.layout(n, d, requested, max_ratio).split(":")
    return dtype, scheme
