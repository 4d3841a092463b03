"""Glue shared by the Kubeflow components, the Airflow operators and the CLI.

Nothing here optimizes anything: it maps between the public API (:mod:`lpo`) and
what an orchestrator needs.

* :mod:`~lpo.orchestration.steps`: one function per step (optimize, validate, calibrate,
  convert) that the CLI, the KFP components and the Airflow operators call, so their
  arguments (AUTO, thresholds) are packed and normalized once;
* :mod:`~lpo.orchestration.discovery`: the newest complete SavedModel/checkpoint, what is
  served, the inputs of a retrain/refresh run, :class:`NothingToDo`;
* :mod:`~lpo.orchestration.publish`: the atomic publish into a serving directory, run keys;
* :mod:`~lpo.orchestration.artifacts`: KFP artifact layout, flat metrics, AUTO summaries,
  the FP32 reference of a refresh;
* :mod:`~lpo.orchestration.airflow_settings`: the Airflow DAG params' defaults and default paths.

Every name is re-exported here: ``from lpo.orchestration import publish_model`` works.
"""
from __future__ import annotations

from lpo.orchestration.artifacts import (CALIB_FILE, auto_summary, calibration_file, fp32_model_with_checkpoint,
                                         validation_metrics)
from lpo.orchestration.discovery import (PUBLISH_RECORD, NothingToDo, find_ready, find_refresh_inputs,
                                         find_retrain_inputs, is_checkpoint, is_saved_model, newest_checkpoint,
                                         newest_saved_model, read_publish_record, served_model)
from lpo.orchestration.publish import PublishResult, check_serving_dir, publish_model, run_key

__all__ = [
    "CALIB_FILE", "auto_summary", "calibration_file", "fp32_model_with_checkpoint", "validation_metrics",
    "PUBLISH_RECORD", "NothingToDo", "find_ready", "find_refresh_inputs", "find_retrain_inputs", "is_checkpoint",
    "is_saved_model", "newest_checkpoint", "newest_saved_model", "read_publish_record", "served_model",
    "PublishResult", "check_serving_dir", "publish_model", "run_key",
]
