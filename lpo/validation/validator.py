"""Compare an optimized SavedModel with its original: accuracy, output diffs, latency, size.

Both models are loaded in one process, each in its own ``tf.Graph`` and
``tf.compat.v1.Session`` (TF1 loader), fed the serving signature's inputs and
asked for all of its outputs. Latency runs are interleaved (A, B, A, B, ...) so
that machine drift affects both models alike.
"""
from __future__ import annotations

import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpo import options as opts
from lpo.errors import ConfigError, DataError, ModelFormatError, ValidationFailed, closest
from lpo.core.signature import load_signature_specs

log = logging.getLogger(__name__)

__all__ = ["ValidationReport", "validate", "DEFAULT_THRESHOLDS"]

#: Defaults of the thresholds (None = not checked): max_auc_drop is AUC(original) -
#: AUC(optimized); max_abs_diff is max |optimized - original| over every output;
#: max_latency_ratio is p50(optimized) / p50(original) at batch 512 (or the largest);
#: min_size_reduction is 1 - variables(optimized) / variables(original).
DEFAULT_THRESHOLDS = opts.THRESHOLDS.to_dict()
PREDICTION_NAMES = ("probabilities", "predictions", "prob")
_PREDICT_CHUNK = 2048
_PLOT_POINTS = 20000
#: Percentiles of |Δ prediction| the report lists (beside the max).
DIFF_PERCENTILES = (50, 90, 99, 99.9)
#: Equal-count bins of the reliability curve (mean prediction vs observed CTR).
RELIABILITY_BINS = 10


@dataclass
class ValidationReport:
    """Result of :func:`validate`; ``to_dict()`` is JSON-able."""

    original: str
    optimized: str
    data: str
    rows: int
    passed: bool = True
    breaches: list = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    prediction_output: str | None = None
    accuracy: dict | None = None
    latency: list = field(default_factory=list)
    size: dict = field(default_factory=dict)
    optimized_nodes: list = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    report_files: dict = field(default_factory=dict)
    #: what the optimized model requires (manifest) against what this process offers (oneDNN, CPU features)
    runtime: dict = field(default_factory=dict)
    #: FULL_TRACE profile of both models at the largest batch size (lpo.validation.profile): nodes per
    #: run, op time, top op types; {} when ``profile_runs`` is 0
    profile: dict = field(default_factory=dict)
    #: |Δ prediction| percentiles, mean predictions, soft-label ΔAUC of ``prediction_output`` (no labels needed)
    prediction: dict = field(default_factory=dict)
    #: INT8 dense layers calibrated on activations: clip rate, output error and gate (from the manifest)
    activations: list = field(default_factory=list)
    #: Predictions of ``prediction_output`` (subsampled) for plots; not serialized.
    samples: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-able dict (floats, lists, dicts, strings; NaN becomes None)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "samples"}
        return _jsonable(d)

    def summary(self) -> str:
        """One line: PASS/FAIL and the breached thresholds."""
        if self.passed:
            return "PASS: every threshold met"
        return "FAIL: " + "; ".join(b["message"] for b in self.breaches)


def _jsonable(x: Any):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    return x


# --------------------------------------------------------------------------- options
def _check_threshold(name, value, *, lo=0.0, hi=None, hi_open=False, lo_open=False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number or None, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if v < lo or (lo_open and v == lo):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ConfigError(f"{name} must be {'<' if hi_open else '<='} {hi:g}, got {value!r}")
    return v


def _check_report_dir(report_dir, models):
    """Refuse a report_dir equal to or inside a model (lpo never writes inside its inputs)."""
    from pathlib import Path

    r = Path(report_dir).resolve(strict=False)
    for m in models:
        mp = Path(m).resolve(strict=False)
        if r == mp or mp in r.parents:
            raise ConfigError(f"report_dir {report_dir} is inside the model {m}; lpo never writes inside "
                              "its inputs: choose a directory outside it")
    for p in (r, *r.parents):
        if os.path.exists(p):
            if not os.path.isdir(p):
                raise ConfigError(f"report_dir {report_dir}: {p} is not a directory; choose another path")
            break


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- models
def _size_info(original, optimized) -> dict:
    from lpo.fsutil import dir_bytes

    o_var = dir_bytes(os.path.join(original, "variables"))
    n_var = dir_bytes(os.path.join(optimized, "variables"))
    o_tot, n_tot = dir_bytes(original), dir_bytes(optimized)
    vr = n_var / o_var if o_var else float("nan")
    return {
        "original": {"variables_bytes": o_var, "total_bytes": o_tot},
        "optimized": {"variables_bytes": n_var, "total_bytes": n_tot},
        "variables_ratio": vr,
        "total_ratio": n_tot / o_tot if o_tot else float("nan"),
        "variables_reduction": 1.0 - vr if o_var else float("nan"),
    }


def _manifest_info(optimized) -> tuple[list, dict, str | None]:
    """Return (optimized nodes, manifest summary, note) from the optimized model's plan."""
    from lpo.core.plan import MANIFEST_FORMAT, read_manifest

    try:
        plan = read_manifest(optimized)
    except ModelFormatError as e:
        return [], {}, f"{e} (the list of optimized nodes is empty)"
    nodes = [{"kind": c.kind, "node": c.node, "dtype": c.dtype, "scheme": c.scheme} for c in plan.conversions]
    info = {"format": MANIFEST_FORMAT, "lpo_version": plan.lpo_version, "data_type": plan.data_type,
            "requires": plan.requires, "target": plan.target,
            "activations": [{"node": c.node, "mode": c.mode, "calib_method": c.calib_method,
                             "activation_range": c.activation_range, **(c.calib_error or {})}
                            for c in plan.conversions if c.calib_error]}
    return nodes, info, None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _environment() -> dict:
    import tensorflow as tf

    from lpo.target import host

    v = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return {
        "TF_ENABLE_ONEDNN_OPTS": v if v is not None else "unset (default)",
        "onednn": host().onednn,
        "cpu_features": list(host().features),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }


# --------------------------------------------------------------------------- data
def _load_data(path, specs, label_key, max_rows):
    from lpo.data.cast import cast_array

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"validation data not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file: {e}") from None
    where = os.path.basename(path)
    with npz:
        keys = list(npz.files)
        arrays = {}
        for name, spec in specs.items():
            if name not in keys:
                raise DataError(f"{where}: missing array {name!r} for serving input {name!r}; "
                                f"arrays present: {', '.join(keys)}; closest: "
                                f"{', '.join(closest(name, keys)) or '-'}")
            a = npz[name]
            if max_rows is not None:
                a = a[:max_rows]
            arrays[name] = cast_array(a, spec, name, where)
        labels = None
        if label_key and label_key in keys:
            labels = np.asarray(npz[label_key])
            if max_rows is not None:
                labels = labels[:max_rows]
            labels = labels.reshape(labels.shape[0], -1)[:, 0].astype(np.float64)
    counts = {a.shape[0] for a in arrays.values()}
    if len(counts) != 1:
        raise DataError(f"{where}: inputs have different row counts: {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise DataError(f"{where}: no rows")
    if labels is not None and labels.shape[0] != n:
        raise DataError(f"{where}: {label_key!r} has {labels.shape[0]} rows, inputs {n}")
    return arrays, labels, n


def _pick_prediction(outputs: dict) -> str | None:
    for name in PREDICTION_NAMES:
        if name in outputs and outputs[name].dtype.kind == "f":
            return name
    for name in sorted(outputs):
        a = outputs[name]
        if a.dtype.kind == "f" and (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
            return name
    return None


def _percentile(x, q):
    return float(np.percentile(x, q)) if len(x) else float("nan")


# --------------------------------------------------------------------------- latency
def _latency(models, arrays, n, batch_sizes, warmup, iters) -> list:
    names = models[0].input_names
    results = []
    for b in batch_sizes:
        idx = np.arange(b) % n
        batch = [arrays[k][idx] for k in names]
        for m in models:
            for _ in range(warmup):
                m.call(*batch)
        times = ([], [])
        for it in range(iters):
            # A,B then B,A: alternate who goes first so neither gets a warm-cache edge.
            order = (0, 1) if it % 2 == 0 else (1, 0)
            for k in order:
                t0 = time.perf_counter()
                models[k].call(*batch)
                times[k].append(time.perf_counter() - t0)
        entry = {"batch_size": int(b)}
        for k, label in enumerate(("original", "optimized")):
            t = np.asarray(times[k])
            entry[label] = {
                "p50_ms": _percentile(t, 50) * 1e3,
                "p99_ms": _percentile(t, 99) * 1e3,
                "mean_ms": float(t.mean()) * 1e3,
                "throughput_rows_s": float(b * len(t) / t.sum()) if t.sum() > 0 else None,
            }
        o, p = entry["original"]["p50_ms"], entry["optimized"]["p50_ms"]
        entry["p50_ratio"] = p / o if o > 0 else float("nan")
        results.append(entry)
        log.info("latency batch %d: p50 %.3f ms -> %.3f ms", b, o, p)
    return results


# --------------------------------------------------------------------------- API
def validate(original, optimized, data, *, batch_sizes=opts.VALIDATE.batch_sizes,
             label_key=opts.VALIDATE.label_key, max_rows=None, warmup=opts.VALIDATE.warmup,
             iters=opts.VALIDATE.iters, max_auc_drop=opts.THRESHOLDS.max_auc_drop,
             max_abs_diff=opts.THRESHOLDS.max_abs_diff, max_latency_ratio=opts.THRESHOLDS.max_latency_ratio,
             min_size_reduction=opts.THRESHOLDS.min_size_reduction, report_dir=None, tags=None,
             signature=opts.DEFAULT_SIGNATURE, raise_on_fail=True,
             session_config=None, profile_runs=opts.VALIDATE.profile_runs) -> ValidationReport:
    """Compare ``optimized`` with ``original`` on ``data`` (an npz of inputs + optional label).

    Measures per-output |diff| (max, mean, p99), AUC/logloss when labels exist,
    interleaved latency p50/p99 and throughput at each batch size, and sizes.
    Thresholds (None = off; defaults in :mod:`lpo.options`): ``max_auc_drop``, ``max_abs_diff``,
    ``max_latency_ratio`` (p50 at batch 512, or the largest batch size) and
    ``min_size_reduction`` (fraction of variables bytes saved, < 1). ``profile_runs`` FULL_TRACE
    runs per model at the largest batch size give the report's profile (nodes per run, time per
    op type; 0: none). With
    ``report_dir``, report.json/.md/.html are written there. On a breach,
    ``ValidationFailed`` is raised (after the report is written) if ``raise_on_fail``.
    """
    t_start = time.perf_counter()
    thresholds = _thresholds(max_auc_drop=max_auc_drop, max_abs_diff=max_abs_diff,
                             max_latency_ratio=max_latency_ratio, min_size_reduction=min_size_reduction)
    batch_sizes = list(opts.normalize_batch_sizes(batch_sizes))
    warmup = _positive_int("warmup", warmup, minimum=0)
    iters = _positive_int("iters", iters)
    profile_runs = _positive_int("profile_runs", profile_runs, minimum=0)
    if max_rows is not None:
        max_rows = _positive_int("max_rows", max_rows)
    tags = opts.normalize_tags(tags)
    original, optimized, data = os.fspath(original), os.fspath(optimized), os.fspath(data)
    if report_dir is not None:
        _check_report_dir(os.fspath(report_dir), (original, optimized))
    specs = _common_inputs(original, optimized, tags, signature)

    report = ValidationReport(original=original, optimized=optimized, data=data, rows=0,
                              thresholds=thresholds)
    report.settings = {"batch_sizes": batch_sizes, "warmup": warmup, "iters": iters,
                       "max_rows": max_rows, "label_key": label_key, "signature": signature,
                       "tags": list(tags)}
    report.environment = _environment()
    arrays, labels, n = _load_data(data, specs, label_key, max_rows)
    report.rows = int(n)
    preds = _run_models(report, (original, optimized), arrays, tags=tags, signature=signature,
                        session_config=session_config, batch_sizes=batch_sizes, warmup=warmup, iters=iters,
                        profile_runs=profile_runs)
    common = _compare_outputs(report, preds)
    _accuracy(report, preds, common, labels, label_key)
    _size_and_manifest(report, original, optimized)
    _check(report, thresholds, batch_sizes)
    report.timings["total_s"] = time.perf_counter() - t_start
    log.info("validation %s (%d rows): %s", "passed" if report.passed else "FAILED", n,
             report.summary())

    if report_dir is not None:
        from lpo.validation.report import write_report

        report.report_files = write_report(report, report_dir)
    if not report.passed and raise_on_fail:
        raise ValidationFailed(
            "validation failed: " + "; ".join(b["message"] for b in report.breaches),
            report=report)
    return report


def _thresholds(**given) -> dict:
    """Check the thresholds (None = off) and return them by name."""
    bounds = {"max_latency_ratio": {"lo_open": True}, "min_size_reduction": {"hi": 1.0, "hi_open": True}}
    return {name: _check_threshold(name, given[name], **bounds.get(name, {})) for name in opts.Thresholds.names()}


def _common_inputs(original, optimized, tags, signature) -> dict:
    """Return the original's serving input specs, checking that both models run here with the same inputs."""
    from lpo.core.deeprec import check_runnable
    from lpo.core.savedmodel import read_saved_model, select_meta_graph

    for path in (original, optimized):  # e.g. DeepRec models: say so before loading anything
        check_runnable(select_meta_graph(read_saved_model(path), tags), path, "lpo validate runs both models")
    specs = load_signature_specs(original, tags=tags, signature=signature)
    opt_specs = load_signature_specs(optimized, tags=tags, signature=signature)
    if set(specs) != set(opt_specs):
        raise ModelFormatError(
            f"the models' {signature!r} inputs differ: original {sorted(specs)}, "
            f"optimized {sorted(opt_specs)}")
    return specs


def _run_models(report, paths, arrays, *, tags, signature, session_config, batch_sizes, warmup, iters, profile_runs):
    """Load both models, predict every row with each, measure interleaved latency, and profile them."""
    from lpo.validation.runner import SignatureRunner

    names = sorted(arrays)
    n = len(arrays[names[0]])
    t0 = time.perf_counter()
    models = []
    try:
        for path in paths:
            models.append(SignatureRunner(path, tags, signature, session_config=session_config, input_names=names))
        report.timings["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        preds = tuple(m.predict(arrays, _PREDICT_CHUNK) for m in models)
        report.timings["predict_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report.latency = _latency(models, arrays, n, batch_sizes, warmup, iters)
        report.timings["latency_s"] = time.perf_counter() - t0
        if profile_runs:
            t0 = time.perf_counter()
            report.profile = _profile(models, arrays, n, max(batch_sizes), profile_runs)
            report.timings["profile_s"] = time.perf_counter() - t0
    finally:
        for m in models:
            m.close()
    return preds


def _profile(models, arrays, n, batch_size, runs) -> dict:
    """Both models' FULL_TRACE profiles on one batch (rows repeated to ``batch_size``)."""
    from lpo.validation.profile import op_type_rows, profile_runners

    idx = np.arange(batch_size) % n
    orig, opt = profile_runners(models, {k: v[idx] for k, v in arrays.items()}, runs, warmup=1, timed=False)
    return {"batch_size": int(batch_size), "runs": int(runs), "original": orig.to_dict(), "optimized": opt.to_dict(),
            "rows": op_type_rows(orig, opt, opts.PROFILE.top)}


def _compare_outputs(report, preds) -> list[str]:
    """Fill ``report.outputs`` with each common output's differences; return the common names."""
    common = [o for o in sorted(preds[0]) if o in preds[1]]
    for o in sorted(set(preds[0]) ^ set(preds[1])):
        report.notes.append(f"output {o!r} exists in only one model; not compared")
    for name in common:
        a, b = preds[0][name], preds[1][name]
        entry = {"dtype_original": str(a.dtype), "dtype_optimized": str(b.dtype),
                 "shape": list(a.shape[1:])}
        if a.shape != b.shape:
            entry["note"] = f"shapes differ: {list(a.shape)} vs {list(b.shape)}"
            entry.update(max_abs_diff=float("inf"), mean_abs_diff=float("inf"),
                         p99_abs_diff=float("inf"))
        elif a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
            d = np.abs(a.astype(np.float64) - b.astype(np.float64)).ravel()
            entry.update(max_abs_diff=float(d.max()) if d.size else 0.0,
                         mean_abs_diff=float(d.mean()) if d.size else 0.0,
                         p99_abs_diff=_percentile(d, 99) if d.size else 0.0)
        else:
            mism = int(np.sum(a != b))
            entry.update(mismatches=mism, max_abs_diff=0.0 if mism == 0 else float("inf"),
                         mean_abs_diff=None, p99_abs_diff=None)
        report.outputs[name] = entry
    return common


def _accuracy(report, preds, common, labels, label_key) -> None:
    """Pick the prediction output, keep plot samples, and compute AUC/logloss when there are labels."""
    n = report.rows
    pred_name = _pick_prediction({k: preds[0][k] for k in common})
    report.prediction_output = pred_name
    if pred_name is None:
        report.notes.append("no single-column float output: AUC/logloss not computed")
        return
    pa = preds[0][pred_name].reshape(n, -1)[:, 0].astype(np.float64)
    pb = preds[1][pred_name].reshape(n, -1)[:, 0].astype(np.float64)
    if n > _PLOT_POINTS:
        pick = np.random.default_rng(0).choice(n, _PLOT_POINTS, replace=False)
        report.samples = {"original": pa[pick], "optimized": pb[pick]}
    else:
        report.samples = {"original": pa, "optimized": pb}
    from lpo.validation.metrics import auc, calibration_table, logloss, soft_auc_delta

    d = np.abs(pb - pa)
    report.prediction = {
        "abs_diff": {f"p{q:g}": _percentile(d, q) for q in DIFF_PERCENTILES} | {"max": float(d.max())},
        "mean_original": float(pa.mean()), "mean_optimized": float(pb.mean()),
        "soft_auc_delta": soft_auc_delta(pa, pb)[0] if 0.0 <= pa.min() and pa.max() <= 1.0 else None}
    if labels is None:
        report.notes.append(f"no {label_key!r} array in the data: AUC/logloss not computed")
        return
    ao, an = auc(labels, pa), auc(labels, pb)
    lo, ln = logloss(labels, pa), logloss(labels, pb)
    report.accuracy = {"label_key": label_key, "auc_original": ao, "auc_optimized": an,
                       "auc_delta": an - ao, "logloss_original": lo,
                       "logloss_optimized": ln, "logloss_delta": ln - lo,
                       "positives": int((labels > 0.5).sum()), "rows": int(n),
                       "observed_ctr": float(np.mean(labels > 0.5)),
                       "mean_pred_original": float(pa.mean()), "mean_pred_optimized": float(pb.mean()),
                       "reliability": {"original": calibration_table(labels, pa, RELIABILITY_BINS),
                                       "optimized": calibration_table(labels, pb, RELIABILITY_BINS)}}


def _size_and_manifest(report, original, optimized) -> None:
    """Fill the sizes, the optimized nodes, and what the model requires against this process."""
    from lpo.target import runtime_report

    report.size = _size_info(original, optimized)
    report.optimized_nodes, report.manifest, note = _manifest_info(optimized)
    report.activations = report.manifest.pop("activations", [])
    if note:
        report.notes.append(note)
    report.runtime = runtime_report(report.manifest.get("requires") or {})
    report.notes.extend(report.runtime["problems"])


def _check(report, thresholds, batch_sizes):
    breaches = []

    def breach(name, actual, limit, message):
        breaches.append({"threshold": name, "actual": actual, "limit": limit,
                         "message": f"{name}: {message}"})

    lim = thresholds["max_auc_drop"]
    if lim is not None:
        if report.accuracy is None or report.accuracy["auc_original"] is None or \
                not math.isfinite(report.accuracy["auc_original"]):
            report.notes.append("max_auc_drop not checked: no labels (or a single class)")
        else:
            drop = report.accuracy["auc_original"] - report.accuracy["auc_optimized"]
            if not math.isfinite(drop) or drop > lim:
                breach("max_auc_drop", drop, lim,
                       f"AUC dropped by {drop:.6g} (limit {lim:g})")
    lim = thresholds["max_abs_diff"]
    if lim is not None:
        for name, e in report.outputs.items():
            d = e.get("max_abs_diff")
            if d is not None and not d <= lim:
                breach("max_abs_diff", d, lim,
                       f"output {name!r} max |diff| {d:.6g} > {lim:g}")
    from lpo.core.calibrate import activation_gate_misses

    for a in report.activations:  # options.ACTIVATION_GATE: calibrated INT8 layers only (fallbacks are weight-only)
        misses = activation_gate_misses(a) if a.get("mode") in opts.CALIBRATED_INT8_MODES else []
        if misses:
            breach("activation_gate", a.get("output_rel_rmse"), opts.ACTIVATION_GATE.max_output_rel_rmse,
                   f"INT8 {a['mode']} layer {a['node']!r}: {'; '.join(misses)} on the calibration rows "
                   "(int8_dense='auto' or 'weight_only' avoids it)")
    lim = thresholds["max_latency_ratio"]
    if lim is not None:
        if not report.latency:
            report.notes.append("max_latency_ratio not checked: no batch sizes measured")
        else:
            ref = next((e for e in report.latency if e["batch_size"] == 512),
                       max(report.latency, key=lambda e: e["batch_size"]))
            r = ref["p50_ratio"]
            if not r <= lim:
                breach("max_latency_ratio", r, lim,
                       f"p50 latency ratio at batch {ref['batch_size']} is {r:.3f} "
                       f"(limit {lim:g})")
    lim = thresholds["min_size_reduction"]
    if lim is not None:
        red = report.size.get("variables_reduction")
        if red is None or not red >= lim:
            breach("min_size_reduction", red, lim,
                   f"variables are {100 * (red or 0):.1f}% smaller (at least "
                   f"{100 * lim:g}% required)")
    report.breaches = breaches
    report.passed = not breaches
