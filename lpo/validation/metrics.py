"""Pure-numpy binary classification metrics (no TensorFlow, no sklearn)."""
from __future__ import annotations

import numpy as np

__all__ = ["auc", "logloss", "auc_delta", "soft_auc", "soft_auc_delta", "calibration_table"]


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


def soft_auc(p, q) -> float:
    """Expected AUC of scores ``q`` when row i is a click with probability ``p[i]`` (soft labels).

    ``E[AUC](q) = sum_{i != j} p_i (1 - p_j) [q_i > q_j] / sum_{i != j} p_i (1 - p_j)``, ties
    counting 1/2; exact, O(n log n): sort by ``q`` and, per tie group, pair its ``p`` mass with
    the ``1 - p`` mass of the groups below it (and half of its own, less each row paired with
    itself). With ``p`` the FP32 model's probabilities, ``q = p`` maximises it, so
    ``soft_auc(p, p) - soft_auc(p, q)`` is the harm of the reordering alone (no label noise).
    NaN when the denominator is 0 (every ``p`` is 0, or every ``p`` is 1).
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"soft labels ({p.size}) and scores ({q.size}) differ in length")
    order = np.argsort(q, kind="mergesort")
    sq, sp = q[order], p[order]
    _, first, counts = np.unique(sq, return_index=True, return_counts=True)
    pos = np.add.reduceat(sp, first) if sp.size else np.zeros(0)  # click mass per tie group
    neg = np.add.reduceat(1.0 - sp, first) if sp.size else np.zeros(0)
    self_pairs = np.add.reduceat(sp * (1.0 - sp), first) if sp.size else np.zeros(0)
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])  # 1-p mass strictly below each group
    num = float(np.sum(pos * below) + 0.5 * np.sum(pos * neg - self_pairs))
    den = float(p.sum() * (1.0 - p).sum() - np.sum(p * (1.0 - p)))
    return num / den if den > 0 else float("nan")


def soft_auc_delta(p, q, *, blocks: int = 20, seed: int = 0) -> tuple[float, float]:
    """``soft_auc(p, q) - soft_auc(p, p)`` (<= 0) and its standard error over the rows.

    The error is a delete-a-group jackknife over ``blocks`` random row groups: it measures how
    much the estimate would move on other unlabelled rows, not label noise (there is none).
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    full = soft_auc(p, q) - soft_auc(p, p)
    k = int(min(blocks, p.size))
    if k < 2:
        return full, float("nan")
    group = np.random.default_rng(seed).permutation(p.size) % k
    vals = np.array([soft_auc(p[group != g], q[group != g]) - soft_auc(p[group != g], p[group != g])
                     for g in range(k)])
    se = float(np.sqrt((k - 1) / k * np.sum((vals - vals.mean()) ** 2)))
    return float(full), se


def calibration_table(labels, preds, bins: int = 10) -> list[dict]:
    """Reliability curve: rows in ``bins`` equal-count bins of ``preds``; each bin's mean prediction and CTR."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(preds, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and preds ({p.size}) differ in length")
    order = np.argsort(p, kind="mergesort")
    out = []
    for part in np.array_split(order, min(bins, max(1, p.size))):
        if part.size:
            out.append({"rows": int(part.size), "p_lo": float(p[part[0]]), "p_hi": float(p[part[-1]]),
                        "mean_pred": float(p[part].mean()), "ctr": float(y[part].mean())})
    return out
