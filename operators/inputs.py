"""What a run works on: find its inputs (or skip the run), and mark a new export or checkpoint ready."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from lpo.errors import ConfigError
from lpo.operators.common import emit_outlet_events, event_path, fail_fast, path_arg, task_run_key
from lpo.orchestration.discovery import NothingToDo, find_ready, find_refresh_inputs, find_retrain_inputs
from lpo.orchestration.steps import optional

log = logging.getLogger(__name__)


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

    @fail_fast
    def execute(self, context) -> dict:
        key = task_run_key(context)
        dag_id = getattr(getattr(self, "dag", None), "dag_id", None) or "lpo"
        work = os.path.join(path_arg("work_root", self.work_root), dag_id, key)
        try:
            if self.pipeline == "retrain":
                found = find_retrain_inputs(path=optional(self.path), event_path=event_path(context),
                                            root=optional(self.root), serving_dir=optional(self.serving_dir),
                                            work_dir=work)
            elif self.pipeline == "refresh":
                found = find_refresh_inputs(
                    path=optional(self.path), event_path=event_path(context), root=optional(self.root),
                    serving_dir=path_arg("serving_dir", self.serving_dir), fp32_model=optional(self.fp32_model),
                    training_root=optional(self.training_root), work_dir=work)
            else:
                raise ConfigError(f"pipeline must be 'retrain' or 'refresh', got {self.pipeline!r}")
        except NothingToDo as e:
            log.info("Nothing to do, skipping this run: %s", e)
            raise AirflowSkipException(str(e)) from None
        found["run_key"] = key
        found["version"] = str(self.version).strip() if optional(self.version) is not None else key
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

    @fail_fast
    def execute(self, context) -> dict:
        try:
            found = find_ready(self.kind, path=optional(self.path), root=optional(self.root))
        except NothingToDo as e:
            log.info("Nothing to mark ready: %s", e)
            raise AirflowSkipException(str(e)) from None
        emit_outlet_events(self, context, {"path": found})
        log.info("Marked %s ready: %s", self.kind, found)
        return {"kind": self.kind, "path": found}
