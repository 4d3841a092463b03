"""The lpo KFP pipelines: ``optimize_pipeline``, ``refresh_pipeline`` and ``sharded_refresh_pipeline``.

Defined here (shipped as ``lpo.components.pipelines``) so that an installed lpo
can run them; ``pipelines/kfp/`` re-exports them and compiles them to IR YAML.
Inputs given as URIs/paths are imported as artifacts with ``dsl.importer``.
"""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Metrics, Model

from lpo.components.calibrate import calibrate
from lpo.components.convert_shard import convert_shard
from lpo.components.merge_ckpt import merge_refresh
from lpo.components.optimize import optimize
from lpo.components.refresh import refresh
from lpo.components.shard_indices import shard_indices
from lpo.components.validate import validate
from lpo.options import (
    BATCH_SIZES_TEXT, CALIBRATE, NUM_SHARDS, OPTIMIZE, ORCHESTRATOR_THRESHOLDS, PIPELINE_DATA_TYPE, VALIDATE,
)


@dsl.pipeline(name="lpo-optimize",
              description="calibrate -> optimize -> validate (the gate) an FP32 recommendation SavedModel")
def optimize_pipeline(
    model_uri: str,
    calib_source: str,
    heldout_data: str,
    data_type: str = PIPELINE_DATA_TYPE,
    opt_config: str = "",
    calib_rows: int = CALIBRATE.num_rows,
    max_auc_drop: float = ORCHESTRATOR_THRESHOLDS["max_auc_drop"],
    max_abs_diff: float = ORCHESTRATOR_THRESHOLDS["max_abs_diff"],
    max_latency_ratio: float = ORCHESTRATOR_THRESHOLDS["max_latency_ratio"],
    min_size_reduction: float = ORCHESTRATOR_THRESHOLDS["min_size_reduction"],
    validate_iters: int = VALIDATE.iters,
    validate_batch_sizes: str = BATCH_SIZES_TEXT,
    validate_max_rows: int = 0,
    target: str = OPTIMIZE.target,
) -> NamedTuple("Outputs", optimized=Model, metrics=Metrics, report=HTML):
    """Optimize ``model_uri`` to ``data_type`` and gate it on ``heldout_data``.

    Args:
        model_uri: FP32 SavedModel directory (local path, ``gs://``, ``s3://`` or ``minio://``).
        calib_source: CSV/TSV/TFRecord/npz to sample calibration rows from.
        heldout_data: held-out ``.npz`` with labels for validation.
        data_type: BF16, FP16 or INT8.
        opt_config: JSON object ``{node: dtype}``; empty: every node gets ``data_type``.
        calib_rows: calibration rows to sample.
        max_auc_drop, max_abs_diff, max_latency_ratio, min_size_reduction: gate thresholds
            (a negative value turns a threshold off).
        validate_iters, validate_batch_sizes, validate_max_rows: validation effort.
        target: the CPU the model will serve on (``host``: the optimize pod's; or a preset such as
            ``avx2``, ``avx512_vnni``, ``amx``, ``portable``). A oneDNN target's INT8 model needs
            oneDNN in the validate pod and the servers.
    """
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
    model.set_display_name("fp32-model")
    calib = calibrate(model=model.output, source=calib_source, num_rows=calib_rows)
    opt = optimize(model=model.output, calibration=calib.outputs["calibration"], data_type=data_type,
                   opt_config=opt_config, target=target)
    gate = validate(original=model.output, optimized=opt.outputs["optimized"], data=heldout_data,
                    max_auc_drop=max_auc_drop, max_abs_diff=max_abs_diff,
                    max_latency_ratio=max_latency_ratio, min_size_reduction=min_size_reduction,
                    iters=validate_iters, batch_sizes=validate_batch_sizes, max_rows=validate_max_rows)
    outputs = NamedTuple("Outputs", optimized=Model, metrics=Metrics, report=HTML)
    return outputs(optimized=opt.outputs["optimized"], metrics=gate.outputs["metrics"],
                   report=gate.outputs["report"])


@dsl.pipeline(name="lpo-refresh",
              description="refresh an optimized model with a new FP32 checkpoint -> validate (the gate)")
def refresh_pipeline(
    opt_model_uri: str,
    fp32_model_uri: str,
    ckpt_prefix: str,
    heldout_data: str,
    max_auc_drop: float = ORCHESTRATOR_THRESHOLDS["max_auc_drop"],
    max_abs_diff: float = ORCHESTRATOR_THRESHOLDS["max_abs_diff"],
    max_latency_ratio: float = ORCHESTRATOR_THRESHOLDS["max_latency_ratio"],
    min_size_reduction: float = ORCHESTRATOR_THRESHOLDS["min_size_reduction"],
    validate_iters: int = VALIDATE.iters,
    validate_batch_sizes: str = BATCH_SIZES_TEXT,
    validate_max_rows: int = 0,
) -> NamedTuple("Outputs", refreshed=Model, metrics=Metrics, report=HTML):
    """Rebuild the optimized model ``opt_model_uri`` with ``ckpt_prefix`` and gate it.

    The refreshed model is validated against the FP32 reference: the graph of
    ``fp32_model_uri`` with the same new checkpoint.

    Args:
        opt_model_uri: optimized SavedModel (output of ``optimize_pipeline``).
        fp32_model_uri: FP32 SavedModel it was optimized from.
        ckpt_prefix: new FP32 checkpoint prefix from the training job.
        heldout_data: held-out ``.npz`` with labels for validation.
        max_auc_drop, max_abs_diff, max_latency_ratio, min_size_reduction: gate thresholds
            (a negative value turns a threshold off).
        validate_iters, validate_batch_sizes, validate_max_rows: validation effort.
    """
    opt_model = dsl.importer(artifact_uri=opt_model_uri, artifact_class=Model, reimport=False)
    opt_model.set_display_name("optimized-model")
    fp32 = dsl.importer(artifact_uri=fp32_model_uri, artifact_class=Model, reimport=False)
    fp32.set_display_name("fp32-model")
    ref = refresh(opt_model=opt_model.output, fp32_model=fp32.output, ckpt_prefix=ckpt_prefix)
    gate = validate(original=ref.outputs["reference"], optimized=ref.outputs["refreshed"],
                    data=heldout_data, max_auc_drop=max_auc_drop, max_abs_diff=max_abs_diff,
                    max_latency_ratio=max_latency_ratio, min_size_reduction=min_size_reduction,
                    iters=validate_iters, batch_sizes=validate_batch_sizes, max_rows=validate_max_rows)
    outputs = NamedTuple("Outputs", refreshed=Model, metrics=Metrics, report=HTML)
    return outputs(refreshed=ref.outputs["refreshed"], metrics=gate.outputs["metrics"],
                   report=gate.outputs["report"])


def make_sharded_refresh_pipeline(pvc_name: str | None = None, mount_path: str = "/mnt/lpo"):
    """Return the sharded refresh pipeline, optionally with a PersistentVolumeClaim on every task.

    With ``pvc_name`` (``kfp-kubernetes``' ``mount_pvc``), each task mounts the claim at
    ``mount_path``: pass ``opt_model_path``, ``ckpt_prefix`` and ``work_dir`` under it and
    nothing large goes through artifact storage (the shards are written to ``work_dir``
    and read there by the merge). Without it, the inputs are paths every task can read
    (e.g. a bucket the cluster mounts) and the shards travel as artifacts.
    """

    def mount(task):
        if pvc_name:
            from kfp import kubernetes

            kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=mount_path)
        return task

    @dsl.pipeline(name="lpo-sharded-refresh",
                  description="convert a new FP32 checkpoint in N parallel shards -> merge -> refreshed model")
    def sharded_refresh_pipeline(
        opt_model_path: str,
        ckpt_prefix: str,
        num_shards: int = NUM_SHARDS,
        work_dir: str = "",
    ) -> Model:
        """Refresh the optimized model at ``opt_model_path`` with ``ckpt_prefix``, converted in shards.

        Args:
            opt_model_path: optimized SavedModel directory (read in place).
            ckpt_prefix: new FP32 checkpoint prefix from the training job (read in place).
            num_shards: number of parallel conversion tasks.
            work_dir: optional shared-volume directory for the shard checkpoints.
        """
        indices = mount(shard_indices(num_shards=num_shards))
        with dsl.ParallelFor(items=indices.output) as shard:
            conv = mount(convert_shard(opt_model_path=opt_model_path, ckpt_prefix=ckpt_prefix, shard=shard,
                                       num_shards=num_shards, work_dir=work_dir))
        merged = mount(merge_refresh(opt_model_path=opt_model_path,
                                     shards=dsl.Collected(conv.outputs["shard_ckpt"])))
        return merged.outputs["refreshed"]

    return sharded_refresh_pipeline


#: the sharded refresh pipeline without a volume mount (see :func:`make_sharded_refresh_pipeline`)
sharded_refresh_pipeline = make_sharded_refresh_pipeline()
