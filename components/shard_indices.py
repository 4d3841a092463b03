"""Sharded refresh: the shard numbers a ``dsl.ParallelFor`` fans out over."""
from kfp import dsl

from lpo.components.image import LPO_IMAGE


@dsl.component(base_image=LPO_IMAGE, install_kfp_package=False)
def shard_indices(num_shards: int) -> list:
    """Return ``[0, ..., num_shards - 1]``: the items of the ``dsl.ParallelFor`` over shards."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    return list(range(num_shards))
