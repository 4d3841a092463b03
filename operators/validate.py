"""The validate step (the gate) as an Airflow operator."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from lpo.operators.common import fail_fast, path_arg, quiet
from lpo.options import ORCHESTRATOR_THRESHOLDS, VALIDATE
from lpo.orchestration.steps import validate_step


class LpoValidateOperator(BaseOperator):
    """Compare an optimized model with its original; fail the task on a breach (``lpo.validate``).

    Args:
        original: FP32 SavedModel.
        optimized: optimized SavedModel.
        data: held-out ``.npz`` (serving inputs + optional ``label``).
        report_dir: where report.html/.md/.json go (optional).
        max_auc_drop, max_abs_diff, max_latency_ratio, min_size_reduction: thresholds;
            ``None``, ``''`` or a negative number turns one off.
        iters: timed iterations per batch size.
        batch_sizes: latency batch sizes (list or ``"1,64"``).
        max_rows: use at most this many rows of ``data`` (``None``/0: all).

    Returns (XCom): ``{"passed", "summary", "metrics", "report_files"}``. On a breach the
    same dict is pushed under the XCom key ``report`` and the task fails.
    """

    template_fields: Sequence[str] = ("original", "optimized", "data", "report_dir", "max_auc_drop",
                                      "max_abs_diff", "max_latency_ratio", "min_size_reduction", "iters",
                                      "batch_sizes", "max_rows")
    ui_color = "#fdf1d6"

    def __init__(self, *, original: str, optimized: str, data: str, report_dir: Optional[str] = None,
                 max_auc_drop: Any = ORCHESTRATOR_THRESHOLDS["max_auc_drop"],
                 max_abs_diff: Any = ORCHESTRATOR_THRESHOLDS["max_abs_diff"],
                 max_latency_ratio: Any = ORCHESTRATOR_THRESHOLDS["max_latency_ratio"],
                 min_size_reduction: Any = ORCHESTRATOR_THRESHOLDS["min_size_reduction"],
                 iters: Any = VALIDATE.iters, batch_sizes: Any = VALIDATE.batch_sizes, max_rows: Any = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.original = original
        self.optimized = optimized
        self.data = data
        self.report_dir = report_dir
        self.max_auc_drop = max_auc_drop
        self.max_abs_diff = max_abs_diff
        self.max_latency_ratio = max_latency_ratio
        self.min_size_reduction = min_size_reduction
        self.iters = iters
        self.batch_sizes = batch_sizes
        self.max_rows = max_rows

    @fail_fast
    @quiet
    def execute(self, context) -> dict:
        out = validate_step(
            path_arg("original", self.original, must_exist=True), path_arg("optimized", self.optimized, must_exist=True),
            path_arg("data", self.data, must_exist=True), max_auc_drop=self.max_auc_drop,
            max_abs_diff=self.max_abs_diff, max_latency_ratio=self.max_latency_ratio,
            min_size_reduction=self.min_size_reduction, iters=self.iters, batch_sizes=self.batch_sizes,
            max_rows=self.max_rows, report_dir=self.report_dir)
        if not out["passed"]:
            ti = context.get("ti") if hasattr(context, "get") else None
            if ti is not None:
                ti.xcom_push(key="report", value=out)
            raise AirflowFailException(f"validation gate failed: {out['summary']}")
        return out
