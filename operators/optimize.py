"""The optimize step (AUTO included) as an Airflow operator."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from airflow.sdk import BaseOperator

from lpo.operators.common import fail_fast, make_parent, path_arg, quiet
from lpo.options import AUTO_OPTIONS, OPTIMIZE
from lpo.orchestration.airflow_settings import AIRFLOW
from lpo.orchestration.steps import is_auto, optimize_step, optional


class LpoOptimizeOperator(BaseOperator):
    """Write a BF16/FP16/INT8 copy of a SavedModel (``lpo.optimize``).

    Args:
        model_path: FP32 SavedModel (read only).
        save_path: output SavedModel directory.
        data_type: ``BF16``, ``FP16``, ``INT8``, ``INT4`` or ``AUTO`` (default: the pipelines' default,
            :data:`lpo.options.PIPELINE_DATA_TYPE`).
        opt_config: ``{node: dtype}`` as a dict or JSON string; empty: every node gets ``data_type``.
        calib_file: calibration ``.npz`` (needed for static INT8 dense layers).
        embedding_scheme, dense_mode, int8_dense, calib_method: as in :func:`lpo.optimize`.
        target: the serving CPU (``host``: the worker this task runs on, or a preset such as
            ``avx2``, ``avx512_vnni``, ``amx``, ``portable``); recorded in the model's manifest.
        overwrite: replace a non-empty ``save_path`` (default True: reruns are idempotent).
        eval_file: ``data_type='AUTO'`` only: ``.npz`` of serving inputs + ``label``.
        max_auc_drop: AUTO's budget, largest ``|ΔAUC|`` vs FP32 (not the validate gate).
        auto_options: AUTO options (:class:`lpo.options.AutoOptions` fields) as a dict or JSON string.
        report_dir: AUTO's frontier report directory (optional).

    Returns (XCom): ``OptimizeResult.to_dict()``; for AUTO its ``auto`` entry is the headline
    (chosen opt_config, budget, tuning/confirmation figures), not every trial.
    """

    template_fields: Sequence[str] = ("model_path", "save_path", "data_type", "opt_config", "calib_file",
                                      "embedding_scheme", "dense_mode", "int8_dense", "calib_method",
                                      "target", "overwrite", "eval_file", "max_auc_drop", "auto_options",
                                      "report_dir")
    ui_color = "#dcebf7"

    def __init__(self, *, model_path: str, save_path: str, data_type: str = AIRFLOW.data_type,
                 opt_config: Any = None, calib_file: Optional[str] = None,
                 embedding_scheme: str = OPTIMIZE.embedding_scheme, dense_mode: str = OPTIMIZE.dense_mode,
                 int8_dense: str = OPTIMIZE.int8_dense, calib_method: str = OPTIMIZE.calib_method,
                 target: str = OPTIMIZE.target, overwrite: Any = True, eval_file: Optional[str] = None,
                 max_auc_drop: Any = AUTO_OPTIONS.max_auc_drop, auto_options: Any = None,
                 report_dir: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.eval_file = eval_file
        self.max_auc_drop = max_auc_drop
        self.auto_options = auto_options
        self.report_dir = report_dir
        self.model_path = model_path
        self.save_path = save_path
        self.data_type = data_type
        self.opt_config = opt_config
        self.calib_file = calib_file
        self.embedding_scheme = embedding_scheme
        self.dense_mode = dense_mode
        self.int8_dense = int8_dense
        self.calib_method = calib_method
        self.target = target
        self.overwrite = overwrite

    @fail_fast
    @quiet
    def execute(self, context) -> dict:
        model = path_arg("model_path", self.model_path, must_exist=True)
        save = path_arg("save_path", self.save_path)
        calib = optional(self.calib_file)
        if calib is not None:
            calib = path_arg("calib_file", calib, must_exist=True)
        make_parent("save_path", save)
        eval_file = path_arg("eval_file", self.eval_file, must_exist=True) if is_auto(self.data_type) else None
        return optimize_step(
            model, save, opt_config=self.opt_config, data_type=self.data_type, calib_file=calib,
            overwrite=self.overwrite, embedding_scheme=self.embedding_scheme, dense_mode=self.dense_mode,
            int8_dense=self.int8_dense, calib_method=self.calib_method, target=self.target, eval_file=eval_file,
            max_auc_drop=self.max_auc_drop, auto_options=self.auto_options, report_dir=self.report_dir)
