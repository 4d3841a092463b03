"""AUTO: the smallest, then fastest, plan whose accuracy stays within a budget.

``lpo.optimize(model, out, data_type='AUTO', eval_file=..., max_auc_drop=1e-4)``.
:mod:`~lpo.tune.space` builds each node's ladder of forms, :mod:`~lpo.tune.simulate`
scores weight-only forms exactly without rebuilding, :mod:`~lpo.tune.evaluate` holds the
data split, metrics, trials and real builds, :mod:`~lpo.tune.search` the sensitivity /
back-off / tighten / speed phases, :mod:`~lpo.tune.frontier` the report, and
:mod:`~lpo.tune.auto` ties them to ``optimize``.
"""
from lpo.tune.auto import AutoResult, auto_optimize

__all__ = ["auto_optimize", "AutoResult"]
