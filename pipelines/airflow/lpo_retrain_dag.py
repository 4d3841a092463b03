"""Daily: new FP32 SavedModel from the training job -> calibrate -> optimize -> validate -> publish.

Settings are DAG params (override per run with ``--conf`` / ``run_conf``); each
path param falls back to an Airflow Variable of the same name prefixed ``lpo_``
(e.g. ``lpo_serving_dir``) when the param is left empty. The training job's
export for the run's date is ``{training_root}/{{ ds_nodash }}/saved_model``.
Publish runs only when the validation gate passed.
"""
from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from lpo.operators.operators import (
    LpoCalibrateOperator, LpoOptimizeOperator, LpoPublishOperator, LpoValidateOperator,
)


def setting(name: str) -> str:
    """Template: the param ``name``, or the Variable ``lpo_<name>`` when the param is empty."""
    return f"{{{{ params.{name} if params.{name} not in (None, '') else var.value.get('lpo_{name}', '') }}}}"


_DEFAULT_ROOT = os.environ.get("LPO_AIRFLOW_ROOT", "/data/lpo")

MODEL_PATH = setting("training_root") + "/{{ ds_nodash }}/saved_model"
WORK = setting("work_root") + "/retrain/{{ ts_nodash }}"

with DAG(
    dag_id="lpo_retrain",
    description="Optimize the freshly trained recommendation model and publish it if it passes the gate",
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["lpo"],
    render_template_as_native_obj=False,
    params={
        "training_root": Param(f"{_DEFAULT_ROOT}/training", type="string"),
        "work_root": Param(f"{_DEFAULT_ROOT}/work", type="string"),
        "serving_dir": Param(f"{_DEFAULT_ROOT}/serving/recsys", type="string"),
        "calib_source": Param(f"{_DEFAULT_ROOT}/data/calibration.csv", type="string"),
        "heldout_data": Param(f"{_DEFAULT_ROOT}/data/heldout.npz", type="string"),
        "data_type": Param("INT8", enum=["BF16", "FP16", "INT8"]),
        "opt_config": Param("", type="string", description="JSON {node: dtype}; empty = all nodes"),
        "calib_rows": Param(1024, type="integer", minimum=1),
        "max_auc_drop": Param(0.001, type="number"),
        "max_abs_diff": Param(-1.0, type="number", description="negative = not checked"),
        "validate_iters": Param(50, type="integer", minimum=1),
        "validate_batch_sizes": Param("1,64,512", type="string"),
    },
) as dag:
    calibrate = LpoCalibrateOperator(
        task_id="calibrate", source=setting("calib_source"), model_path=MODEL_PATH,
        save_path=WORK + "/calibration.npz", num_rows="{{ params.calib_rows }}")
    optimize = LpoOptimizeOperator(
        task_id="optimize", model_path=MODEL_PATH, save_path=WORK + "/optimized",
        data_type="{{ params.data_type }}", opt_config="{{ params.opt_config }}",
        calib_file="{{ ti.xcom_pull(task_ids='calibrate')['path'] }}")
    validate = LpoValidateOperator(
        task_id="validate", original=MODEL_PATH,
        optimized="{{ ti.xcom_pull(task_ids='optimize')['save_path'] }}",
        data=setting("heldout_data"), report_dir=WORK + "/report",
        max_auc_drop="{{ params.max_auc_drop }}", max_abs_diff="{{ params.max_abs_diff }}",
        iters="{{ params.validate_iters }}", batch_sizes="{{ params.validate_batch_sizes }}")
    publish = LpoPublishOperator(
        task_id="publish", model_path="{{ ti.xcom_pull(task_ids='optimize')['save_path'] }}",
        serving_dir=setting("serving_dir"), version="{{ ts_nodash }}")

    calibrate >> optimize >> validate >> publish
