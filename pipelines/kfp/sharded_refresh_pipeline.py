"""``sharded_refresh_pipeline``: ParallelFor(convert shard) -> merge + refresh (defined in ``lpo.components.pipelines``).

For a shared volume instead of artifact storage, compile
``make_sharded_refresh_pipeline(pvc_name="my-claim", mount_path="/mnt/lpo")`` and pass
paths under ``/mnt/lpo`` (``opt_model_path``, ``ckpt_prefix``, ``work_dir``).
"""
from lpo.components.pipelines import make_sharded_refresh_pipeline, sharded_refresh_pipeline

__all__ = ["make_sharded_refresh_pipeline", "sharded_refresh_pipeline"]
