"""Activation range observers for static INT8 calibration (numpy only).

Observers (:func:`make_observer`) see one fp32 activation tensor per calibration batch
and return a range ``(lo, hi)`` with ``lo <= 0 <= hi`` and ``lo < hi`` (an all-zero
activation gives ``(0.0, 1.0)``), ready for ``quant.quantize_activation_params`` /
FakeQuantWithMinMaxArgs.
"""
from __future__ import annotations

import numpy as np

from lpo.errors import CalibrationError, ConfigError
from lpo.numerics.quant import fake_quant
from lpo.options import CALIB_METHODS, OPTIMIZE

OBSERVER_METHODS = CALIB_METHODS
DEFAULT_METHOD = OPTIMIZE.calib_method
_EMPTY_RANGE = (0.0, 1.0)


class _Observer:
    """Base: tracks the exact running min/max and validates input."""

    method = "?"

    def __init__(self, name: str = "activation"):
        self.name = name
        self.count = 0
        self.min = np.inf
        self.max = -np.inf

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).ravel()
        if x.size == 0:
            return x
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise CalibrationError(
                f"activation {self.name!r} has {bad} NaN/Inf value(s) in a calibration "
                f"batch; check the model and the calibration data")
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += x.size
        return x

    def update(self, x: np.ndarray) -> None:
        """Observe one batch of the fp32 activation."""
        self._prep(x)

    def _data_range(self) -> tuple[float, float]:
        if self.count == 0:
            raise CalibrationError(
                f"observer for {self.name!r} saw no data: the calibration set is empty "
                f"or the activation was never computed")
        return min(self.min, 0.0), max(self.max, 0.0)

    @staticmethod
    def _finish(lo: float, hi: float) -> tuple[float, float]:
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if not hi > lo:
            return _EMPTY_RANGE
        return lo, hi

    def range(self) -> tuple[float, float]:
        """Return ``(lo, hi)`` with lo <= 0 <= hi and lo < hi."""
        return self._finish(*self._data_range())


class MinMaxObserver(_Observer):
    """Running min/max over every value seen."""

    method = "minmax"


class _SampleObserver(_Observer):
    """Keeps a deterministic bounded reservoir sample (seeded) besides exact min/max."""

    def __init__(self, name: str = "activation", max_samples: int = 2_000_000, seed: int = 0):
        super().__init__(name)
        self.max_samples = int(max_samples)
        self._buf = np.empty(0, dtype=np.float32)
        self._parts: list[np.ndarray] = []
        self._filled = 0
        self._rng = np.random.default_rng(seed)

    def update(self, x: np.ndarray) -> None:
        """Observe one batch (values are added to the reservoir sample)."""
        seen_before = self.count
        x = self._prep(x)
        if x.size == 0:
            return
        room = self.max_samples - self._filled
        if room > 0:
            take = x[:room].copy()
            self._parts.append(take)
            self._filled += take.size
            x = x[room:]
            seen_before += take.size
        if x.size == 0:
            return
        buf = self.samples()  # consolidate
        # vectorised reservoir sampling (algorithm R): element t replaces slot j < cap
        t = np.arange(seen_before, seen_before + x.size, dtype=np.int64)
        j = self._rng.integers(0, t + 1)
        keep = j < self.max_samples
        if keep.any():
            slots, vals = j[keep][::-1], x[keep][::-1]
            uslots, first = np.unique(slots, return_index=True)  # last write wins
            buf[uslots] = vals[first]

    def samples(self) -> np.ndarray:
        """The current reservoir sample (float32, at most ``max_samples`` values)."""
        if self._parts:
            self._buf = np.concatenate([self._buf] + self._parts)
            self._parts = []
        return self._buf


class PercentileObserver(_SampleObserver):
    """Clips each tail at ``percentile`` (e.g. 99.99 keeps the central 99.99% per side)."""

    method = "percentile"

    def __init__(self, name: str = "activation", percentile: float = 99.99, **kw):
        super().__init__(name, **kw)
        if not 50.0 < float(percentile) <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)

    def range(self) -> tuple[float, float]:
        """Return ``(lo, hi)`` at the configured percentiles of the observed values."""
        self._data_range()
        s = self.samples()
        lo, hi = (float(v) for v in np.percentile(s, [100.0 - self.percentile,
                                                        self.percentile]))
        return self._finish(max(lo, self.min), min(hi, self.max))


class L2Observer(_SampleObserver):
    """Histogram search for the clip range minimizing the L2 error of an 8-bit quantizer.

    Builds ``bins``-bin histograms of the negative and positive parts (counts, sums and
    sums of squares, so clipping error at bin edges is exact), models rounding noise as
    ``step**2 / 12`` per in-range value, and minimizes over (lo, hi) bin edges by
    coordinate descent from the full range. Deterministic.
    """

    method = "l2"

    def __init__(self, name: str = "activation", bins: int = 2048, num_bits: int = 8, **kw):
        super().__init__(name, **kw)
        self.bins = int(bins)
        self.levels = (1 << int(num_bits)) - 1

    def _side(self, v: np.ndarray, extent: float):
        """Per-edge clip error and in-range count for values ``v >= 0`` up to ``extent``."""
        k = self.bins
        edges = np.arange(k + 1, dtype=np.float64) * (extent / k)
        if v.size == 0 or extent <= 0:
            z = np.zeros(k + 1)
            return edges, z, z
        v = v.astype(np.float64)
        idx = np.minimum((v * (k / extent)).astype(np.int64), k - 1)
        c = np.bincount(idx, minlength=k).astype(np.float64)
        s1 = np.bincount(idx, weights=v, minlength=k)
        s2 = np.bincount(idx, weights=v * v, minlength=k)
        # suffix sums: bins >= i are clipped when the threshold is edges[i]
        def suffix(a):
            out = np.zeros(k + 1)
            out[:k] = np.cumsum(a[::-1])[::-1]
            return out
        C, S1, S2 = suffix(c), suffix(s1), suffix(s2)
        clip = np.maximum(S2 - 2 * edges * S1 + edges * edges * C, 0.0)
        inside = c.sum() - C
        return edges, clip, inside

    def range(self) -> tuple[float, float]:
        """Return the L2-optimal ``(lo, hi)`` (lo is 0 for non-negative activations)."""
        dlo, dhi = self._data_range()
        if self.min == self.max or dlo == dhi:  # constant (or all-zero) activation
            return self._finish(dlo, dhi)
        s = self.samples()
        pos, neg = s[s > 0], -s[s < 0]
        zeros = float(s.size - pos.size - neg.size)
        pe, pclip, pin = self._side(pos, dhi)
        ne, nclip, nin = self._side(neg, -dlo)
        norm = 1.0 / (12.0 * self.levels ** 2)

        def cost(i_lo, i_hi):
            width = ne[i_lo] + pe[i_hi]
            n_in = zeros + nin[i_lo] + pin[i_hi]
            return nclip[i_lo] + pclip[i_hi] + n_in * width * width * norm

        i_lo = self.bins if dlo < 0 else 0
        i_hi = self.bins if dhi > 0 else 0
        for _ in range(4):
            prev = (i_lo, i_hi)
            if dhi > 0:
                c = cost(i_lo, np.arange(1, self.bins + 1))
                i_hi = 1 + int(np.argmin(c))
            if dlo < 0:
                c = cost(np.arange(1, self.bins + 1), i_hi)
                i_lo = 1 + int(np.argmin(c))
            if (i_lo, i_hi) == prev:
                break
        lo = -float(ne[i_lo]) if dlo < 0 else 0.0
        hi = float(pe[i_hi]) if dhi > 0 else 0.0
        if i_lo == self.bins:
            lo = dlo
        if i_hi == self.bins:
            hi = dhi
        return self._finish(lo, hi)


_OBSERVERS = {"l2": L2Observer, "minmax": MinMaxObserver, "percentile": PercentileObserver}


def make_observer(method: str = DEFAULT_METHOD, **kw) -> _Observer:
    """Create a range observer: 'l2' (default), 'minmax' or 'percentile' (``percentile=99.99``).

    Keywords: ``name`` (for messages), and for l2/percentile ``max_samples`` (2M) and
    ``seed``; l2 also ``bins`` (2048) and ``num_bits`` (8).
    """
    key = str(method).lower()
    if key not in _OBSERVERS:
        raise ConfigError(f"unknown calibration method {method!r}; valid methods: "
                          f"{', '.join(OBSERVER_METHODS)}")
    try:
        return _OBSERVERS[key](**kw)
    except TypeError as e:
        raise ConfigError(f"bad option for calibration method {key!r}: {e}") from e



def activation_error(x: np.ndarray, lo: float, hi: float) -> dict:
    """Return how 8-bit fake quantization over ``[lo, hi]`` treats activations ``x``.

    ``clipped``: fraction of values outside the range; ``rel_rmse``: RMS error of
    the quantized values relative to the RMS of ``x`` (0 for an all-zero ``x``).
    """
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return {"clipped": 0.0, "rel_rmse": 0.0}
    err = fake_quant(x, lo, hi) - x
    ref = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    rmse = float(np.sqrt(np.mean(np.square(err, dtype=np.float64))))
    return {"clipped": float(np.mean((x < lo) | (x > hi))), "rel_rmse": rmse / ref if ref > 0 else 0.0}


def output_error(x: np.ndarray, w: np.ndarray, lo: float, hi: float) -> float:
    """Relative RMS change of a layer's output ``x @ w`` when ``x`` is 8-bit fake-quantized over ``[lo, hi]``.

    ``w`` is the (dequantized) weight the layer serves with, so the number isolates what the
    activations' quantization adds; bias and Relu are left out (Relu only shrinks the change).
    0 for an all-zero output.
    """
    x = np.asarray(x, dtype=np.float32).reshape(-1, w.shape[0])
    if x.size == 0:
        return 0.0
    y = x.astype(np.float64) @ w
    err = fake_quant(x, lo, hi).astype(np.float64) @ w - y
    ref = float(np.sqrt(np.mean(y * y)))
    return float(np.sqrt(np.mean(err * err))) / ref if ref > 0 else 0.0
