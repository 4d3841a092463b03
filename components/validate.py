"""Validate step: the gate. Compares an optimized model with its FP32 original.

A breached threshold fails the step (``lpo.ValidationFailed``), which fails the run.
"""
from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output

from lpo.components.defaults import with_defaults
from lpo.components.image import LPO_IMAGE
from lpo.options import BATCH_SIZES_TEXT, ORCHESTRATOR_THRESHOLDS, VALIDATE


@dsl.component(base_image=LPO_IMAGE, install_kfp_package=False)
@with_defaults(VALIDATE, **ORCHESTRATOR_THRESHOLDS, batch_sizes=BATCH_SIZES_TEXT)
def validate(
    original: Input[Model],
    optimized: Input[Model],
    data: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    report_md: Output[Markdown],
    *,
    max_auc_drop: float,
    max_abs_diff: float,
    max_latency_ratio: float,
    min_size_reduction: float,
    iters: int,
    batch_sizes: str,
    max_rows: int = 0,
):
    """Validate ``optimized`` against ``original`` on held-out ``data``; fail on a breach.

    Args:
        original: FP32 SavedModel.
        optimized: optimized (or refreshed) SavedModel.
        data: held-out ``.npz`` (serving inputs + optional ``label``).
        metrics: figures logged with ``log_metric`` (AUC, |diff|, size, latency, ``passed``).
        report: the HTML report.
        report_md: the Markdown report.
        max_auc_drop: largest allowed AUC drop.
        max_abs_diff: largest allowed |prediction diff| (negative: not checked).
        max_latency_ratio: largest optimized/original p50 ratio (negative: not checked).
        min_size_reduction: smallest variables size reduction, 0..1 (negative: not checked).
        iters: timed iterations per batch size.
        batch_sizes: comma-separated latency batch sizes.
        max_rows: use at most this many rows of ``data`` (0: all).
    """
    from lpo.log import quiet_tensorflow_process

    quiet_tensorflow_process()  # before TF loads: its start-up noise stays out of the step's log
    import logging
    import os
    import shutil
    import tempfile

    import lpo
    from lpo.orchestration.artifacts import validation_metrics
    from lpo.orchestration.steps import validate_step

    report_dir = tempfile.mkdtemp(prefix="lpo-validate-")
    try:
        result = validate_step(
            original.path, optimized.path, data, max_auc_drop=max_auc_drop, max_abs_diff=max_abs_diff,
            max_latency_ratio=max_latency_ratio, min_size_reduction=min_size_reduction,
            iters=iters, batch_sizes=batch_sizes, max_rows=max_rows, report_dir=report_dir, as_dict=False)
        for name, value in validation_metrics(result.to_dict()).items():
            metrics.log_metric(name, value)
        shutil.copyfile(os.path.join(report_dir, "report.html"), report.path)
        shutil.copyfile(os.path.join(report_dir, "report.md"), report_md.path)
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)
    report.metadata["passed"] = result.passed
    report.metadata["runtime"] = result.to_dict().get("runtime") or {}
    if not result.passed:
        logging.getLogger("lpo").error("validation gate failed: %s", result.summary())
        raise lpo.ValidationFailed(result.summary(), report=result)


@dsl.container_component
def validate_cli(
    original: Input[Model],
    optimized: Input[Model],
    data: str,
    report: Output[Artifact],
    max_auc_drop: float = ORCHESTRATOR_THRESHOLDS["max_auc_drop"],
    max_abs_diff: float = ORCHESTRATOR_THRESHOLDS["max_abs_diff"],
    max_latency_ratio: float = ORCHESTRATOR_THRESHOLDS["max_latency_ratio"],
    min_size_reduction: float = ORCHESTRATOR_THRESHOLDS["min_size_reduction"],
    iters: int = VALIDATE.iters,
    batch_sizes: str = BATCH_SIZES_TEXT,
):
    """The validate step as ``lpo validate`` in :data:`LPO_IMAGE` (exit 3 fails the step).

    Thresholds as in :func:`validate` (negative: not checked). ``report`` is a directory
    with ``report.html``, ``report.md`` and ``report.json``.
    """
    return dsl.ContainerSpec(
        image=LPO_IMAGE,
        command=["lpo"],
        args=["validate", original.path, optimized.path, data, "--report-dir", report.path,
              "--max-auc-drop", max_auc_drop, "--max-abs-diff", max_abs_diff,
              "--max-latency-ratio", max_latency_ratio, "--min-size-reduction", min_size_reduction,
              "--iters", iters, "--batch-sizes", batch_sizes])
