"""Orchestrator artifacts: the KFP calibration Dataset layout, flat metrics and summaries for
metadata/XCom, and the FP32 reference a refreshed model is validated against.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Optional

from lpo.errors import DataError

log = logging.getLogger(__name__)

#: File name of the calibration data inside a calibration Dataset artifact directory.
CALIB_FILE = "calibration.npz"


def calibration_file(path: str) -> str:
    """Return the ``.npz`` of a calibration artifact: the file itself or ``<dir>/calibration.npz``."""
    if os.path.isdir(path):
        inner = os.path.join(path, CALIB_FILE)
        if not os.path.exists(inner):
            raise DataError(f"calibration artifact {path} has no {CALIB_FILE}")
        return inner
    return path


def auto_summary(auto: dict) -> dict:
    """The headline of an AUTO result (``OptimizeResult.auto``) for orchestrator metadata/XCom.

    Keeps the chosen opt_config, the budget, the tuning/confirmation figures and the row
    counts; drops the per-trial frontier (it is in the AUTO report).
    """
    keep = ("budget", "chosen", "tune", "confirm", "rows", "stopped", "seconds", "notes", "config_files",
            "report_files")
    out = {k: auto.get(k) for k in keep if k in auto}
    out["evaluations"] = len(auto.get("trials") or [])
    return out


def _finite(x: Any) -> Optional[float]:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def validation_metrics(report: dict) -> dict[str, float]:
    """Flatten the headline figures of a ``ValidationReport.to_dict()`` into ``{name: float}``.

    Keys: ``passed`` (1/0), ``rows``, ``auc_*``/``logloss_*`` when labels exist,
    ``max_abs_diff``/``mean_abs_diff`` of the prediction output, ``size_reduction``
    and ``latency_ratio_p50`` (largest batch size), ``requires_onednn``/``onednn`` (1/0: the
    optimized model needs oneDNN / oneDNN is on where it was validated). Missing figures are left out.
    """
    out: dict[str, float] = {"passed": 1.0 if report.get("passed") else 0.0}
    if _finite(report.get("rows")) is not None:
        out["rows"] = float(report["rows"])

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}_{k}" if prefix else str(k), v)
        elif not isinstance(obj, bool):
            f = _finite(obj)
            if f is not None:
                out[prefix] = f

    walk("", report.get("accuracy") or {})
    outputs = report.get("outputs") or {}
    pred = report.get("prediction_output")
    diff = outputs.get(pred) if pred in outputs else (next(iter(outputs.values())) if outputs else None)
    if isinstance(diff, dict):
        for k, v in diff.items():
            f = _finite(v)
            if f is not None and not isinstance(v, bool):
                out[k if "diff" in k else f"diff_{k}"] = f
    walk("size", report.get("size") or {})
    rt = report.get("runtime") or {}
    if rt:
        out["requires_onednn"] = 1.0 if (rt.get("requires") or {}).get("onednn") else 0.0
        out["onednn"] = 1.0 if rt.get("onednn") else 0.0
    lat = report.get("latency") or []
    if lat and isinstance(lat[-1], dict):
        walk(f"latency_b{lat[-1].get('batch_size', 'max')}", lat[-1])
    return {k.replace("/", "_").replace(" ", "_"): v for k, v in out.items()}


def fp32_model_with_checkpoint(model_path: str, ckpt_prefix: str, out_dir: str, *, overwrite: bool = False) -> str:
    """Write ``out_dir``: the FP32 SavedModel ``model_path`` with its variables from ``ckpt_prefix``.

    This is the reference a refreshed (optimized) model is validated against: the
    graph is unchanged by retraining, only the checkpoint is new. The V2 checkpoint
    files are copied and renamed to ``variables/variables.*``. ``out_dir`` is built in a
    temporary sibling and renamed into place (:func:`lpo.fsutil.atomic_output_dir`); a
    non-empty one is refused unless ``overwrite``.
    """
    from lpo.fsutil import atomic_output_dir

    ckpt_dir, base = os.path.split(os.path.abspath(ckpt_prefix))
    files = [f for f in os.listdir(ckpt_dir) if f.startswith(base + ".")] if os.path.isdir(ckpt_dir) else []
    if not any(f.endswith(".index") for f in files):
        raise DataError(f"checkpoint {ckpt_prefix} not found (no {base}.index)")
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        shutil.copytree(model_path, tmp, dirs_exist_ok=True, ignore=lambda d, names: (
            ["variables"] if os.path.samefile(d, model_path) else []))
        var_dir = os.path.join(tmp, "variables")
        os.makedirs(var_dir)
        for f in files:
            shutil.copy2(os.path.join(ckpt_dir, f), os.path.join(var_dir, "variables" + f[len(base):]))
    log.info("Wrote FP32 reference %s (graph of %s, checkpoint %s)", out_dir, model_path, ckpt_prefix)
    return out_dir
