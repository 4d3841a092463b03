"""lpo_model_ready / lpo_checkpoint_ready: mark a new FP32 export or checkpoint ready.

Each DAG has one task that checks the given ``path`` is complete (or finds the newest
under the root when ``path`` is empty) and succeeds, which emits an event on its
Asset with ``extra={"path": ...}``; that event starts ``lpo_retrain`` (Asset
``lpo_fp32_model``) or ``lpo_refresh`` (Asset ``lpo_fp32_checkpoint``). A training job
that runs outside Airflow calls, when its output is complete::

    airflow dags trigger lpo_checkpoint_ready --conf '{"path": "/data/lpo/checkpoints/run1/model.ckpt-2000"}'

(or ``airflow assets materialize --name lpo_fp32_checkpoint`` to take the newest).
"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from lpo.operators.assets import FP32_CHECKPOINT, FP32_MODEL
from lpo.operators.operators import LpoMarkReadyOperator, path_param, path_setting

for dag_id, kind, asset, root, what in (
        ("lpo_model_ready", "saved_model", FP32_MODEL, "training_root", "FP32 SavedModel export directory"),
        ("lpo_checkpoint_ready", "checkpoint", FP32_CHECKPOINT, "checkpoint_root", "FP32 checkpoint prefix")):
    with DAG(
        dag_id=dag_id,
        description=f"Emit the Asset {asset.name}: a new {what} is ready",
        schedule=None,
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        tags=["lpo"],
        params={
            "path": Param("", type="string", description=f"The new {what}. Empty: the newest under {root}"),
            root: path_param(root, "Where to look when path is empty"),
        },
    ) as dag:
        LpoMarkReadyOperator(
            task_id="mark_ready", kind=kind, path="{{ params.path }}",
            root=path_setting(root),
            outlets=[asset])
    globals()[dag_id] = dag
del dag
