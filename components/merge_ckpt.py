"""Sharded refresh, fan-in step: merge the shard checkpoints and write the refreshed model.

``lpo.merge_ckpt`` checks that every shard of one conversion is there exactly once and
merges them (the result equals an unsharded conversion bit for bit); ``lpo.refresh``
then writes the optimized graph with the merged variables.
"""
from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from lpo.components.image import LPO_IMAGE


@dsl.component(base_image=LPO_IMAGE, install_kfp_package=False)
def merge_refresh(
    opt_model_path: str,
    shards: Input[List[Artifact]],
    refreshed: Output[Model],
):
    """Merge ``shards`` (the ``convert_shard`` outputs, ``dsl.Collected``) into the refreshed model.

    Args:
        opt_model_path: the optimized SavedModel the shards were converted for.
        shards: every shard checkpoint of one sharded conversion.
        refreshed: output optimized SavedModel with the merged checkpoint.
    """
    import os
    import shutil
    import tempfile

    import lpo

    prefixes = [a.metadata.get("prefix") or os.path.join(a.path, "variables") for a in shards]
    parent = os.path.dirname(os.path.abspath(refreshed.path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".lpo-merge-", dir=parent)  # same file system: the refresh hard-links
    try:
        merged = lpo.merge_ckpt(prefixes, os.path.join(tmp, "variables"))
        result = lpo.refresh(opt_model_path, merged.save_prefix, refreshed.path, quiet=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    refreshed.metadata.update({"num_shards": merged.num_shards, "merge": merged.to_dict(),
                               "report": result.to_dict()})
