"""lpo_sharded_refresh: a checkpoint too large for one worker -> N mapped shards -> merge -> refresh.

``convert_shard`` is mapped over the shard numbers (dynamic task mapping,
``.expand()``): each mapped task converts its size-balanced share of the new FP32
checkpoint ``ckpt_prefix`` into ``<work_dir>/shards/shard-NNNNN``; ``merge`` checks that
every shard of the conversion is there exactly once and merges them (equal to an
unsharded conversion, bit for bit); ``refresh`` writes ``<work_dir>/refreshed``: the
optimized model's graph with the merged variables. Every path must be on storage all
workers share (an NFS/PVC mount or a mounted bucket): nothing large goes through XCom. A
retried shard that already finished does nothing. Gate and publish the result as
``lpo_refresh`` does. Triggered only (no time schedule).
"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from lpo.operators.operators import LpoConvertShardOperator, LpoMergeCkptOperator, LpoRefreshOperator
from lpo.options import NUM_SHARDS

with DAG(
    dag_id="lpo_sharded_refresh",
    description="Refresh an optimized model with a new checkpoint converted in parallel shards",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["lpo"],
    params={
        "opt_model_path": Param("", type="string", description="The optimized SavedModel to refresh (its plan)"),
        "ckpt_prefix": Param("", type="string", description="The new FP32 checkpoint prefix"),
        "work_dir": Param("", type="string", description="Shared work directory: shards/, merged/, refreshed/"),
        "num_shards": Param(NUM_SHARDS, type="integer", minimum=1, description="Parallel conversion tasks"),
    },
) as dag:

    @task
    def shard_numbers(params=None) -> list[int]:
        """The shards to map over: ``[0, ..., num_shards - 1]``."""
        return list(range(int(params["num_shards"])))

    shards = LpoConvertShardOperator.partial(
        task_id="convert_shard", opt_model_path="{{ params.opt_model_path }}", ckpt_prefix="{{ params.ckpt_prefix }}",
        work_dir="{{ params.work_dir }}/shards", num_shards="{{ params.num_shards }}",
    ).expand(shard=shard_numbers())
    merge = LpoMergeCkptOperator(
        task_id="merge", work_dir="{{ params.work_dir }}/shards", num_shards="{{ params.num_shards }}",
        save_prefix="{{ params.work_dir }}/merged/variables")
    refresh = LpoRefreshOperator(
        task_id="refresh", opt_model_path="{{ params.opt_model_path }}",
        ckpt_prefix="{{ params.work_dir }}/merged/variables", save_path="{{ params.work_dir }}/refreshed")

    shards >> merge >> refresh
