"""Optimize step: FP32 SavedModel in, low-precision SavedModel out."""
from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from lpo.components.defaults import with_defaults
from lpo.components.image import LPO_IMAGE
from lpo.options import AUTO_OPTIONS, OPTIMIZE, PIPELINE_DATA_TYPE


@dsl.component(base_image=LPO_IMAGE, install_kfp_package=False)
@with_defaults(OPTIMIZE, data_type=PIPELINE_DATA_TYPE, max_auc_drop=AUTO_OPTIONS.max_auc_drop,
               auto_max_evals=AUTO_OPTIONS.max_evals, auto_seed=AUTO_OPTIONS.seed)
def optimize(
    model: Input[Model],
    optimized: Output[Model],
    *,
    data_type: str,
    opt_config: str = "",
    calibration: Optional[Input[Dataset]] = None,
    embedding_scheme: str,
    dense_mode: str,
    int8_dense: str,
    calib_method: str,
    eval_data: str = "",
    max_auc_drop: float,
    auto_max_evals: int,
    auto_seed: int,
    target: str,
):
    """Write a BF16/FP16/INT8 (or AUTO) copy of ``model``; the SavedModel is the directory ``optimized.path``.

    Args:
        model: FP32 SavedModel (read only).
        optimized: output SavedModel; its metadata gets ``data_type``, ``optimized_nodes``
            and ``report`` (``OptimizeResult.to_dict()``).
        data_type: default target precision.
        opt_config: JSON object ``{node name: dtype}``; empty: every node gets ``data_type``.
        calibration: Dataset from the calibrate step (needed for calibrated INT8 dense forms: compute, simulate).
        embedding_scheme: ``per_dim`` or ``per_row`` INT8 table scales.
        dense_mode: ``auto``, ``weight_only`` or ``compute`` for BF16/FP16 dense layers.
        int8_dense: ``auto``, ``compute``, ``simulate`` (old name ``static``) or ``weight_only``.
        calib_method: ``l2``, ``minmax`` or ``percentile``.
        eval_data: ``data_type='AUTO'`` only: ``.npz`` of serving inputs + ``label`` (like validate's data).
        max_auc_drop: AUTO's budget, largest ``|ΔAUC|`` vs FP32 (not the validate gate).
        auto_max_evals: AUTO: most configurations evaluated.
        auto_seed: AUTO: seed of the tuning/confirmation row split.
        target: the serving CPU: ``host`` (the pod this step runs on) or a preset (``avx2``,
            ``avx512_vnni``, ``avx512_bf16``, ``amx``, ``zen4``, ``portable``, ...); the output's
            metadata gets ``target`` and ``requires``.
    """
    from lpo.log import quiet_tensorflow_process

    quiet_tensorflow_process()  # before TF loads: its start-up noise stays out of the step's log
    from lpo.orchestration.artifacts import calibration_file
    from lpo.orchestration.steps import optimize_step

    report = optimize_step(
        model.path, optimized.path, opt_config=opt_config, data_type=data_type,
        calib_file=calibration_file(calibration.path) if calibration is not None else None,
        embedding_scheme=embedding_scheme, dense_mode=dense_mode, int8_dense=int8_dense,
        calib_method=calib_method, target=target, eval_file=eval_data, max_auc_drop=max_auc_drop,
        max_evals=auto_max_evals, seed=auto_seed)
    optimized.metadata.update({
        "data_type": str(report.get("data_type", data_type)),
        "target": report.get("target") or {},
        "requires": report.get("requires") or {},
        "optimized_nodes": len(report.get("optimized") or []),
        "report": report,
    })


@dsl.container_component
def optimize_cli(
    model: Input[Model],
    optimized: Output[Model],
    data_type: str = PIPELINE_DATA_TYPE,
    calibration: Optional[Input[Dataset]] = None,
    opt_config: Optional[Input[Artifact]] = None,
    embedding_scheme: str = OPTIMIZE.embedding_scheme,
    dense_mode: str = OPTIMIZE.dense_mode,
    int8_dense: str = OPTIMIZE.int8_dense,
    calib_method: str = OPTIMIZE.calib_method,
    target: str = OPTIMIZE.target,
):
    """The optimize step as ``lpo optimize`` in :data:`LPO_IMAGE` (the same options as :func:`optimize`).

    ``opt_config`` is a JSON file artifact here (the CLI's ``--config``);
    ``calibration`` is the directory written by a calibrate step.
    """
    return dsl.ContainerSpec(
        image=LPO_IMAGE,
        command=["lpo"],
        args=["optimize", model.path, optimized.path, "--data-type", data_type, "--json",
              "--embedding-scheme", embedding_scheme, "--dense-mode", dense_mode, "--int8-dense", int8_dense,
              "--calib-method", calib_method, "--target", target,
              dsl.IfPresentPlaceholder(
                  input_name="calibration",
                  then=["--calib", dsl.ConcatPlaceholder([calibration.path, "/calibration.npz"])]),
              dsl.IfPresentPlaceholder(input_name="opt_config", then=["--config", opt_config.path])])
