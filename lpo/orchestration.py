"""Glue shared by the Kubeflow components and the Airflow operators.

Nothing here optimizes anything: it maps between the public API (:mod:`lpo`) and
what an orchestrator needs (artifact layouts, flat metrics, an atomic publish).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lpo.errors import ConfigError, DataError, OutputExistsError

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


# --------------------------------------------------------------------------- finding inputs

_SKIP = re.compile(r"^(\.|temp-|tmp-)|\.lpo-tmp-|\.tmp$")


def _natural_key(name: str) -> list:
    """Sort key: digit runs compare as numbers (``ckpt-900`` < ``ckpt-1000``)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def is_saved_model(path: str) -> bool:
    """True if ``path`` is a complete SavedModel directory (graph, and its variables if any)."""
    if not os.path.isfile(os.path.join(path, "saved_model.pb")) and \
            not os.path.isfile(os.path.join(path, "saved_model.pbtxt")):
        return False
    var_dir = os.path.join(path, "variables")
    return not os.path.isdir(var_dir) or not os.listdir(var_dir) or \
        os.path.isfile(os.path.join(var_dir, "variables.index"))


def newest_saved_model(root: str) -> Optional[str]:
    """The newest complete SavedModel under ``root``, or None.

    ``root`` itself if it is one; else the child directory with the highest name in
    natural order (``20250102``, ``1735776000``, ``v10`` > ``v9``) that is a SavedModel
    or holds one in ``<child>/saved_model``. Hidden and temporary names (``.x``,
    ``temp-*``, Estimator's in-progress exports) are skipped.
    """
    if not os.path.isdir(root):
        return None
    if is_saved_model(root):
        return root
    for name in sorted(os.listdir(root), key=_natural_key, reverse=True):
        if _SKIP.search(name):
            continue
        for cand in (os.path.join(root, name), os.path.join(root, name, "saved_model")):
            if os.path.isdir(cand) and is_saved_model(cand):
                return cand
    return None


_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


def is_checkpoint(prefix: str) -> bool:
    """True if the V2 checkpoint ``prefix`` is complete: its ``.index`` and every data shard exist."""
    if not os.path.isfile(prefix + ".index"):
        return False
    folder, base = os.path.split(prefix)
    shards = [m for f in os.listdir(folder or ".") if f.startswith(base + ".data-")
              for m in [_SHARD.search(f)] if m]
    if not shards:
        return False
    total = int(shards[0].group(2))
    return len({m.group(1) for m in shards if int(m.group(2)) == total}) == total


def newest_checkpoint(root: str, max_depth: int = 3) -> Optional[str]:
    """The newest complete V2 checkpoint prefix at or under ``root``, or None.

    ``root`` may be a prefix itself. Otherwise every ``*.index`` down to ``max_depth``
    directories is a candidate; the newest is the highest relative path in natural
    order (``20250103/ckpt`` > ``20250102/ckpt``, ``model.ckpt-1000`` >
    ``model.ckpt-900``). TensorFlow writes a checkpoint's ``.index`` last (atomically),
    so a prefix whose ``.index`` exists is ready. Hidden and temporary names are skipped.
    """
    if is_checkpoint(root):
        return root
    if not os.path.isdir(root):
        return None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        dirnames[:] = [d for d in dirnames if not _SKIP.search(d)] if depth < max_depth else []
        for f in filenames:
            if f.endswith(".index") and not _SKIP.search(f):
                prefix = os.path.join(dirpath, f[:-len(".index")])
                if is_checkpoint(prefix):
                    found.append(prefix)
    if not found:
        return None
    return max(found, key=lambda p: [_natural_key(part) for part in os.path.relpath(p, root).split(os.sep)])


class NothingToDo(Exception):
    """Not an error: a run found no (new) input; orchestrators skip it with this message."""


def _explicit_model(path: str, what: str) -> str:
    if not is_saved_model(path):
        raise DataError(f"{what} {path} is not a complete SavedModel (no saved_model.pb, or variables "
                        "without variables.index); pass the export directory that holds saved_model.pb")
    return os.path.abspath(path)


def _explicit_checkpoint(path: str, what: str) -> str:
    found = newest_checkpoint(path)  # a prefix, or a directory holding checkpoints
    if found is None:
        raise DataError(f"{what} {path} is not a complete TensorFlow checkpoint (no {os.path.basename(path)}.index "
                        "with all its data shards) and no directory holding one; pass a checkpoint prefix "
                        "such as /ckpts/model.ckpt-200")
    return os.path.abspath(found)


def find_ready(kind: str, *, path: Optional[str] = None, root: Optional[str] = None) -> str:
    """The ``saved_model`` or ``checkpoint`` a run should use: ``path`` (checked), else the newest under ``root``.

    Raises DataError when ``path`` is given but not complete, :class:`NothingToDo`
    when ``root`` holds none (or is missing), ConfigError when neither is given.
    """
    if kind not in ("saved_model", "checkpoint"):
        raise ConfigError(f"kind must be 'saved_model' or 'checkpoint', got {kind!r}")
    what = "SavedModel" if kind == "saved_model" else "checkpoint"
    if path:
        return (_explicit_model if kind == "saved_model" else _explicit_checkpoint)(path, what)
    if not root:
        raise ConfigError(f"no {what} path and no root to look under; pass one of them")
    found = (newest_saved_model if kind == "saved_model" else newest_checkpoint)(root)
    if found is None:
        raise NothingToDo(f"no complete {what} under {root}" + ("" if os.path.isdir(root) else " (it does not exist)"))
    return os.path.abspath(found)


def _work_paths(work_dir: str, names: dict) -> dict:
    return {"work_dir": work_dir, **{k: os.path.join(work_dir, v) for k, v in names.items()}}


def _discover(kind: str, path: Optional[str], event_path: Optional[str], root: Optional[str],
              nothing: str) -> tuple[str, str]:
    """Return ``(found, found_by)``: ``path`` > the Asset event's path > the newest ready ``kind`` under ``root``."""
    if path:
        return find_ready(kind, path=path), "param"
    if event_path:
        return find_ready(kind, path=event_path), "asset_event"
    try:
        return find_ready(kind, root=root), "newest"
    except NothingToDo as e:
        raise NothingToDo(f"{e}: {nothing}") from None


def _same_path(a: Any, b: Any) -> bool:
    return bool(a) and bool(b) and os.path.realpath(str(a)) == os.path.realpath(str(b))


def find_retrain_inputs(*, path: Optional[str] = None, event_path: Optional[str] = None,
                        root: Optional[str] = None, serving_dir: Optional[str] = None, work_dir: str) -> dict:
    """Inputs of a retrain run: the FP32 model (``path`` > Asset event > newest under ``root``) and work paths.

    Raises :class:`NothingToDo` when discovery finds no SavedModel, or when the model found
    from an Asset event or as the newest is the one the model served from ``serving_dir`` was
    made from (optimized, or refreshed since): re-optimizing it would replace a newer refresh
    with an older checkpoint's weights. An explicit ``path`` is always optimized.
    """
    model, by = _discover("saved_model", path, event_path, root,
                          "nothing to optimize. Export a model there or pass model_path")
    served = served_model(serving_dir) if serving_dir and by != "param" else None
    if served is not None and _same_path(((read_publish_record(served) or {}).get("inputs") or {})
                                         .get("fp32_model"), model):
        raise NothingToDo(f"the FP32 model {model} is already served ({served}): nothing new. Pass model_path "
                          "to optimize it again")
    return {"model_path": model, "found_by": by,
            **_work_paths(work_dir, {"calib_file": "calibration.npz", "optimized": "optimized",
                                     "report_dir": "report"})}


def find_refresh_inputs(*, path: Optional[str] = None, event_path: Optional[str] = None,
                        root: Optional[str] = None, serving_dir: str, fp32_model: Optional[str] = None,
                        training_root: Optional[str] = None, work_dir: str) -> dict:
    """Inputs of a refresh run: the checkpoint, the served model to refresh, its FP32 model, work paths.

    The checkpoint is ``path`` > Asset event > the newest under ``root`` (an event's or the
    newest checkpoint is nothing new when the served model was made from it). The FP32 model
    is ``fp32_model`` > the one recorded when the served model was published > the newest
    under ``training_root``.
    Raises :class:`NothingToDo` when nothing is served yet or no new checkpoint is found.
    """
    served = served_model(serving_dir)
    if served is None:
        raise NothingToDo(f"no model is served from {serving_dir} yet: run lpo_retrain first")
    record = read_publish_record(served) or {}
    inputs = record.get("inputs") or {}
    ckpt, by = _discover("checkpoint", path, event_path, root,
                         "nothing to refresh. Write a checkpoint there or pass ckpt_prefix")
    if by != "param" and _same_path(inputs.get("ckpt_prefix"), ckpt):
        raise NothingToDo(f"the checkpoint {ckpt} is already served ({served}): nothing new. Pass ckpt_prefix "
                          "to refresh it again")
    if fp32_model:
        fp32 = find_ready("saved_model", path=fp32_model)
    elif inputs.get("fp32_model") and is_saved_model(inputs["fp32_model"]):
        fp32 = inputs["fp32_model"]
    elif training_root and newest_saved_model(training_root):
        fp32 = os.path.abspath(newest_saved_model(training_root))
    else:
        raise DataError(f"no FP32 model to validate the refresh against: the served model {served} does not "
                        "record one; pass fp32_model (the SavedModel the served model was optimized from)")
    return {"ckpt_prefix": ckpt, "found_by": by, "opt_model_path": served, "fp32_model": fp32,
            **_work_paths(work_dir, {"refreshed": "refreshed", "reference": "fp32_reference",
                                     "report_dir": "report"})}


def run_key(when: Any = None) -> str:
    """A run's key, ``YYYYMMDDHHMMSS`` (UTC) of ``when`` (a datetime; default now).

    Used for work directories and as the published version: numeric (as TF Serving
    wants) and increasing with time.
    """
    if when is None:
        when = _dt.datetime.now(_dt.timezone.utc)
    if isinstance(when, str):
        when = _dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is not None:
        when = when.astimezone(_dt.timezone.utc)
    return when.strftime("%Y%m%d%H%M%S")


# --------------------------------------------------------------------------- publish

#: The record publish writes into each published model (``assets.extra/``).
PUBLISH_RECORD = "lpo_publish.json"


@dataclass
class PublishResult:
    """Where :func:`publish_model` put a model."""

    published: str
    version: str
    layout: str
    serving_dir: str
    current: Optional[str] = None
    unchanged: bool = False
    record: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


def _version_dir(serving_dir: str, version: str, layout: str) -> str:
    if layout == "tf_serving":
        return os.path.join(serving_dir, version)
    return os.path.join(serving_dir, "versions", version)


def _clean_version(version: Any, layout: str) -> str:
    text = str(version).strip() if version is not None else ""
    if layout == "tf_serving":
        if not text.isdigit() or int(text) <= 0 or int(text) >= 2 ** 63:
            raise ConfigError(f"version {version!r} is not a positive integer; TF Serving only loads "
                              "numeric version directories (e.g. 20250102030405)")
        return str(int(text))
    clean = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text).lstrip(".")
    if not clean:
        raise ConfigError(f"version {version!r} is empty; pass a version name such as 20250102030405")
    return clean


def read_publish_record(model_dir: str) -> Optional[dict]:
    """The publish record of a published model directory, or None."""
    try:
        with open(os.path.join(model_dir, "assets.extra", PUBLISH_RECORD), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def served_model(serving_dir: str) -> Optional[str]:
    """The model a server would serve from ``serving_dir``, or None.

    The target of ``current`` (layout ``current``), else the highest numeric
    version directory (layout ``tf_serving``) that is a complete SavedModel.
    """
    current = os.path.join(serving_dir, "current")
    if os.path.islink(current) and is_saved_model(current):
        return os.path.normpath(os.path.join(serving_dir, os.readlink(current)))
    if not os.path.isdir(serving_dir):
        return None
    versions = [n for n in os.listdir(serving_dir) if n.isdigit()]
    for name in sorted(versions, key=int, reverse=True):
        if is_saved_model(os.path.join(serving_dir, name)):
            return os.path.join(serving_dir, name)
    return None


def check_serving_dir(serving_dir: str) -> None:
    """Raise ConfigError unless ``serving_dir`` is a writable directory, or can be created as one.

    A missing ``serving_dir`` is created by publishing, but not its parent: a missing parent
    is more likely a typo (or an unmounted volume) than a wish.
    """
    from lpo.fsutil import check_parent_writable

    if not os.path.lexists(serving_dir):
        check_parent_writable(serving_dir)
    elif not os.path.isdir(serving_dir):
        raise ConfigError(f"serving directory {serving_dir} exists and is not a directory; pass the directory "
                          "the models are published into")
    elif not os.access(serving_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"serving directory {serving_dir} is not writable; choose another one or fix its "
                          "permissions")


def publish_model(model_path: str, serving_dir: str, version: Any, *, layout: str = "current",
                  inputs: Optional[dict] = None) -> dict:
    """Publish ``model_path`` into ``serving_dir`` as ``version``; return a :class:`PublishResult` dict.

    Layouts (:data:`lpo.options.PUBLISH_LAYOUTS`):

    * ``current``: the model goes to ``serving_dir/versions/<version>``, then the
      symlink ``serving_dir/current`` is switched to it;
    * ``tf_serving``: the model goes to ``serving_dir/<version>`` (a positive integer),
      the directory TF Serving's file system poller watches.

    The copy is built in a temporary sibling, fsynced, and renamed into place
    (:func:`lpo.fsutil.atomic_output_dir`); the ``current`` link is replaced in one
    step (:func:`lpo.fsutil.atomic_symlink`). A reader therefore sees the old model or
    the new one, complete, never neither. Publishing a version again with the same
    model is a no-op (an Airflow retry); with a different model it replaces the
    version in one atomic exchange (``current`` layout) or is refused
    (``tf_serving``: a server does not reload a version it has loaded). ``serving_dir`` is
    checked first (:func:`check_serving_dir`): a missing one is created, its parent is not.
    The published copy gets ``assets.extra/lpo_publish.json`` (source, checksum,
    ``inputs``, time), which refresh runs read to find what is served.
    """
    from lpo.fsutil import atomic_output_dir, atomic_symlink, check_not_inside, cleanup_stale_temps, tree_checksum
    from lpo.options import PUBLISH_LAYOUTS, choice

    layout = choice(layout, PUBLISH_LAYOUTS, "layout")
    if not os.path.isdir(model_path) or not is_saved_model(model_path):
        raise DataError(f"model to publish not found or not a complete SavedModel: {model_path}")
    version = _clean_version(version, layout)
    serving_dir = os.path.abspath(serving_dir)
    check_serving_dir(serving_dir)
    dest = _version_dir(serving_dir, version, layout)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    cleanup_stale_temps(dest)  # left by a killed publish
    checksum = tree_checksum(model_path)
    record = {"version": version, "source": os.path.abspath(model_path), "source_checksum": checksum,
              "inputs": dict(inputs or {}),
              "published_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    old = read_publish_record(dest) if os.path.isdir(dest) else None
    unchanged = old is not None and old.get("source_checksum") == checksum and is_saved_model(dest)
    if unchanged:
        record = old
        log.info("Version %s in %s already holds this model; not copied again", version, serving_dir)
    else:
        check_not_inside(dest, model_path)
        if os.path.lexists(dest) and layout == "tf_serving":
            raise OutputExistsError(
                f"version {version} already exists in {serving_dir} with another model; TF Serving does not "
                "reload a version it has loaded: publish under a new (higher) version number")
        with atomic_output_dir(dest, overwrite=True) as tmp:
            shutil.copytree(model_path, tmp, symlinks=False, dirs_exist_ok=True)
            extra = os.path.join(tmp, "assets.extra")
            os.makedirs(extra, exist_ok=True)
            with open(os.path.join(extra, PUBLISH_RECORD), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2, sort_keys=True)
    current = None
    if layout == "current":
        current = os.fspath(atomic_symlink(os.path.join("versions", version), os.path.join(serving_dir, "current")))
    log.info("Published %s as %s%s", model_path, dest, f" (current -> versions/{version})" if current else "")
    return PublishResult(published=dest, version=version, layout=layout, serving_dir=serving_dir,
                         current=current, unchanged=unchanged, record=record).to_dict()
