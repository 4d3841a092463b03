"""Sharded checkpoint conversion as Airflow operators: convert one shard (mapped), merge the shards."""
from __future__ import annotations

import os
from typing import Any, Sequence

from airflow.sdk import BaseOperator

from lpo.operators.common import fail_fast, path_arg, quiet
from lpo.orchestration.steps import convert_step, flag, integer, jsonable


def shard_prefix(work_dir: str, shard: int) -> str:
    return os.path.join(work_dir, f"shard-{shard:05d}", "variables")


class LpoConvertShardOperator(BaseOperator):
    """Convert one shard of a new FP32 checkpoint (``lpo.convert_ckpt(..., shard=, num_shards=)``).

    Meant for dynamic task mapping: ``LpoConvertShardOperator.partial(...).expand(shard=[0, ..., N-1])``.
    Shard ``i`` goes to ``{work_dir}/shard-{i:05d}/variables``; a retry of a finished shard does nothing.

    Args:
        opt_model_path: optimized SavedModel (has the plan).
        ckpt_prefix: new FP32 checkpoint prefix.
        work_dir: directory of the shard checkpoints (shared by every shard and the merge).
        shard: this task's shard, 0-based.
        num_shards: number of shards.
    """

    template_fields: Sequence[str] = ("opt_model_path", "ckpt_prefix", "work_dir", "shard", "num_shards")
    ui_color = "#ece4f7"

    def __init__(self, *, opt_model_path: str, ckpt_prefix: str, work_dir: str, shard: Any, num_shards: Any,
                 **kwargs):
        super().__init__(**kwargs)
        self.opt_model_path = opt_model_path
        self.ckpt_prefix = ckpt_prefix
        self.work_dir = work_dir
        self.shard = shard
        self.num_shards = num_shards

    @fail_fast
    @quiet
    def execute(self, context) -> dict:
        opt_model = path_arg("opt_model_path", self.opt_model_path, must_exist=True)
        ckpt = path_arg("ckpt_prefix", self.ckpt_prefix)
        work = path_arg("work_dir", self.work_dir)
        n = integer("num_shards", self.num_shards)
        i = integer("shard", self.shard, minimum=0)
        return convert_step(ckpt, shard_prefix(work, i), opt_model, shard=i, num_shards=n)


class LpoMergeCkptOperator(BaseOperator):
    """Merge the shards of a sharded conversion (``lpo.merge_ckpt``) into ``save_prefix``.

    Reads every ``{work_dir}/shard-NNNNN/variables`` of ``num_shards``; fails (no retry)
    when one is missing, failed or from another conversion. ``LpoRefreshOperator`` takes
    the merged prefix as its ``ckpt_prefix``.

    Args:
        work_dir: directory of the shard checkpoints.
        num_shards: number of shards.
        save_prefix: output checkpoint prefix (its directory is created if missing).
        overwrite: replace an existing ``save_prefix`` (default True).
    """

    template_fields: Sequence[str] = ("work_dir", "num_shards", "save_prefix", "overwrite")
    ui_color = "#ece4f7"

    def __init__(self, *, work_dir: str, num_shards: Any, save_prefix: str, overwrite: Any = True, **kwargs):
        super().__init__(**kwargs)
        self.work_dir = work_dir
        self.num_shards = num_shards
        self.save_prefix = save_prefix
        self.overwrite = overwrite

    @fail_fast
    @quiet
    def execute(self, context) -> dict:
        import lpo

        work = path_arg("work_dir", self.work_dir, must_exist=True)
        n = integer("num_shards", self.num_shards)
        save = path_arg("save_prefix", self.save_prefix)
        result = lpo.merge_ckpt([shard_prefix(work, i) for i in range(n)], save,
                                overwrite=flag(self.overwrite))
        return jsonable(result.to_dict())
