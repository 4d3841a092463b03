"""Refresh step: rebuild an optimized model with a new FP32 checkpoint (convert only).

Also writes the FP32 reference (the original graph with the new checkpoint) that
the refreshed model is validated against.
"""
from kfp import dsl
from kfp.dsl import Input, Model, Output

from lpo.components.image import LPO_IMAGE


@dsl.component(base_image=LPO_IMAGE, install_kfp_package=False)
def refresh(
    opt_model: Input[Model],
    fp32_model: Input[Model],
    ckpt_prefix: str,
    refreshed: Output[Model],
    reference: Output[Model],
):
    """Replay ``opt_model``'s plan on the FP32 checkpoint ``ckpt_prefix``.

    Args:
        opt_model: optimized SavedModel (carries the plan in its manifest).
        fp32_model: the FP32 SavedModel it was optimized from (its graph).
        ckpt_prefix: new FP32 checkpoint prefix from the training job.
        refreshed: output optimized SavedModel with the converted checkpoint.
        reference: output FP32 SavedModel: ``fp32_model``'s graph with ``ckpt_prefix``.
    """
    from lpo.log import quiet_tensorflow_process

    quiet_tensorflow_process()  # before TF loads: its start-up noise stays out of the step's log
    import lpo
    from lpo.orchestration.artifacts import fp32_model_with_checkpoint

    result = lpo.refresh(opt_model.path, ckpt_prefix, refreshed.path, quiet=True)
    fp32_model_with_checkpoint(fp32_model.path, ckpt_prefix, reference.path)
    info = result.to_dict()
    manifest = opt_model.metadata or {}
    refreshed.metadata.update({"ckpt_prefix": ckpt_prefix, "report": info,
                               "data_type": manifest.get("data_type", "")})
    reference.metadata.update({"ckpt_prefix": ckpt_prefix, "data_type": "FP32"})


@dsl.container_component
def refresh_cli(
    opt_model: Input[Model],
    ckpt_prefix: str,
    refreshed: Output[Model],
):
    """The refresh step as ``lpo refresh`` in :data:`LPO_IMAGE`."""
    return dsl.ContainerSpec(
        image=LPO_IMAGE, command=["lpo"],
        args=["refresh", opt_model.path, ckpt_prefix, refreshed.path, "--json"])


@dsl.container_component
def convert_ckpt_cli(
    opt_model: Input[Model],
    ckpt_prefix: str,
    save_prefix: str,
):
    """``lpo convert-ckpt``: convert a checkpoint only (the serving side swaps it in)."""
    return dsl.ContainerSpec(
        image=LPO_IMAGE, command=["lpo"],
        args=["convert-ckpt", ckpt_prefix, save_prefix, opt_model.path, "--json"])
