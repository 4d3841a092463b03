"""One function per pipeline step, called by the CLI, the KFP components and the Airflow operators.

Each takes plain, orchestrator-style arguments (a template may render a number as a string, an
unset path as ``''``, a dict as JSON, a threshold "off" as a negative number), normalizes them
with the :mod:`lpo.options` normalizers, calls the library, and returns a JSON-able dict
(``as_dict=False``: the library's result object, for the CLI's human output). The AUTO arguments
and the validation thresholds are packed here only.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from lpo import options as opts
from lpo.errors import ConfigError


# --------------------------------------------------------------------------- argument normalizers

def optional(value: Any) -> Any:
    """``value``, or None when it is None or a blank string (an unset template)."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def flag(value: Any) -> bool:
    """A boolean from a bool or a rendered string (``"true"``, ``"1"``, ``"yes"``, ``"on"``)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def integer(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``; ConfigError otherwise."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    return number


def json_arg(name: str, value: Any) -> Any:
    """A dict param given as a dict or a JSON string (``''``/None: None); ConfigError if not JSON."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError as e:
        raise ConfigError(f"{name} must be a JSON object, got {value!r} ({e})") from None


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (what XCom and KFP metadata store): paths, numpy numbers become strings."""
    return json.loads(json.dumps(obj, default=str))


def is_auto(data_type: Any) -> bool:
    """True if ``data_type`` asks for the AUTO search."""
    return str(data_type).strip().upper() == opts.AUTO


def auto_arguments(data_type: Any, *, eval_file: Any = None, max_auc_drop: Any = opts.AUTO_OPTIONS.max_auc_drop,
                   auto_options: Any = None, report_dir: Any = None, **overrides) -> dict:
    """The AUTO keyword arguments of :func:`lpo.optimize`; ``{}`` unless ``data_type`` is AUTO.

    ``auto_options`` is a dict or JSON string of :class:`lpo.options.AutoOptions` fields;
    ``overrides`` (e.g. ``max_evals=``, ``seed=``) set single fields, None meaning "not given".
    """
    if not is_auto(data_type):
        return {}
    try:
        budget = float(max_auc_drop)
    except (TypeError, ValueError):
        raise ConfigError(f"max_auc_drop must be a number, got {max_auc_drop!r}") from None
    options = json_arg("auto_options", auto_options)
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        options = {**(options or {}), **given}
    return {"eval_file": optional(eval_file), "max_auc_drop": budget, "auto_options": options,
            "report_dir": optional(report_dir)}


# --------------------------------------------------------------------------- steps

def optimize_step(model_path: str, save_path: str, *, data_type: str = opts.OPTIMIZE.data_type,
                  opt_config: Any = None, calib_file: Optional[str] = None, overwrite: Any = False,
                  embedding_scheme: str = opts.OPTIMIZE.embedding_scheme, dense_mode: str = opts.OPTIMIZE.dense_mode,
                  int8_dense: str = opts.OPTIMIZE.int8_dense, calib_method: str = opts.OPTIMIZE.calib_method,
                  target: Optional[str] = opts.OPTIMIZE.target, eval_file: Optional[str] = None,
                  max_auc_drop: Any = opts.AUTO_OPTIONS.max_auc_drop, auto_options: Any = None,
                  report_dir: Optional[str] = None, allow_pickle: bool = False, tags: Any = None, quiet: bool = True,
                  folds: Any = opts.OPTIMIZE.folds, group_tables: Any = opts.OPTIMIZE.group_tables,
                  as_dict: bool = True, **auto_overrides) -> Any:
    """:func:`lpo.optimize` with the AUTO arguments packed by :func:`auto_arguments`.

    Returns ``OptimizeResult.to_dict()`` as plain JSON, its ``auto`` entry reduced to the headline
    (:func:`lpo.orchestration.artifacts.auto_summary`); ``as_dict=False``: the OptimizeResult.
    """
    import lpo
    from lpo.orchestration.artifacts import auto_summary

    auto = auto_arguments(data_type, eval_file=eval_file, max_auc_drop=max_auc_drop, auto_options=auto_options,
                          report_dir=report_dir, **auto_overrides)
    result = lpo.optimize(
        model_path, save_path, opt_config=opt_config or None, data_type=data_type,
        calib_file=optional(calib_file), overwrite=flag(overwrite), allow_pickle=allow_pickle, tags=tags,
        embedding_scheme=embedding_scheme, dense_mode=dense_mode, int8_dense=int8_dense, calib_method=calib_method,
        target=target or None, quiet=quiet, folds=flag(folds), group_tables=flag(group_tables), **auto)
    if not as_dict:
        return result
    out = result.to_dict()
    if out.get("auto"):
        out["auto"] = auto_summary(out["auto"])
    return jsonable(out)


def validate_step(original: str, optimized: str, data: str, *,
                  max_auc_drop: Any = opts.ORCHESTRATOR_THRESHOLDS["max_auc_drop"],
                  max_abs_diff: Any = opts.ORCHESTRATOR_THRESHOLDS["max_abs_diff"],
                  max_latency_ratio: Any = opts.ORCHESTRATOR_THRESHOLDS["max_latency_ratio"],
                  min_size_reduction: Any = opts.ORCHESTRATOR_THRESHOLDS["min_size_reduction"],
                  iters: Any = opts.VALIDATE.iters, batch_sizes: Any = opts.VALIDATE.batch_sizes,
                  warmup: Any = opts.VALIDATE.warmup, max_rows: Any = None, report_dir: Optional[str] = None,
                  raise_on_fail: bool = False, as_dict: bool = True) -> Any:
    """:func:`lpo.validate` with orchestrator thresholds (None, ``''`` or negative: off) and ``max_rows``
    (None, ``''`` or 0: all rows).

    Returns ``{"passed", "summary", "metrics", "report_files", "runtime"}`` (``metrics``:
    :func:`lpo.orchestration.artifacts.validation_metrics`); ``as_dict=False``: the ValidationReport.
    A breach raises :class:`lpo.ValidationFailed` only with ``raise_on_fail``.
    """
    import lpo
    from lpo.orchestration.artifacts import validation_metrics

    rows = optional(max_rows)
    report = lpo.validate(
        original, optimized, data,
        max_auc_drop=opts.optional_threshold(max_auc_drop, "max_auc_drop"),
        max_abs_diff=opts.optional_threshold(max_abs_diff, "max_abs_diff"),
        max_latency_ratio=opts.optional_threshold(max_latency_ratio, "max_latency_ratio"),
        min_size_reduction=opts.optional_threshold(min_size_reduction, "min_size_reduction"),
        iters=integer("iters", iters), batch_sizes=batch_sizes, warmup=warmup,
        max_rows=(integer("max_rows", rows, minimum=0) or None) if rows is not None else None,
        report_dir=optional(report_dir), raise_on_fail=raise_on_fail)
    if not as_dict:
        return report
    return {"passed": bool(report.passed), "summary": report.summary(),
            "metrics": validation_metrics(report.to_dict()),
            "report_files": dict(report.report_files or {}),
            "runtime": jsonable(report.runtime or {})}


def calibrate_step(source: str, save_path: str, model_path: str, *, num_rows: Any = opts.CALIBRATE.num_rows,
                   seed: Any = None, data_format: Optional[str] = None, columns: Any = None, mapping: Any = None,
                   legacy_npy: bool = False, overwrite: Any = False, as_dict: bool = True) -> Any:
    """:func:`lpo.make_calibration` (``seed`` None: :attr:`lpo.options.CalibrateOptions.seed`).

    Returns ``CalibrationResult.to_dict()``; ``as_dict=False``: the CalibrationResult.
    """
    import lpo

    seed = optional(seed)
    result = lpo.make_calibration(
        source, save_path, model_path, num_rows=integer("num_rows", num_rows),
        seed=opts.CALIBRATE.seed if seed is None else integer("seed", seed, minimum=0),
        format=optional(data_format), columns=columns, mapping=dict(mapping) if mapping else None,
        legacy_npy=legacy_npy, overwrite=flag(overwrite))
    return jsonable(result.to_dict()) if as_dict else result


def convert_step(ckpt_prefix: str, save_prefix: str, opt_model_path: str, *, shard: Any = None,
                 num_shards: Any = None, overwrite: Any = False, quiet: bool = True, as_dict: bool = True) -> Any:
    """:func:`lpo.convert_ckpt`, whole or one shard (``shard`` 0-based of ``num_shards``).

    Returns ``ConvertResult.to_dict()``; ``as_dict=False``: the ConvertResult.
    """
    import lpo

    shard, num_shards = optional(shard), optional(num_shards)
    result = lpo.convert_ckpt(
        ckpt_prefix, save_prefix, opt_model_path,
        shard=None if shard is None else integer("shard", shard, minimum=0),
        num_shards=None if num_shards is None else integer("num_shards", num_shards),
        overwrite=flag(overwrite), quiet=quiet)
    return jsonable(result.to_dict()) if as_dict else result
