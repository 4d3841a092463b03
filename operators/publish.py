"""The publish step as an Airflow operator."""
from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator

from lpo.operators.common import emit_outlet_events, fail_fast, make_parent, path_arg, task_run_key
from lpo.orchestration.airflow_settings import AIRFLOW
from lpo.orchestration.publish import publish_model
from lpo.orchestration.steps import json_arg


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

    @fail_fast
    def execute(self, context) -> dict:
        model = path_arg("model_path", self.model_path, must_exist=True)
        serving = path_arg("serving_dir", self.serving_dir)
        make_parent("serving_dir", serving)  # the DAGs' <root>/serving/<name> on a fresh root
        version = str(self.version).strip() if self.version is not None else ""
        if not version:
            version = task_run_key(context)
        inputs = json_arg("inputs", self.inputs)
        out = publish_model(model, serving, version, layout=self.layout or AIRFLOW.layout,
                            inputs=inputs if isinstance(inputs, dict) else None)
        emit_outlet_events(self, context, {"path": out["published"], "version": out["version"]})
        return out
