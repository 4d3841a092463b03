"""``lpo demo``: optimize the bundled sample model to BF16, FP16 and INT8 and compare.

Builds (or reuses) the sample DLRM-like SavedModel, optimizes it three ways,
validates each against the FP32 original with :func:`lpo.validate`, and prints
a side-by-side table of size, AUC and max prediction difference. The console gets
one progress line per step; the details (lpo's per-node report, the KFP executor
output) go to ``<out>/demo.log`` and ``<out>/kfp.log`` unless ``verbose``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
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
    logs: dict = field(default_factory=dict)

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
                  f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})", "",
                  f"written to {self.out_dir}/:"]
        for r in self.rows:
            lines.append(f"  {os.path.relpath(r.model_path, self.out_dir)}/  "
                         f"{os.path.relpath(r.report, self.out_dir)}")
        if self.pipeline:
            p = self.pipeline
            rel = (lambda x: os.path.relpath(x, self.out_dir) if str(x).startswith(self.out_dir) else x)
            lines.append(f"  KFP optimize_pipeline ({p.get('data_type')}, kfp.local, gate passed): "
                         f"{rel(p['optimized_model'])}")
            lines.append(f"      report {rel(p['optimize_report_html'])}")
            lines.append(f"  KFP refresh_pipeline (gate passed): {rel(p['refreshed_model'])}")
            lines.append(f"      report {rel(p['refresh_report_html'])}")
        for name, path in self.logs.items():
            lines.append(f"  {os.path.relpath(path, self.out_dir)}  ({name})")
        return "\n".join(lines)


@contextlib.contextmanager
def _details_to(path: str, verbose: bool):
    """Send lpo's log records to ``path``; on the console keep only this module's lines and warnings."""
    if verbose:
        yield
        return
    root = logging.getLogger("lpo")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)

    def console_filter(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == __name__

    consoles = [h for h in root.handlers]
    for h in consoles:
        h.addFilter(console_filter)
    root.addHandler(handler)
    old_level = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
        for h in consoles:
            h.removeFilter(console_filter)


@contextlib.contextmanager
def _fds_to(path: str, verbose: bool):
    """Send everything written to stdout and stderr (subprocesses included) to ``path``."""
    if verbose:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def run_demo(out=None, keep=False, quiet=False, pipeline=None, verbose=False) -> DemoResult:
    """Run the demo; write models and reports under ``out`` (default: a new temp dir).

    ``pipeline='kfp'`` also runs the KFP optimize and refresh pipelines locally.
    Unless ``verbose``, lpo's detailed log goes to ``<out>/demo.log`` and the KFP
    run's output to ``<out>/kfp.log``; the console shows one line per step.
    """
    import lpo
    from lpo.samples.tf1 import cached_sample

    out_dir = os.path.abspath(out or tempfile.mkdtemp(prefix="lpo-demo-"))
    os.makedirs(out_dir, exist_ok=True)
    result = DemoResult(out_dir=out_dir, sample_model="")
    details = os.path.join(out_dir, "demo.log")
    if not verbose:
        result.logs["lpo log: per-node reports, calibration"] = details
    with _details_to(details, verbose):
        log.info("Building (or reusing) the sample model ...")
        sample = cached_sample("resource")
        result.sample_model = sample.model_path
        for dtype in DTYPES:
            dest = os.path.join(out_dir, f"model_{dtype.lower()}")
            if os.path.isdir(dest):
                shutil.rmtree(dest)
            log.info("Optimizing to %s and validating ...", dtype)
            lpo.optimize(sample.model_path, dest, data_type=dtype, calib_file=sample.calib_path, quiet=quiet)
            report_dir = os.path.join(out_dir, f"report_{dtype.lower()}")
            rep = lpo.validate(sample.model_path, dest, sample.heldout_path, batch_sizes=(512,), iters=20,
                               report_dir=report_dir, raise_on_fail=False)
            d = rep.to_dict()
            acc, (lat,) = d["accuracy"], d["latency"]
            out_name = d["prediction_output"]
            result.rows.append(DemoRow(
                dtype=dtype, model_path=dest, size_ratio=d["size"]["variables_ratio"],
                auc_fp32=acc["auc_original"], auc=acc["auc_optimized"], auc_delta=acc["auc_delta"],
                max_abs_diff=d["outputs"][out_name]["max_abs_diff"], latency_ratio_b512=lat["p50_ratio"],
                report=os.path.join(report_dir, "report.html")))
        if pipeline == "kfp":
            from lpo.samples.demo_pipelines import run_kfp_demo

            kfp_log = os.path.join(out_dir, "kfp.log")
            log.info("Running the KFP optimize and refresh pipelines locally (kfp.local) ...%s",
                     "" if verbose else f" output: {kfp_log}")
            if not verbose:
                result.logs["KFP executor output"] = kfp_log
            with _fds_to(kfp_log, verbose):
                result.pipeline = run_kfp_demo(os.path.join(out_dir, "kfp")).to_dict()
    return result
