"""lpo_retrain: a new FP32 SavedModel -> calibrate -> optimize -> validate (the gate) -> publish.

Runs when triggered (``airflow dags trigger lpo_retrain [--conf '{...}']``) or when the
Asset ``lpo_fp32_model`` gets an event (DAG ``lpo_model_ready``, a training DAG's task
with that outlet, or the REST API). There is no time schedule, so unpausing starts
nothing. The first task, ``find_inputs``, picks the model: the ``model_path`` param,
else the ``path`` of the triggering Asset event, else the newest SavedModel under
``training_root``; when there is none, or the model found from an event or as the
newest is the one the served model was made from (optimized, or refreshed since), the
run is skipped with one log line saying why (an explicit ``model_path`` always runs). Runs need no logical date: work directories and the published version use the
run's key (``YYYYMMDDHHMMSS`` of ``dag_run.run_after``). Publish runs only when the
gate passed and emits the Asset ``lpo_optimized_model``.

Path params left empty fall back to the Airflow Variable ``lpo_<param>``, then to
``<root>/...`` where root is the Variable ``lpo_root``, else ``$LPO_AIRFLOW_ROOT``, else
``/data/lpo``. Every default comes from lpo/options.py.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from lpo.operators.assets import FP32_MODEL, OPTIMIZED_MODEL
from lpo.operators.operators import (
    LpoCalibrateOperator, LpoFindInputsOperator, LpoOptimizeOperator, LpoPublishOperator, LpoValidateOperator,
    gate_and_publish_params, path_param, path_setting,
)
from lpo.options import DATA_TYPES
from lpo.orchestration.airflow_settings import AIRFLOW


with DAG(
    dag_id="lpo_retrain",
    description="Optimize a freshly trained recommendation model and publish it if it passes the gate",
    schedule=[FP32_MODEL],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["lpo"],
    params={
        "model_path": Param("", type="string", description="FP32 SavedModel to optimize. Empty: the path "
                            "in the triggering Asset event, else the newest SavedModel under training_root"),
        "training_root": path_param("training_root", "Where the training job exports SavedModels "
                                    "(<root>/<name>/ or <root>/<name>/saved_model/; newest = highest name)"),
        "work_root": path_param("work_root", "Work files: <work_root>/lpo_retrain/<run key>/"),
        "serving_dir": path_param("serving_dir", "Where validated models are published"),
        "calib_source": path_param("calib_source", "CSV/TSV/TFRecord/npz to sample calibration rows from"),
        "heldout_data": path_param("heldout_data", "Held-out .npz (serving inputs + label) for the gate"),
        "data_type": Param(AIRFLOW.data_type, enum=list(DATA_TYPES), description="Target precision"),
        "opt_config": Param("", type="string", description="JSON {node: dtype} per node; empty: all nodes "
                            "get data_type"),
        "calib_rows": Param(AIRFLOW.calib_rows, type="integer", minimum=1,
                            description="Calibration rows to sample"),
        **gate_and_publish_params(),
    },
) as dag:
    find = LpoFindInputsOperator(
        task_id="find_inputs", pipeline="retrain", path="{{ params.model_path }}",
        root=path_setting("training_root"), work_root=path_setting("work_root"),
        serving_dir=path_setting("serving_dir"), version="{{ params.version }}")
    calibrate = LpoCalibrateOperator(
        task_id="calibrate", source=path_setting("calib_source"), model_path=find.output["model_path"],
        save_path=find.output["calib_file"], num_rows="{{ params.calib_rows }}", multiple_outputs=True)
    optimize = LpoOptimizeOperator(
        task_id="optimize", model_path=find.output["model_path"], save_path=find.output["optimized"],
        data_type="{{ params.data_type }}", opt_config="{{ params.opt_config }}",
        calib_file=calibrate.output["path"], multiple_outputs=True)
    validate = LpoValidateOperator(
        task_id="validate", original=find.output["model_path"], optimized=optimize.output["save_path"],
        data=path_setting("heldout_data"), report_dir=find.output["report_dir"],
        max_auc_drop="{{ params.max_auc_drop }}", max_abs_diff="{{ params.max_abs_diff }}",
        iters="{{ params.validate_iters }}", batch_sizes="{{ params.validate_batch_sizes }}")
    publish = LpoPublishOperator(
        task_id="publish", model_path=optimize.output["save_path"], serving_dir=path_setting("serving_dir"),
        version=find.output["version"], layout="{{ params.layout }}",
        inputs={"fp32_model": find.output["model_path"]}, outlets=[OPTIMIZED_MODEL])

    validate >> publish
