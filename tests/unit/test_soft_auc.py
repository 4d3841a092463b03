"""The soft-label expected AUC against its O(n^2) definition (numpy reference), and the calibration table."""
import numpy as np
import pytest

from lpo.validation.metrics import auc, calibration_table, soft_auc, soft_auc_delta


def reference(p, q):
    """sum_{i != j} p_i (1 - p_j) [q_i > q_j] (ties 1/2) / sum_{i != j} p_i (1 - p_j), pair by pair."""
    w = np.outer(p, 1.0 - p)
    np.fill_diagonal(w, 0.0)
    cmp = (q[:, None] > q[None, :]) + 0.5 * (q[:, None] == q[None, :])
    return float((w * cmp).sum() / w.sum())


@pytest.mark.parametrize("seed", range(6))
def test_soft_auc_equals_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    p = rng.random(n)
    p[rng.random(n) < 0.1] = rng.choice([0.0, 1.0])  # hard labels among the soft ones
    q = np.round(p + rng.normal(0, 0.1, n), int(rng.integers(1, 3)))  # coarse rounding: many ties
    assert abs(soft_auc(p, q) - reference(p, q)) < 1e-12
    q2 = rng.integers(0, 3, n).astype(float)  # three values only
    assert abs(soft_auc(p, q2) - reference(p, q2)) < 1e-12


def test_soft_auc_special_cases():
    rng = np.random.default_rng(7)
    y = (rng.random(200) < 0.3).astype(float)
    q = rng.random(200)
    assert np.isclose(soft_auc(y, q), auc(y, q), rtol=1e-12)  # 0/1 soft labels: the usual AUC
    p = rng.random(200)
    assert soft_auc(p, p) >= max(soft_auc(p, q), soft_auc(p, p + rng.normal(0, 0.05, 200)))  # p ranks best
    assert np.isclose(soft_auc(p, np.zeros(200)), 0.5, rtol=1e-12)  # all tied
    assert np.isnan(soft_auc(np.ones(5), q[:5]))
    with pytest.raises(ValueError):
        soft_auc(p, q[:5])
    d, se = soft_auc_delta(p, p)
    assert d == 0.0 and se == 0.0
    d, se = soft_auc_delta(p, p + rng.normal(0, 0.05, 200))
    assert d < 0 and 0 < se < abs(d) * 5


def test_calibration_table_bins():
    p = np.linspace(0.0, 1.0, 100)
    y = (p > 0.5).astype(float)
    t = calibration_table(y, p, bins=4)
    assert [r["rows"] for r in t] == [25] * 4 and t[0]["ctr"] == 0.0 and t[-1]["ctr"] == 1.0
    assert np.isclose(sum(r["mean_pred"] * r["rows"] for r in t) / 100, p.mean())
