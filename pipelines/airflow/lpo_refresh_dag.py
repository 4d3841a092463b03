"""lpo_refresh: a new FP32 checkpoint -> refresh the served optimized model -> validate (the gate) -> publish.

Runs when the Asset ``lpo_fp32_checkpoint`` gets an event (DAG ``lpo_checkpoint_ready``,
a training DAG's task with that outlet, or the REST API) or when triggered
(``airflow dags trigger lpo_refresh [--conf '{...}']``). No time schedule: unpausing
starts nothing. ``find_inputs`` picks the checkpoint: the ``ckpt_prefix`` param, else
the ``path`` of the triggering Asset event, else the newest complete checkpoint under
``checkpoint_root`` -- skipped with one log line if there is none or the served model
already comes from it. The model refreshed is the one served from ``serving_dir``; it
is validated against the FP32 reference (``fp32_model``'s graph with the new
checkpoint; by default the FP32 model the served one was optimized from). Publish
emits the Asset ``lpo_optimized_model``.

Path params left empty fall back to the Airflow Variable ``lpo_<param>``, then to
``<root>/...`` where root is the Variable ``lpo_root``, else ``$LPO_AIRFLOW_ROOT``, else
``/data/lpo``. Every default comes from lpo/options.py.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from lpo.operators.assets import FP32_CHECKPOINT, OPTIMIZED_MODEL
from lpo.operators.operators import (
    LpoFindInputsOperator, LpoPublishOperator, LpoRefreshOperator, LpoValidateOperator, gate_and_publish_params,
    path_param, path_setting,
)


with DAG(
    dag_id="lpo_refresh",
    description="Refresh the served optimized model with a new checkpoint, gate it, publish it",
    schedule=[FP32_CHECKPOINT],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["lpo"],
    params={
        "ckpt_prefix": Param("", type="string", description="FP32 checkpoint prefix (or a directory of "
                             "checkpoints). Empty: the path in the triggering Asset event, else the newest "
                             "under checkpoint_root"),
        "checkpoint_root": path_param("checkpoint_root", "Where the training job writes checkpoints "
                                      "(newest = highest relative path)"),
        "fp32_model": Param("", type="string", description="FP32 SavedModel to validate against. Empty: the "
                            "one the served model was optimized from, else the newest under training_root"),
        "training_root": path_param("training_root", "Where the training job exports SavedModels"),
        "work_root": path_param("work_root", "Work files: <work_root>/lpo_refresh/<run key>/"),
        "serving_dir": path_param("serving_dir", "The serving directory: the model served there is "
                                  "refreshed, and the result published there"),
        "heldout_data": path_param("heldout_data", "Held-out .npz (serving inputs + label) for the gate"),
        **gate_and_publish_params(),
    },
) as dag:
    find = LpoFindInputsOperator(
        task_id="find_inputs", pipeline="refresh", path="{{ params.ckpt_prefix }}",
        root=path_setting("checkpoint_root"), work_root=path_setting("work_root"),
        serving_dir=path_setting("serving_dir"),
        fp32_model="{{ params.fp32_model }}", training_root=path_setting("training_root"),
        version="{{ params.version }}")
    refresh = LpoRefreshOperator(
        task_id="refresh", opt_model_path=find.output["opt_model_path"], ckpt_prefix=find.output["ckpt_prefix"],
        save_path=find.output["refreshed"], fp32_model_path=find.output["fp32_model"],
        reference_path=find.output["reference"], multiple_outputs=True)
    validate = LpoValidateOperator(
        task_id="validate", original=refresh.output["reference_path"], optimized=refresh.output["save_path"],
        data=path_setting("heldout_data"), report_dir=find.output["report_dir"],
        max_auc_drop="{{ params.max_auc_drop }}", max_abs_diff="{{ params.max_abs_diff }}",
        iters="{{ params.validate_iters }}", batch_sizes="{{ params.validate_batch_sizes }}")
    publish = LpoPublishOperator(
        task_id="publish", model_path=refresh.output["save_path"], serving_dir=path_setting("serving_dir"),
        version=find.output["version"], layout="{{ params.layout }}",
        inputs={"fp32_model": find.output["fp32_model"], "ckpt_prefix": find.output["ckpt_prefix"]},
        outlets=[OPTIMIZED_MODEL])

    validate >> publish
