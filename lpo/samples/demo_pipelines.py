"""Run the lpo Kubeflow pipelines locally on the sample model (``lpo demo --pipeline kfp``).

Uses ``kfp.local.SubprocessRunner(use_venv=False)``: every step runs as a
subprocess of the current Python (which must have lpo and the ``kfp`` extra),
with real artifact passing under ``<out_dir>/kfp-outputs``. No Docker, no cluster.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any, Optional

log = logging.getLogger(__name__)


@dataclasses.dataclass
class KfpDemoResult:
    """Where the local pipeline runs left their artifacts."""

    out_dir: str
    pipeline_root: str
    optimized_model: str
    optimize_report_html: str
    optimize_metrics: dict
    new_checkpoint: str
    refreshed_model: str
    refresh_report_html: str
    refresh_metrics: dict
    data_type: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A few lines saying where the artifacts and the HTML reports landed."""
        auc = self.optimize_metrics.get("auc_delta")
        lines = [
            f"KFP optimize_pipeline ({self.data_type}) passed the gate"
            + (f" (AUC delta {auc:+.6f})" if isinstance(auc, float) else ""),
            f"  optimized model: {self.optimized_model}",
            f"  HTML report:     {self.optimize_report_html}",
            "KFP refresh_pipeline passed the gate",
            f"  new checkpoint:  {self.new_checkpoint}",
            f"  refreshed model: {self.refreshed_model}",
            f"  HTML report:     {self.refresh_report_html}",
            f"all pipeline artifacts: {self.pipeline_root}",
        ]
        return "\n".join(lines)


def init_local_kfp(pipeline_root: str) -> None:
    """Point ``kfp.local`` at ``pipeline_root`` with a no-venv ``SubprocessRunner``."""
    from kfp import local

    os.makedirs(pipeline_root, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
               raise_on_error=True)


def _quiet_image_warning():
    # The SubprocessRunner warns when an image name lacks "python"; ours is the lpo image,
    # which is a Python image, and the local run does not use it anyway.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)


def run_kfp_demo(out_dir: str, *, variant: str = "resource", data_type: str = "INT8",
                 cache_dir: Optional[str] = None, validate_iters: int = 5,
                 validate_batch_sizes: str = "1,64", calib_rows: int = 512) -> KfpDemoResult:
    """Run ``optimize_pipeline`` then ``refresh_pipeline`` locally on the sample model.

    Args:
        out_dir: working directory (created); pipeline artifacts go to ``<out_dir>/kfp-outputs``.
        variant: sample model variant (see :data:`lpo.samples.tf1.VARIANTS`).
        data_type: target precision for the optimize pipeline.
        cache_dir: sample model cache (default: :func:`lpo.samples.tf1.default_cache_dir`).
        validate_iters: timed iterations per batch size in the validate steps.
        validate_batch_sizes: comma-separated latency batch sizes.
        calib_rows: calibration rows sampled from the sample's training CSV.

    Returns:
        KfpDemoResult with the paths of the models, HTML reports and metrics.

    Raises:
        RuntimeError: when a pipeline task fails (e.g. the validation gate).
    """
    from lpo.components.pipelines import optimize_pipeline, refresh_pipeline
    from lpo.samples.tf1 import cached_sample, perturb_checkpoint

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    sample = cached_sample(variant, cache_dir=cache_dir)
    root = os.path.join(out_dir, "kfp-outputs")
    init_local_kfp(root)
    _quiet_image_warning()

    log.info("running optimize_pipeline (%s) on %s", data_type, sample.model_path)
    opt = optimize_pipeline(
        model_uri=sample.model_path, calib_source=sample.train_csv_path, heldout_data=sample.heldout_path,
        data_type=data_type, calib_rows=calib_rows, validate_iters=validate_iters,
        validate_batch_sizes=validate_batch_sizes)
    optimized = opt.outputs["optimized"]

    ckpt_dir = os.path.join(out_dir, "retrained")
    os.makedirs(ckpt_dir, exist_ok=True)
    ckpt = perturb_checkpoint(sample.model_path, os.path.join(ckpt_dir, "ckpt"))
    log.info("running refresh_pipeline with %s", ckpt)
    ref = refresh_pipeline(
        opt_model_uri=optimized.path, fp32_model_uri=sample.model_path, ckpt_prefix=ckpt,
        heldout_data=sample.heldout_path, validate_iters=validate_iters,
        validate_batch_sizes=validate_batch_sizes)
    return KfpDemoResult(
        out_dir=out_dir, pipeline_root=root, optimized_model=optimized.path,
        optimize_report_html=opt.outputs["report"].path,
        optimize_metrics=dict(opt.outputs["metrics"].metadata),
        new_checkpoint=ckpt, refreshed_model=ref.outputs["refreshed"].path,
        refresh_report_html=ref.outputs["report"].path,
        refresh_metrics=dict(ref.outputs["metrics"].metadata), data_type=data_type)


if __name__ == "__main__":  # pragma: no cover - manual run
    import sys

    logging.basicConfig(level=logging.INFO)
    print(run_kfp_demo(sys.argv[1] if len(sys.argv) > 1 else "lpo-kfp-demo").summary())
