"""Pure-numpy binary classification metrics (no TensorFlow, no sklearn)."""
from __future__ import annotations

import numpy as np

__all__ = ["auc", "logloss", "auc_delta"]


def auc(labels, preds) -> float:
    """Rank-based ROC AUC (Mann-Whitney U); tied scores get their average rank.

    Labels are binarized at 0.5. Returns NaN when only one class is present.
    """
    y = np.asarray(labels).ravel().astype(np.float64) > 0.5
    p = np.asarray(preds, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and preds ({p.size}) differ in length")
    npos = int(y.sum())
    nneg = y.size - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    _, first, counts = np.unique(sp, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(p.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def logloss(labels, preds, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, with predictions clipped to ``[eps, 1 - eps]``."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(preds, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and preds ({p.size}) differ in length")
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; ties get their average rank."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (first + (counts + 1) / 2.0)[inv]


def auc_delta(labels, base, other) -> tuple[float, float]:
    """``AUC(other) - AUC(base)`` on the same rows and its standard error (DeLong et al. 1988, paired).

    The error accounts for the correlation of the two prediction sets (computed with the
    midrank form of Sun & Xu 2014, O(n log n)). Returns ``(nan, nan)`` with one class only.
    """
    y = np.asarray(labels).ravel().astype(np.float64) > 0.5
    m, n = int(y.sum()), int(y.size - y.sum())
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    aucs, v01, v10 = [], [], []
    for p in (base, other):
        p = np.asarray(p, dtype=np.float64).ravel()
        if p.shape != y.shape:
            raise ValueError(f"labels ({y.size}) and preds ({p.size}) differ in length")
        x, z = p[y], p[~y]
        tx, tz, ta = _midranks(x), _midranks(z), _midranks(np.concatenate([x, z]))
        aucs.append((ta[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v01.append((ta[:m] - tx) / n)  # per positive: the fraction of negatives ranked below it
        v10.append(1.0 - (ta[m:] - tz) / m)  # per negative: the fraction of positives ranked above it
    s = (np.cov(np.asarray(v01)) / m if m > 1 else np.zeros((2, 2))) + \
        (np.cov(np.asarray(v10)) / n if n > 1 else np.zeros((2, 2)))
    var = max(float(s[0, 0] + s[1, 1] - 2.0 * s[0, 1]), 0.0)
    return float(aucs[1] - aucs[0]), float(np.sqrt(var))
