"""Pure-numpy binary classification metrics (no TensorFlow, no sklearn)."""
from __future__ import annotations

import numpy as np

__all__ = ["auc", "logloss"]


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
