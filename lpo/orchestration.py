"""Glue shared by the Kubeflow components and the Airflow operators.

Nothing here optimizes anything: it maps between the public API (:mod:`lpo`) and
what an orchestrator needs (artifact layouts, flat metrics, an atomic publish).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Optional

from lpo.errors import ConfigError, DataError

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
    and ``latency_ratio_p50`` (largest batch size). Missing figures are left out.
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
    lat = report.get("latency") or []
    if lat and isinstance(lat[-1], dict):
        walk(f"latency_b{lat[-1].get('batch_size', 'max')}", lat[-1])
    return {k.replace("/", "_").replace(" ", "_"): v for k, v in out.items()}


def fp32_model_with_checkpoint(model_path: str, ckpt_prefix: str, out_dir: str) -> str:
    """Write ``out_dir``: the FP32 SavedModel ``model_path`` with its variables from ``ckpt_prefix``.

    This is the reference a refreshed (optimized) model is validated against: the
    graph is unchanged by retraining, only the checkpoint is new. The V2 checkpoint
    files are copied and renamed to ``variables/variables.*``.
    """
    ckpt_dir, base = os.path.split(os.path.abspath(ckpt_prefix))
    files = [f for f in os.listdir(ckpt_dir) if f.startswith(base + ".")] if os.path.isdir(ckpt_dir) else []
    if not any(f.endswith(".index") for f in files):
        raise DataError(f"checkpoint {ckpt_prefix} not found (no {base}.index)")
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(model_path):
        src = os.path.join(model_path, name)
        if name == "variables":
            continue
        dst = os.path.join(out_dir, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
    var_dir = os.path.join(out_dir, "variables")
    os.makedirs(var_dir, exist_ok=True)
    for f in files:
        shutil.copy2(os.path.join(ckpt_dir, f), os.path.join(var_dir, "variables" + f[len(base):]))
    log.info("Wrote FP32 reference %s (graph of %s, checkpoint %s)", out_dir, model_path, ckpt_prefix)
    return out_dir


def publish_model(model_path: str, serving_dir: str, version: str) -> dict:
    """Publish ``model_path`` into ``serving_dir`` atomically; return where it went.

    The model is copied to ``serving_dir/versions/<version>`` (through a temp sibling
    and a rename), then the symlink ``serving_dir/current`` is swapped to it with
    ``os.replace`` of a fresh symlink, so a server following ``current`` sees either
    the old or the new model, never a partial one. Publishing the same version
    twice replaces it.
    """
    if not os.path.isdir(model_path):
        raise DataError(f"model to publish not found: {model_path}")
    version = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(version)) or "model"
    versions = os.path.join(serving_dir, "versions")
    os.makedirs(versions, exist_ok=True)
    dest = os.path.join(versions, version)
    tmp = tempfile.mkdtemp(prefix=f".{version}.publish-", dir=versions)
    try:
        staged = os.path.join(tmp, "model")
        shutil.copytree(model_path, staged)
        if os.path.exists(dest):
            old = dest + ".old-" + os.path.basename(tmp)
            os.rename(dest, old)
            os.rename(staged, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staged, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    current = os.path.join(serving_dir, "current")
    link_tmp = os.path.join(serving_dir, f".current.{os.getpid()}.tmp")
    if os.path.lexists(link_tmp):
        os.remove(link_tmp)
    os.symlink(os.path.join("versions", version), link_tmp)
    os.replace(link_tmp, current)
    log.info("Published %s as %s (current -> versions/%s)", model_path, dest, version)
    return {"published": dest, "current": current, "version": version}
