"""Airflow deployment settings: the DAG params' defaults beyond the library's own, and where paths point.

They build on :mod:`lpo.options` (the pipeline data type, thresholds, batch sizes); each is
defined here once and read from here (``from lpo.orchestration.airflow_settings import AIRFLOW``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

from lpo.options import BATCH_SIZES_TEXT, CALIBRATE, ORCHESTRATOR_THRESHOLDS, PIPELINE_DATA_TYPE, THRESHOLDS, VALIDATE


@dataclass(frozen=True)
class AirflowOptions:
    """Defaults of the Airflow DAG params (pipelines/airflow/*.py) beyond the library's own.

    Path params default to ``""``: the Airflow Variable ``lpo_<param>`` if set, else
    ``<root>/<DAG_PATHS[param]>``, where ``root`` is ``$LPO_AIRFLOW_ROOT`` (``/data/lpo``).
    """

    root: str = "/data/lpo"
    data_type: str = PIPELINE_DATA_TYPE
    calib_rows: int = CALIBRATE.num_rows
    max_auc_drop: float = THRESHOLDS.max_auc_drop
    max_abs_diff: float = ORCHESTRATOR_THRESHOLDS["max_abs_diff"]
    validate_iters: int = VALIDATE.iters
    validate_batch_sizes: str = BATCH_SIZES_TEXT
    layout: str = "current"

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


AIRFLOW = AirflowOptions()
#: Where each DAG path param points when neither the run nor a Variable sets it (relative to the root).
DAG_PATHS = {
    "training_root": "training",
    "checkpoint_root": "checkpoints",
    "work_root": "work",
    "serving_dir": "serving/recsys",
    "calib_source": "data/calibration.csv",
    "heldout_data": "data/heldout.npz",
}


def airflow_root() -> str:
    """The root of the DAGs' default paths: ``$LPO_AIRFLOW_ROOT`` or :attr:`AirflowOptions.root`."""
    return os.environ.get("LPO_AIRFLOW_ROOT") or AIRFLOW.root


def dag_path_default(name: str, root: Optional[str] = None) -> str:
    """The built-in default of the DAG path param ``name`` (see :data:`DAG_PATHS`)."""
    return os.path.join(root or airflow_root(), DAG_PATHS[name])
