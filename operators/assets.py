"""The Airflow Assets the lpo DAGs produce and consume (import them in your own DAGs).

* :data:`FP32_MODEL` -- a new FP32 SavedModel export is ready; ``lpo_retrain`` runs on it.
* :data:`FP32_CHECKPOINT` -- a new FP32 checkpoint is ready; ``lpo_refresh`` runs on it.
* :data:`OPTIMIZED_MODEL` -- an optimized model was published (both DAGs' publish task).

An event's ``extra`` carries ``{"path": ...}`` (the export directory, the checkpoint
prefix, the published version directory; publish adds ``version``). A training job
marks its output ready by emitting an event: a task with ``outlets=[FP32_CHECKPOINT]``
that sets ``outlet_events[FP32_CHECKPOINT].extra = {"path": prefix}``, the DAG
``lpo_checkpoint_ready`` (``airflow dags trigger lpo_checkpoint_ready --conf
'{"path": ...}'``), or ``POST /api/v2/assets/events`` with ``{"asset_id": ...,
"extra": {"path": ...}}``.
"""
from __future__ import annotations

from airflow.sdk import Asset

FP32_MODEL = Asset("lpo_fp32_model")
FP32_CHECKPOINT = Asset("lpo_fp32_checkpoint")
OPTIMIZED_MODEL = Asset("lpo_optimized_model")

__all__ = ["FP32_MODEL", "FP32_CHECKPOINT", "OPTIMIZED_MODEL"]
