"""``lpo_retrain`` with every step in its own pod: KubernetesPodOperator + the lpo image.

Loads only where ``apache-airflow-providers-cncf-kubernetes`` is installed;
elsewhere this file defines no DAG (and logs why). Each step runs the ``lpo``
CLI in :data:`lpo.components.image.LPO_IMAGE` (the same contract as the KFP
container components); the paths must be on a volume every pod mounts
(``pvc_name`` at ``/data/lpo``). Publishing runs ``lpo publish`` in a pod (atomic,
fsynced). Like ``lpo_retrain`` it has no time schedule and needs no logical date:
trigger it with ``model_path`` (a SavedModel on the volume); work files and the
published version use the run key (``YYYYMMDDHHMMSS`` of ``dag_run.run_after``).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

try:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
except ImportError:  # the provider is optional
    KubernetesPodOperator = None
    log.info("apache-airflow-providers-cncf-kubernetes is not installed: lpo_retrain_k8s not defined")

if KubernetesPodOperator is not None:
    import pendulum
    from airflow.sdk import DAG, Param
    from kubernetes.client import models as k8s

    from lpo.components.image import LPO_IMAGE
    from lpo.options import DATA_TYPES, PUBLISH_LAYOUTS
    from lpo.orchestration.airflow_settings import AIRFLOW

    MOUNT = AIRFLOW.root
    KEY = "{{ dag_run.run_after.strftime('%Y%m%d%H%M%S') }}"
    MODEL = "{{ params.model_path }}"
    WORK = MOUNT + "/work/lpo_retrain_k8s/" + KEY
    volume = k8s.V1Volume(name="lpo-data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
        claim_name="{{ params.pvc_name }}"))
    mount = k8s.V1VolumeMount(name="lpo-data", mount_path=MOUNT)

    def step(task_id: str, arguments: list[str], cmds: list[str] | None = None) -> KubernetesPodOperator:
        return KubernetesPodOperator(
            task_id=task_id, name=f"lpo-{task_id}", image=LPO_IMAGE, cmds=cmds or ["lpo"],
            arguments=arguments, namespace="{{ params.namespace }}", volumes=[volume],
            volume_mounts=[mount], get_logs=True, on_finish_action="delete_pod")

    with DAG(
        dag_id="lpo_retrain_k8s",
        description="lpo_retrain, each step a pod running the lpo CLI image",
        schedule=None,
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=["lpo", "kubernetes"],
        params={"model_path": Param(f"{MOUNT}/training/latest/saved_model", type="string",
                                    description="FP32 SavedModel on the volume"),
                "namespace": Param("default", type="string"),
                "pvc_name": Param("lpo-data", type="string"),
                "data_type": Param(AIRFLOW.data_type, enum=list(DATA_TYPES)),
                "max_auc_drop": Param(AIRFLOW.max_auc_drop, type="number"),
                "layout": Param(AIRFLOW.layout, enum=list(PUBLISH_LAYOUTS))},
    ) as dag:
        calibrate = step("calibrate", ["calibrate", MOUNT + "/data/calibration.csv", WORK + "/calibration.npz",
                                       "--model", MODEL, "--overwrite"])
        optimize = step("optimize", ["optimize", MODEL, WORK + "/optimized", "--data-type",
                                     "{{ params.data_type }}", "--calib", WORK + "/calibration.npz",
                                     "--overwrite"])
        validate = step("validate", ["validate", MODEL, WORK + "/optimized", MOUNT + "/data/heldout.npz",
                                     "--report-dir", WORK + "/report",
                                     "--max-auc-drop", "{{ params.max_auc_drop }}"])
        publish = step("publish", ["publish", WORK + "/optimized", MOUNT + "/serving/recsys", "--version", KEY,
                                   "--layout", "{{ params.layout }}"])
        calibrate >> optimize >> validate >> publish
