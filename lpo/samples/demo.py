"""``lpo demo``: optimize the bundled sample model to BF16, FP16 and INT8 and compare.

Builds (or reuses) the sample DLRM-like SavedModel, optimizes it three ways,
validates each against the FP32 original with :func:`lpo.validate`, and prints
a side-by-side table of size, AUC and max prediction difference.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

DTYPES = ("BF16", "FP16", "INT8")


@dataclass
class DemoRow:
    """One optimized variant of the sample model against FP32."""

    dtype: str
    model_path: str
    size_ratio: float
    auc_fp32: float
    auc: float
    auc_delta: float
    max_abs_diff: float
    latency_ratio_b512: float
    report: str


@dataclass
class DemoResult:
    """Everything ``lpo demo`` produced."""

    out_dir: str
    sample_model: str
    rows: list[DemoRow] = field(default_factory=list)
    pipeline: dict | None = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    def summary(self) -> str:
        """The side-by-side table printed by ``lpo demo``."""
        head = f"{'dtype':<6} {'size':>7} {'AUC':>8} {'ΔAUC':>10} {'max|Δp|':>9} {'lat b512':>9}"
        lines = [f"sample model: {self.sample_model}", "", head, "-" * len(head)]
        if self.rows:
            lines.append(f"{'FP32':<6} {1.0:>6.3f}x {self.rows[0].auc_fp32:>8.4f} {0.0:>+10.2e} {0.0:>9.2e} "
                         f"{1.0:>8.2f}x")
        for r in self.rows:
            lines.append(f"{r.dtype:<6} {r.size_ratio:>6.3f}x {r.auc:>8.4f} {r.auc_delta:>+10.2e} "
                         f"{r.max_abs_diff:>9.2e} {r.latency_ratio_b512:>8.2f}x")
        lines += ["", "size = variables bytes vs FP32; lat b512 = p50 latency at batch 512 vs FP32 "
                  f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})",
                  f"optimized models and HTML reports: {self.out_dir}"]
        if self.pipeline:
            lines.append("KFP pipelines (kfp.local, SubprocessRunner):")
            lines += [f"  {k}: {v}" for k, v in self.pipeline.items() if isinstance(v, (str, int, float))]
        return "\n".join(lines)


def run_demo(out=None, keep=False, quiet=False, pipeline=None) -> DemoResult:
    """Run the demo; write models and reports under ``out`` (default: a new temp dir).

    ``pipeline='kfp'`` also runs the KFP optimize and refresh pipelines locally.
    """
    import lpo
    from lpo.samples.tf1 import cached_sample

    out_dir = os.path.abspath(out or tempfile.mkdtemp(prefix="lpo-demo-"))
    os.makedirs(out_dir, exist_ok=True)
    log.info("Building (or reusing) the sample model ...")
    sample = cached_sample("resource")
    result = DemoResult(out_dir=out_dir, sample_model=sample.model_path)
    for dtype in DTYPES:
        dest = os.path.join(out_dir, f"model_{dtype.lower()}")
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        log.info("Optimizing to %s ...", dtype)
        lpo.optimize(sample.model_path, dest, data_type=dtype, calib_file=sample.calib_path, quiet=quiet)
        report_dir = os.path.join(out_dir, f"report_{dtype.lower()}")
        rep = lpo.validate(sample.model_path, dest, sample.heldout_path, batch_sizes=(512,), iters=20,
                           report_dir=report_dir, raise_on_fail=False)
        d = rep.to_dict()
        acc, (lat,) = d["accuracy"], d["latency"]
        out_name = d["prediction_output"]
        result.rows.append(DemoRow(
            dtype=dtype, model_path=dest, size_ratio=d["size"]["variables_ratio"], auc_fp32=acc["auc_original"],
            auc=acc["auc_optimized"], auc_delta=acc["auc_delta"], max_abs_diff=d["outputs"][out_name]["max_abs_diff"],
            latency_ratio_b512=lat["p50_ratio"], report=os.path.join(report_dir, "report.html")))
    if pipeline == "kfp":
        from lpo.samples.demo_pipelines import run_kfp_demo

        log.info("Running the KFP optimize and refresh pipelines locally (kfp.local) ...")
        result.pipeline = run_kfp_demo(os.path.join(out_dir, "kfp")).to_dict()
    return result
