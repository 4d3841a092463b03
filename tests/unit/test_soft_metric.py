"""AUTO's soft-label Metric: the soft ΔAUC is the budgeted loss, labelled rows only veto (numpy only)."""
import numpy as np

from lpo.tune.evaluate import Metric
from lpo.validation.metrics import auc_delta, soft_auc


def test_soft_metric_scores_the_soft_delta_and_labels_only_veto():
    rng = np.random.default_rng(0)
    n, lab = 20000, 400
    p = rng.random(n)
    y = (rng.random(lab) < p[:lab]).astype(float)
    small = np.clip(p + rng.normal(0, 1e-3, n), 0, 1)
    m = Metric(p, y, budget=1e-3, margin_sigmas=2.0, harm="soft_auc")
    out = m.measure(small)
    assert m.kind == "soft_auc" and out["delta_auc"] == soft_auc(p, small) - soft_auc(p, p) < 0
    assert out["loss"] == -out["delta_auc"] and out["score"] == out["loss"] + 2.0 * out["se"] and out["feasible"]
    assert (out["labelled_delta_auc"], out["labelled_se"]) == auc_delta(y, p[:lab], small[:lab])
    # the labelled rows reversed: a tiny share of the soft pairs, clear evidence on the labelled ones
    bad = p.copy()
    bad[:lab] = 1.0 - p[:lab]
    out = Metric(p, y, budget=0.05, margin_sigmas=2.0, harm="soft_auc").measure(bad)
    assert out["score"] <= 0.05 and out["labelled_veto"] and not out["feasible"]
    assert Metric(p, None, budget=0.05, margin_sigmas=2.0, harm="soft_auc").measure(bad)["feasible"]
