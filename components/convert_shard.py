"""Sharded refresh, fan-out step: convert one shard of a new FP32 checkpoint (``lpo.convert_ckpt``).

Inputs are paths the task reads in place (a mounted shared volume, or a bucket mounted
by the cluster), not artifacts: a multi-TB checkpoint is never copied through artifact
storage. The shard checkpoint goes to the ``shard_ckpt`` artifact, or, with
``work_dir``, to ``{work_dir}/shard-NNNNN/`` on the shared volume (the artifact then
only records that prefix).
"""
from kfp import dsl
from kfp.dsl import Artifact, Output

from lpo.components.image import LPO_IMAGE


@dsl.component(base_image=LPO_IMAGE, install_kfp_package=False)
def convert_shard(
    opt_model_path: str,
    ckpt_prefix: str,
    shard: int,
    num_shards: int,
    shard_ckpt: Output[Artifact],
    work_dir: str = "",
):
    """Convert shard ``shard`` of ``num_shards`` of ``ckpt_prefix`` by ``opt_model_path``'s plan.

    Args:
        opt_model_path: optimized SavedModel directory (only its graph and manifest are read).
        ckpt_prefix: new FP32 checkpoint prefix from the training job.
        shard: this task's shard, 0-based.
        num_shards: number of shards.
        shard_ckpt: output: the shard checkpoint (``variables.*`` in a directory), or, with
            ``work_dir``, a small JSON file naming the prefix written there.
        work_dir: optional directory on a shared volume for the shard checkpoints.
    """
    import json
    import os

    from lpo.orchestration.steps import convert_step

    base = os.path.join(work_dir, f"shard-{shard:05d}") if work_dir else shard_ckpt.path
    result = convert_step(ckpt_prefix, os.path.join(base, "variables"), opt_model_path, shard=shard,
                          num_shards=num_shards, as_dict=False)
    if work_dir:
        with open(shard_ckpt.path, "w", encoding="utf-8") as f:
            json.dump({"prefix": result.save_prefix}, f)
    shard_ckpt.metadata.update({"prefix": result.save_prefix if work_dir else "", "shard": shard,
                                "num_shards": num_shards, "report": result.to_dict()})
