"""Input discovery: the newest complete SavedModel or checkpoint, what is served, what a run works on.

A run that finds no (new) input raises :class:`NothingToDo`, which orchestrators turn into a skip.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

from lpo.errors import ConfigError, DataError

#: The record publish writes into each published model (``assets.extra/``).
PUBLISH_RECORD = "lpo_publish.json"

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
