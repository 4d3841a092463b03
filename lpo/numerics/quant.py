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


def quantize_int4(x: np.ndarray, scheme: str, *, chunk_rows: int | None = None, name: str = "tensor"):
    """Asymmetric 4-bit quantization of an embedding table ``x`` [N, D]: ``x ~ q * scale + offset``.

    ``per_row`` (FBGEMM's row-wise form): returns ``(packed uint8 [N, ceil(D/2)], scale16
    float16 [N, 1], offset16 float16 [N, 1], base float32)``; the effective per-row scale and
    offset are ``Cast(scale16) * base`` and ``Cast(offset16) * base`` (exact products).
    The offset is the row minimum rounded DOWN and the scale ``(max - offset) / 15``
    rounded UP to float16, so no value clips.

    ``per_dim``: one float32 scale and offset per column: returns ``(packed, scale float32
    [D], offset float32 [D], None)``.

    The error per element is at most half the effective scale (plus float32 rounding).
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
        offset = lo.astype(np.float32)
        scale = _float32_round_up((hi.astype(np.float64) - offset.astype(np.float64)) / INT4_MAX)
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
    b = np.float64(base)
    offset16 = fp16_round_down(lo.astype(np.float64) / b)
    scale16 = fp16_round_up(np.maximum(hi.astype(np.float64) / b - offset16.astype(np.float64), 0.0) / INT4_MAX)
    s_eff, o_eff = effective_scale(scale16, base), effective_scale(offset16, base)
    for a in range(0, n, rows):
        packed[a:a + rows] = pack_int4(_int4_codes(x[a:a + rows], o_eff[a:a + rows], s_eff[a:a + rows]))
    return packed, scale16, offset16, base


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


def int4_layout(n: int, d: int, requested: str = "per_row") -> tuple[str, str]:
    """Return the ``(dtype, scheme)`` an [n, d] table asked to be INT4 ``requested`` is stored as.

    INT4's size rule (:func:`lpo.formats.int4.layout`): never more bytes than INT8 per_dim.
    """
    from lpo.formats import int4  # noqa: PLC0415 - the registry builds on this module

    dtype, scheme = int4.layout(n, d, requested).split(":")
    return dtype, scheme
