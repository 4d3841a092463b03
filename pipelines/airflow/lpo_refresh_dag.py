"""Hourly: new FP32 checkpoint -> refresh the optimized model -> validate -> publish.

The optimized model being refreshed is the one currently served
(``{serving_dir}/current``); the training job's checkpoint for the hour is
``{checkpoint_root}/{{ ts_nodash }}/ckpt``. The refreshed model is validated
against the FP32 reference (``fp32_model``'s graph with the new checkpoint).
Settings are DAG params with an ``lpo_<name>`` Airflow Variable fallback.
"""
from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from lpo.operators.operators import LpoPublishOperator, LpoRefreshOperator, LpoValidateOperator


def setting(name: str) -> str:
    """Template: the param ``name``, or the Variable ``lpo_<name>`` when the param is empty."""
    return f"{{{{ params.{name} if params.{name} not in (None, '') else var.value.get('lpo_{name}', '') }}}}"


_DEFAULT_ROOT = os.environ.get("LPO_AIRFLOW_ROOT", "/data/lpo")

WORK = setting("work_root") + "/refresh/{{ ts_nodash }}"

with DAG(
    dag_id="lpo_refresh",
    description="Refresh the served optimized model with the latest checkpoint, gate it, publish it",
    schedule="@hourly",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["lpo"],
    params={
        "checkpoint_root": Param(f"{_DEFAULT_ROOT}/checkpoints", type="string"),
        "fp32_model": Param(f"{_DEFAULT_ROOT}/training/latest/saved_model", type="string"),
        "work_root": Param(f"{_DEFAULT_ROOT}/work", type="string"),
        "serving_dir": Param(f"{_DEFAULT_ROOT}/serving/recsys", type="string"),
        "heldout_data": Param(f"{_DEFAULT_ROOT}/data/heldout.npz", type="string"),
        "max_auc_drop": Param(0.001, type="number"),
        "max_abs_diff": Param(-1.0, type="number", description="negative = not checked"),
        "validate_iters": Param(50, type="integer", minimum=1),
        "validate_batch_sizes": Param("1,64,512", type="string"),
    },
) as dag:
    refresh = LpoRefreshOperator(
        task_id="refresh", opt_model_path=setting("serving_dir") + "/current",
        ckpt_prefix=setting("checkpoint_root") + "/{{ ts_nodash }}/ckpt",
        save_path=WORK + "/refreshed", fp32_model_path=setting("fp32_model"),
        reference_path=WORK + "/fp32_reference")
    validate = LpoValidateOperator(
        task_id="validate", original="{{ ti.xcom_pull(task_ids='refresh')['reference_path'] }}",
        optimized="{{ ti.xcom_pull(task_ids='refresh')['save_path'] }}",
        data=setting("heldout_data"), report_dir=WORK + "/report",
        max_auc_drop="{{ params.max_auc_drop }}", max_abs_diff="{{ params.max_abs_diff }}",
        iters="{{ params.validate_iters }}", batch_sizes="{{ params.validate_batch_sizes }}")
    publish = LpoPublishOperator(
        task_id="publish", model_path="{{ ti.xcom_pull(task_ids='refresh')['save_path'] }}",
        serving_dir=setting("serving_dir"), version="refresh-{{ ts_nodash }}")

    refresh >> validate >> publish
