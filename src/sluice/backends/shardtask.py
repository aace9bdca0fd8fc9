"""The worker side of the cluster backends; it lives in :mod:`sluice.batch.shardtask`."""

from __future__ import annotations

from sluice.batch.shardtask import ShardJob, ShardOutcome, run_shard, worker_model

__all__ = ["ShardJob", "ShardOutcome", "run_shard", "worker_model"]
