"""Airflow 3 operators for lpo: find inputs, calibrate, optimize, validate, refresh, publish, mark ready,
convert a shard, merge shards.

Every path and option is a template field, so ``{{ run_id }}``, ``{{ params.x }}``,
``{{ var.value.x }}``, XCom pulls and XComArgs work (manual and Asset-triggered runs
have no logical date: ``{{ ds }}``/``{{ ts_nodash }}`` are undefined there; use
``{{ dag_run.run_after | ts_nodash }}``). Arguments are checked in :meth:`execute`
(after rendering), each operator returns a JSON-able dict (pushed to XCom as
``return_value``). A breached validation threshold or a bad input fails the task
without retries: every ``execute`` maps an :class:`lpo.LpoError` (bad paths and numbers
included) to ``AirflowFailException``; nothing to do skips it
(``AirflowSkipException``). TensorFlow's native start-up noise is kept out of the
task log (:func:`lpo.log.quiet_tensorflow`).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Optional, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from lpo.errors import ConfigError, LpoError
from lpo.options import AIRFLOW, AUTO_OPTIONS, CALIBRATE, OPTIMIZE, ORCHESTRATOR_THRESHOLDS, VALIDATE

log = logging.getLogger(__name__)


def path_setting(name: str) -> str:
    """Jinja for the DAG path param ``name``: the param if set, else the Variable ``lpo_<name>``,
    else ``<root>/<default>`` where root is the Variable ``lpo_root``, else ``$LPO_AIRFLOW_ROOT``,
    else ``/data/lpo`` (defaults: :data:`lpo.options.DAG_PATHS`)."""
    from lpo.options import DAG_PATHS, airflow_root

    return (f"{{{{ params.{name} or var.value.get('lpo_{name}', '') or "
            f"(var.value.get('lpo_root', '') or {airflow_root()!r}) ~ '/{DAG_PATHS[name]}' }}}}")


def path_param(name: str, what: str):
    """A DAG ``Param`` for the path ``name`` (empty by default: see :func:`path_setting`)."""
    from airflow.sdk import Param

    from lpo.options import DAG_PATHS

    return Param("", type="string", description=f"{what}. Empty: Variable lpo_{name}, else <root>/{DAG_PATHS[name]}")


def gate_and_publish_params() -> dict:
    """The DAG ``Param``s of the validate gate and of publishing, shared by the retrain and refresh DAGs."""
    from airflow.sdk import Param

    from lpo.options import AIRFLOW, PUBLISH_LAYOUTS

    return {
        "max_auc_drop": Param(AIRFLOW.max_auc_drop, type="number",
                              description="Gate: largest allowed AUC drop (negative: off)"),
        "max_abs_diff": Param(AIRFLOW.max_abs_diff, type="number",
                              description="Gate: largest allowed |prediction difference| (negative: off)"),
        "validate_iters": Param(AIRFLOW.validate_iters, type="integer", minimum=1,
                                description="Timed runs per batch size in validation"),
        "validate_batch_sizes": Param(AIRFLOW.validate_batch_sizes, type="string",
                                      description="Latency batch sizes, comma-separated"),
        "layout": Param(AIRFLOW.layout, enum=list(PUBLISH_LAYOUTS), description="Serving layout: "
                        "versions/<v> + current symlink, or TF Serving's numeric <v> directories"),
        "version": Param("", type="string", description="Published version. Empty: the run key "
                         "(YYYYMMDDHHMMSS of the run's start)"),
    }


def _quiet(execute):
    """Run ``execute`` with TF's log level set before TF loads and its start-up noise filtered."""

    @functools.wraps(execute)
    def wrapper(self, context):
        from lpo.log import quiet_tensorflow

        with quiet_tensorflow():
            return execute(self, context)

    return wrapper


def _fail_fast(execute):
    """Map an :class:`lpo.LpoError` raised by ``execute`` to ``AirflowFailException``.

    LpoErrors are deterministic (a bad input or option, a breached gate): a retry cannot help,
    so the task fails at once with the error's one line.
    """

    @functools.wraps(execute)
    def wrapper(self, context):
        try:
            return execute(self, context)
        except LpoError as e:
            raise AirflowFailException(f"{type(e).__name__}: {e}") from e

    return wrapper


def _path(name: str, value: Any, *, must_exist: bool = False) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"{name} must be a non-empty path, got {value!r}")
    value = os.fspath(value)
    if must_exist and not os.path.exists(value):
        raise ConfigError(f"{name} does not exist: {value}")
    return value


def _int(name: str, value: Any, *, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    return number


def _make_parent(name: str, path: str) -> None:
    """Create the missing parent directories of the output ``path`` (``mkdir -p``); ConfigError if impossible."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{name}: cannot create the directory {parent} ({e.strerror or e})") from None


def _json_arg(name: str, value: Any) -> Any:
    """A dict param given as a dict or a JSON string (``''``/None: None); ConfigError if not JSON."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError as e:
        raise ConfigError(f"{name} must be a JSON object, got {value!r} ({e})") from None


def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (what XCom stores): paths, numpy numbers etc. become strings."""
    return json.loads(json.dumps(obj, default=str))


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _opt(value: Any) -> Optional[str]:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


class LpoCalibrateOperator(BaseOperator):
    """Sample calibration rows from a data source (``lpo.make_calibration``).

    Args:
        source: CSV/TSV/TFRecord/npz data file.
        save_path: output ``.npz``.
        model_path: SavedModel whose serving inputs to match.
        num_rows: rows to reservoir-sample.
        seed: sampling seed.
        data_format: ``csv``/``tsv``/``tfrecord``/``npz`` (default: from the extension).
        overwrite: replace an existing ``save_path`` (default True: reruns are idempotent).
    """

    template_fields: Sequence[str] = ("source", "save_path", "model_path", "num_rows", "seed",
                                      "data_format", "overwrite")
    ui_color = "#e8f4e4"

    def __init__(self, *, source: str, save_path: str, model_path: str, num_rows: Any = CALIBRATE.num_rows,
                 seed: Any = CALIBRATE.seed, data_format: Optional[str] = None, overwrite: Any = True, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.save_path = save_path
        self.model_path = model_path
        self.num_rows = num_rows
        self.seed = seed
        self.data_format = data_format
        self.overwrite = overwrite

    @_fail_fast
    @_quiet
    def execute(self, context) -> dict:
        import lpo

        source = _path("source", self.source, must_exist=True)
        model = _path("model_path", self.model_path, must_exist=True)
        save = _path("save_path", self.save_path)
        if not save.endswith(".npz"):
            raise ConfigError(f"save_path must end with .npz, got {save!r}")
        _make_parent("save_path", save)
        result = lpo.make_calibration(source, save, model, num_rows=_int("num_rows", self.num_rows),
                                      seed=_int("seed", self.seed, minimum=0),
                                      format=_opt(self.data_format), overwrite=_bool(self.overwrite))
        return result.to_dict()


class LpoOptimizeOperator(BaseOperator):
    """Write a BF16/FP16/INT8 copy of a SavedModel (``lpo.optimize``).

    Args:
        model_path: FP32 SavedModel (read only).
        save_path: output SavedModel directory.
        data_type: ``BF16``, ``FP16``, ``INT8``, ``INT4`` or ``AUTO`` (default: the pipelines' default,
            :data:`lpo.options.PIPELINE_DATA_TYPE`).
        opt_config: ``{node: dtype}`` as a dict or JSON string; empty: every node gets ``data_type``.
        calib_file: calibration ``.npz`` (needed for static INT8 dense layers).
        embedding_scheme, dense_mode, int8_dense, calib_method: as in :func:`lpo.optimize`.
        target: the serving CPU (``host``: the worker this task runs on, or a preset such as
            ``avx2``, ``avx512_vnni``, ``amx``, ``portable``); recorded in the model's manifest.
        overwrite: replace a non-empty ``save_path`` (default True: reruns are idempotent).
        eval_file: ``data_type='AUTO'`` only: ``.npz`` of serving inputs + ``label``.
        max_auc_drop: AUTO's budget, largest ``|ΔAUC|`` vs FP32 (not the validate gate).
        auto_options: AUTO options (:class:`lpo.options.AutoOptions` fields) as a dict or JSON string.
        report_dir: AUTO's frontier report directory (optional).

    Returns (XCom): ``OptimizeResult.to_dict()``; for AUTO its ``auto`` entry is the headline
    (chosen opt_config, budget, tuning/confirmation figures), not every trial.
    """

    template_fields: Sequence[str] = ("model_path", "save_path", "data_type", "opt_config", "calib_file",
                                      "embedding_scheme", "dense_mode", "int8_dense", "calib_method",
                                      "target", "overwrite", "eval_file", "max_auc_drop", "auto_options",
                                      "report_dir")
    ui_color = "#dcebf7"

    def __init__(self, *, model_path: str, save_path: str, data_type: str = AIRFLOW.data_type,
                 opt_config: Any = None, calib_file: Optional[str] = None,
                 embedding_scheme: str = OPTIMIZE.embedding_scheme, dense_mode: str = OPTIMIZE.dense_mode,
                 int8_dense: str = OPTIMIZE.int8_dense, calib_method: str = OPTIMIZE.calib_method,
                 target: str = OPTIMIZE.target, overwrite: Any = True, eval_file: Optional[str] = None,
                 max_auc_drop: Any = AUTO_OPTIONS.max_auc_drop, auto_options: Any = None,
                 report_dir: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.eval_file = eval_file
        self.max_auc_drop = max_auc_drop
        self.auto_options = auto_options
        self.report_dir = report_dir
        self.model_path = model_path
        self.save_path = save_path
        self.data_type = data_type
        self.opt_config = opt_config
        self.calib_file = calib_file
        self.embedding_scheme = embedding_scheme
        self.dense_mode = dense_mode
        self.int8_dense = int8_dense
        self.calib_method = calib_method
        self.target = target
        self.overwrite = overwrite

    @_fail_fast
    @_quiet
    def execute(self, context) -> dict:
        import lpo

        model = _path("model_path", self.model_path, must_exist=True)
        save = _path("save_path", self.save_path)
        calib = _opt(self.calib_file)
        if calib is not None:
            calib = _path("calib_file", calib, must_exist=True)
        _make_parent("save_path", save)
        auto = {}
        if str(self.data_type).strip().upper() == "AUTO":
            options = _json_arg("auto_options", self.auto_options)
            try:
                budget = float(self.max_auc_drop)
            except (TypeError, ValueError):
                raise ConfigError(f"max_auc_drop must be a number, got {self.max_auc_drop!r}") from None
            auto = {"eval_file": _path("eval_file", self.eval_file, must_exist=True), "max_auc_drop": budget,
                    "auto_options": options, "report_dir": _opt(self.report_dir)}
        result = lpo.optimize(
            model, save, opt_config=self.opt_config or None, data_type=self.data_type,
            calib_file=calib, overwrite=_bool(self.overwrite), embedding_scheme=self.embedding_scheme,
            dense_mode=self.dense_mode, int8_dense=self.int8_dense, calib_method=self.calib_method,
            target=self.target or None, quiet=True, **auto)
        out = result.to_dict()
        if out.get("auto"):
            from lpo.orchestration import auto_summary

            out["auto"] = auto_summary(out["auto"])
        return _jsonable(out)


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

    @_fail_fast
    @_quiet
    def execute(self, context) -> dict:
        import lpo
        from lpo.options import optional_threshold
        from lpo.orchestration import validation_metrics

        original = _path("original", self.original, must_exist=True)
        optimized = _path("optimized", self.optimized, must_exist=True)
        data = _path("data", self.data, must_exist=True)
        report_dir = _opt(self.report_dir)
        max_rows = _opt(self.max_rows)
        max_rows = _int("max_rows", max_rows, minimum=0) or None if max_rows is not None else None
        report = lpo.validate(
            original, optimized, data, max_auc_drop=optional_threshold(self.max_auc_drop),
            max_abs_diff=optional_threshold(self.max_abs_diff),
            max_latency_ratio=optional_threshold(self.max_latency_ratio),
            min_size_reduction=optional_threshold(self.min_size_reduction),
            iters=_int("iters", self.iters), batch_sizes=self.batch_sizes,
            max_rows=max_rows, report_dir=report_dir, raise_on_fail=False)
        out = {"passed": bool(report.passed), "summary": report.summary(),
               "metrics": validation_metrics(report.to_dict()),
               "report_files": dict(report.report_files or {}),
               "runtime": _jsonable(report.runtime or {})}
        if not report.passed:
            ti = context.get("ti") if hasattr(context, "get") else None
            if ti is not None:
                ti.xcom_push(key="report", value=out)
            raise AirflowFailException(f"validation gate failed: {report.summary()}")
        return out


class LpoRefreshOperator(BaseOperator):
    """Rebuild an optimized model with a new FP32 checkpoint (``lpo.refresh``).

    Args:
        opt_model_path: optimized SavedModel (has the plan).
        ckpt_prefix: new FP32 checkpoint prefix.
        save_path: output SavedModel directory.
        fp32_model_path: optional FP32 SavedModel; with ``reference_path``, also writes
            the FP32 reference (its graph + ``ckpt_prefix``) to validate against.
        reference_path: where to write that reference.
        overwrite: replace a non-empty ``save_path`` (default True).
    """

    template_fields: Sequence[str] = ("opt_model_path", "ckpt_prefix", "save_path", "fp32_model_path",
                                      "reference_path", "overwrite")
    ui_color = "#ece4f7"

    def __init__(self, *, opt_model_path: str, ckpt_prefix: str, save_path: str,
                 fp32_model_path: Optional[str] = None, reference_path: Optional[str] = None,
                 overwrite: Any = True, **kwargs):
        super().__init__(**kwargs)
        self.opt_model_path = opt_model_path
        self.ckpt_prefix = ckpt_prefix
        self.save_path = save_path
        self.fp32_model_path = fp32_model_path
        self.reference_path = reference_path
        self.overwrite = overwrite

    @_fail_fast
    @_quiet
    def execute(self, context) -> dict:
        import lpo
        from lpo.orchestration import fp32_model_with_checkpoint

        opt_model = _path("opt_model_path", self.opt_model_path, must_exist=True)
        ckpt = _path("ckpt_prefix", self.ckpt_prefix)
        if not os.path.exists(ckpt + ".index"):
            raise ConfigError(f"ckpt_prefix: checkpoint not found ({ckpt}.index does not exist)")
        save = _path("save_path", self.save_path)
        fp32, ref = _opt(self.fp32_model_path), _opt(self.reference_path)
        if (fp32 is None) != (ref is None):
            raise ConfigError("fp32_model_path and reference_path go together")
        _make_parent("save_path", save)
        result = lpo.refresh(opt_model, ckpt, save, overwrite=_bool(self.overwrite), quiet=True)
        out = _jsonable(result.to_dict())
        if fp32 is not None:
            _make_parent("reference_path", ref)
            out["reference_path"] = fp32_model_with_checkpoint(_path("fp32_model_path", fp32, must_exist=True),
                                                               ckpt, ref, overwrite=_bool(self.overwrite))
        return out


class LpoPublishOperator(BaseOperator):
    """Publish a validated model to a serving directory, atomically (:func:`lpo.orchestration.publish_model`).

    Args:
        model_path: the model to publish.
        serving_dir: the serving directory.
        version: version name; empty: the run's key, ``YYYYMMDDHHMMSS`` of ``dag_run.run_after``.
        layout: ``current`` (``versions/<v>`` + a ``current`` symlink) or ``tf_serving``
            (``<v>`` numeric directories).
        inputs: what the model was made from (dict or JSON), stored in its publish record.

    Put it downstream of the validate task: with the default trigger rule it runs
    only when validation passed. Give it ``outlets=[asset]`` to emit an Asset event;
    the event's ``extra`` gets ``path`` (the published directory) and ``version``.
    """

    template_fields: Sequence[str] = ("model_path", "serving_dir", "version", "layout", "inputs")
    ui_color = "#e4f7ef"

    def __init__(self, *, model_path: str, serving_dir: str, version: Any = "", layout: str = AIRFLOW.layout,
                 inputs: Any = None, **kwargs):
        super().__init__(**kwargs)
        self.model_path = model_path
        self.serving_dir = serving_dir
        self.version = version
        self.layout = layout
        self.inputs = inputs

    @_fail_fast
    def execute(self, context) -> dict:
        from lpo.orchestration import publish_model

        model = _path("model_path", self.model_path, must_exist=True)
        serving = _path("serving_dir", self.serving_dir)
        _make_parent("serving_dir", serving)  # the DAGs' <root>/serving/<name> on a fresh root
        version = str(self.version).strip() if self.version is not None else ""
        if not version:
            version = _run_key(context)
        inputs = _json_arg("inputs", self.inputs)
        out = publish_model(model, serving, version, layout=self.layout or "current",
                            inputs=inputs if isinstance(inputs, dict) else None)
        _emit_outlet_events(self, context, {"path": out["published"], "version": out["version"]})
        return out


def _run_key(context) -> str:
    """The run's key from ``dag_run.run_after`` (set for manual, scheduled and Asset runs alike)."""
    from lpo.orchestration import run_key

    dag_run = context.get("dag_run") if hasattr(context, "get") else None
    return run_key(getattr(dag_run, "run_after", None))


def _emit_outlet_events(op: BaseOperator, context, extra: dict) -> None:
    """Attach ``extra`` to the Asset events this task emits for its outlets."""
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return
    for outlet in op.outlets or []:
        try:
            events[outlet].extra.update(extra)
        except (KeyError, TypeError, AttributeError):  # not an Asset (e.g. a plain string outlet)
            log.debug("outlet %r takes no event extra", outlet)


def _event_path(context) -> str:
    """The ``path`` in the newest Asset event that triggered this run ('' if none)."""
    events = context.get("triggering_asset_events") if hasattr(context, "get") else None
    newest, path = None, ""
    for seq in (events.values() if events else []):
        for event in seq:
            extra = getattr(event, "extra", None) or {}
            stamp = getattr(event, "timestamp", None)
            if extra.get("path") and (newest is None or (stamp is not None and stamp >= newest)):
                newest, path = stamp, str(extra["path"])
    return path


class LpoFindInputsOperator(BaseOperator):
    """Decide what a run works on; skip the run cleanly when there is nothing to do.

    ``pipeline='retrain'``: the FP32 SavedModel is ``path`` if given, else the ``path``
    of the Asset event that triggered the run, else the newest SavedModel under
    ``root`` (:func:`lpo.orchestration.newest_saved_model`).
    ``pipeline='refresh'``: the same for the FP32 checkpoint (``path`` a prefix or a
    directory; :func:`lpo.orchestration.newest_checkpoint`), plus the model served from
    ``serving_dir`` (the one refreshed) and the FP32 model (``fp32_model``, else the one
    the served model was made from, else the newest under ``training_root``). A checkpoint
    found as "newest" that is already served is nothing new.

    An explicit path that does not exist fails the task; finding nothing (or nothing
    new) skips it, with one log line saying why, and the run ends without error.
    Returns (XCom) the resolved paths, ``found_by``, ``version`` (``version`` or the
    run's key) and ``work_dir`` (``<work_root>/<dag_id>/<run key>``) with its output paths,
    each also under its own XCom key (``multiple_outputs``), so ``find.output["model_path"]`` works.
    """

    template_fields: Sequence[str] = ("pipeline", "path", "root", "work_root", "serving_dir", "fp32_model",
                                      "training_root", "version")
    ui_color = "#f2f2f2"

    def __init__(self, *, pipeline: str, path: Any = "", root: Any = "", work_root: Any = "",
                 serving_dir: Any = "", fp32_model: Any = "", training_root: Any = "", version: Any = "",
                 **kwargs):
        kwargs.setdefault("multiple_outputs", True)  # find.output["model_path"] etc. in the DAG
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.path = path
        self.root = root
        self.work_root = work_root
        self.serving_dir = serving_dir
        self.fp32_model = fp32_model
        self.training_root = training_root
        self.version = version

    @_fail_fast
    def execute(self, context) -> dict:
        from lpo import orchestration as orch

        key = _run_key(context)
        dag_id = getattr(getattr(self, "dag", None), "dag_id", None) or "lpo"
        work = os.path.join(_path("work_root", self.work_root), dag_id, key)
        try:
            if self.pipeline == "retrain":
                found = orch.find_retrain_inputs(path=_opt(self.path), event_path=_event_path(context),
                                                 root=_opt(self.root), serving_dir=_opt(self.serving_dir),
                                                 work_dir=work)
            elif self.pipeline == "refresh":
                found = orch.find_refresh_inputs(
                    path=_opt(self.path), event_path=_event_path(context), root=_opt(self.root),
                    serving_dir=_path("serving_dir", self.serving_dir), fp32_model=_opt(self.fp32_model),
                    training_root=_opt(self.training_root), work_dir=work)
            else:
                raise ConfigError(f"pipeline must be 'retrain' or 'refresh', got {self.pipeline!r}")
        except orch.NothingToDo as e:
            log.info("Nothing to do, skipping this run: %s", e)
            raise AirflowSkipException(str(e)) from None
        found["run_key"] = key
        found["version"] = str(self.version).strip() if _opt(self.version) is not None else key
        log.info("Inputs (%s): %s", found["found_by"], json.dumps(found, sort_keys=True))
        return found


class LpoMarkReadyOperator(BaseOperator):
    """Tell Airflow a new FP32 export or checkpoint is ready: succeed, so the outlets' Asset events fire.

    Args:
        kind: ``saved_model`` or ``checkpoint``.
        path: the export directory / checkpoint prefix; empty: the newest under ``root``.
        root: where to look when ``path`` is empty.

    The events' ``extra`` is ``{"path": <resolved path>}``; :class:`LpoFindInputsOperator`
    in the DAG scheduled on that Asset reads it. A path that is missing or incomplete
    fails the task (no event); nothing under ``root`` skips it (no event).
    """

    template_fields: Sequence[str] = ("kind", "path", "root")
    ui_color = "#f7f0e4"

    def __init__(self, *, kind: str, path: Any = "", root: Any = "", **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.path = path
        self.root = root

    @_fail_fast
    def execute(self, context) -> dict:
        from lpo import orchestration as orch

        try:
            found = orch.find_ready(self.kind, path=_opt(self.path), root=_opt(self.root))
        except orch.NothingToDo as e:
            log.info("Nothing to mark ready: %s", e)
            raise AirflowSkipException(str(e)) from None
        _emit_outlet_events(self, context, {"path": found})
        log.info("Marked %s ready: %s", self.kind, found)
        return {"kind": self.kind, "path": found}


def _shard_prefix(work_dir: str, shard: int) -> str:
    return os.path.join(work_dir, f"shard-{shard:05d}", "variables")


class LpoConvertShardOperator(BaseOperator):
    """Convert one shard of a new FP32 checkpoint (``lpo.convert_ckpt(..., shard=, num_shards=)``).

    Meant for dynamic task mapping: ``LpoConvertShardOperator.partial(...).expand(shard=[0, ..., N-1])``.
    Shard ``i`` goes to ``{work_dir}/shard-{i:05d}/variables``; a retry of a finished shard does nothing.

    Args:
        opt_model_path: optimized SavedModel (has the plan).
        ckpt_prefix: new FP32 checkpoint prefix.
        work_dir: directory of the shard checkpoints (shared by every shard and the merge).
        shard: this task's shard, 0-based.
        num_shards: number of shards.
    """

    template_fields: Sequence[str] = ("opt_model_path", "ckpt_prefix", "work_dir", "shard", "num_shards")
    ui_color = "#ece4f7"

    def __init__(self, *, opt_model_path: str, ckpt_prefix: str, work_dir: str, shard: Any, num_shards: Any,
                 **kwargs):
        super().__init__(**kwargs)
        self.opt_model_path = opt_model_path
        self.ckpt_prefix = ckpt_prefix
        self.work_dir = work_dir
        self.shard = shard
        self.num_shards = num_shards

    @_fail_fast
    @_quiet
    def execute(self, context) -> dict:
        import lpo

        opt_model = _path("opt_model_path", self.opt_model_path, must_exist=True)
        ckpt = _path("ckpt_prefix", self.ckpt_prefix)
        work = _path("work_dir", self.work_dir)
        n = _int("num_shards", self.num_shards)
        i = _int("shard", self.shard, minimum=0)
        result = lpo.convert_ckpt(ckpt, _shard_prefix(work, i), opt_model, shard=i, num_shards=n, quiet=True)
        return _jsonable(result.to_dict())


class LpoMergeCkptOperator(BaseOperator):
    """Merge the shards of a sharded conversion (``lpo.merge_ckpt``) into ``save_prefix``.

    Reads every ``{work_dir}/shard-NNNNN/variables`` of ``num_shards``; fails (no retry)
    when one is missing, failed or from another conversion. ``LpoRefreshOperator`` takes
    the merged prefix as its ``ckpt_prefix``.

    Args:
        work_dir: directory of the shard checkpoints.
        num_shards: number of shards.
        save_prefix: output checkpoint prefix (its directory is created if missing).
        overwrite: replace an existing ``save_prefix`` (default True).
    """

    template_fields: Sequence[str] = ("work_dir", "num_shards", "save_prefix", "overwrite")
    ui_color = "#ece4f7"

    def __init__(self, *, work_dir: str, num_shards: Any, save_prefix: str, overwrite: Any = True, **kwargs):
        super().__init__(**kwargs)
        self.work_dir = work_dir
        self.num_shards = num_shards
        self.save_prefix = save_prefix
        self.overwrite = overwrite

    @_fail_fast
    @_quiet
    def execute(self, context) -> dict:
        import lpo

        work = _path("work_dir", self.work_dir, must_exist=True)
        n = _int("num_shards", self.num_shards)
        save = _path("save_prefix", self.save_prefix)
        result = lpo.merge_ckpt([_shard_prefix(work, i) for i in range(n)], save,
                                overwrite=_bool(self.overwrite))
        return _jsonable(result.to_dict())
