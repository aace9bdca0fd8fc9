"""The Ray backend: Ray Data maps shard positions through a pool of model actors.

``ray.data.range`` yields one row per pending shard (the read stage, run as ordinary Ray
tasks on their own CPUs); ``map_batches`` sends each row to a callable class on an actor
pool — the model stage — whose actors load the model once in their constructor and keep it
for every shard they run. Each call reads its shard with Sluice's readers, predicts in
batches of the job's batch size and commits the shard's part (the write stage). Actors take
a fraction of a CPU (or a whole GPU each when the cluster has GPUs and the job allows CUDA),
so read tasks always find a free CPU: on 2 cores, actors holding whole CPUs deadlock Ray Data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from sluice.backends.driver import TaskEngine
from sluice.backends.environment import ScopedEnviron
from sluice.backends.processes import ChildProcesses
from sluice.backends.shardtask import ShardJob, ShardOutcome, run_shard, worker_model
from sluice.errors import EngineError, MissingDependency, SluiceError

__all__ = ["RayEngine", "local_environment"]

ACTOR_CPUS = 0.5
ACTOR_RETRIES = 2


def local_environment(address: str | None) -> dict[str, str]:
    """What a Ray instance Sluice starts here gets in its environment; nothing when joining a cluster.

    The instance Sluice starts keeps no token file in ``~/.ray`` and sends nothing anywhere
    but this machine. ``ray.init`` joins ``$RAY_ADDRESS`` when no address is given.
    """
    if (address or os.environ.get("RAY_ADDRESS") or "local") != "local":
        return {}
    return {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class RayEngine(TaskEngine):
    """Runs shard tasks on Ray: a running instance, a cluster at ``address``, or a local one.

    Without ``address``, a Ray instance already initialised in this process is used, else a
    local instance is started with ``num_cpus`` (default: every core) and shut down on exit.
    ``actors`` sets the model actor pool (default: one per CPU, or one per GPU).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, actors: int | None = None, num_cpus: int | None = None) -> None:
        self.address = address
        self.actors = actors
        self.num_cpus = num_cpus
        self._owned = False
        self._pool = 1
        self._gpus = 0
        self._children = ChildProcesses()
        self._environ = ScopedEnviron({})

    def __enter__(self) -> RayEngine:
        ray = _import_ray()
        if not ray.is_initialized():
            self._children.mark()
            self._environ = ScopedEnviron(local_environment(self.address))
            self._environ.apply()  # the processes ray.init starts inherit it; restored on exit
            try:
                ray.init(
                    address=self.address,
                    logging_level=logging.WARNING,
                    num_cpus=None if self.address else (self.num_cpus or os.cpu_count() or 1),
                    include_dashboard=False,
                    log_to_driver=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                self._environ.restore()
                where = self.address or "a local instance"
                raise EngineError(f"could not start Ray ({where}): {exc}") from None
            self._owned = True
        resources = ray.cluster_resources()
        self._gpus = int(resources.get("GPU", 0))
        self._pool = max(1, self.actors or self._gpus or int(resources.get("CPU", 1)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:
            started = self._children.started()  # raylet, GCS, workers and actors
            _import_ray().shutdown()
            # Actor processes notice the raylet is gone a moment later: wait for them.
            self._children.reap(started)
            self._owned = False
        self._environ.restore()

    def slots(self) -> int:
        return self._pool

    def run(self, job: ShardJob) -> Iterator[ShardOutcome]:
        """Stream each shard's outcome back as soon as its actor finishes it."""
        ray = _import_ray()
        _quiet_ray_data(ray)
        gpus = self._gpus if job.spec.device != "cpu" else 0
        count = len(job.shards)
        shards = ray.data.range(count, override_num_blocks=count)
        with warnings.catch_warnings():
            # Ray Data restarts pool actors and retries their tasks forever by default, so a
            # worker that dies on every attempt would hang the job. The only way to bound that
            # is the remote-args keywords, which warn of their removal in Ray 2.64.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            outcomes = shards.map_batches(
                ShardActor,
                fn_constructor_args=(job,),
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(count, self._pool)),
                num_cpus=ACTOR_CPUS if not gpus else 1,
                num_gpus=1 if gpus else 0,
                max_restarts=ACTOR_RETRIES,
                max_task_retries=ACTOR_RETRIES,
            )
        try:
            for row in outcomes.iter_rows():
                yield ShardOutcome.from_json(str(row["outcome"]))
        except ray.exceptions.RayError as exc:
            raise EngineError(f"the Ray job failed after Ray's retries: {_last_line(exc)}") from None


class ShardActor:
    """The callable class on Ray's actor pool: loads the model once, then runs shards."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        # Load now, so the first shard's time is its own; a model that does not load is
        # reported by run_shard for each shard, as the same error the driver raises.
        with contextlib.suppress(SluiceError):
            worker_model(job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        outcomes = [run_shard(self.job, int(position)).to_json() for position in batch["id"]]
        return {"outcome": np.array(outcomes, dtype=object)}


def _quiet_ray_data(ray: Any) -> None:
    """Sluice shows its own progress and summary: no Ray Data progress bars or INFO lines."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    ray.util.debug.log_once("ray_data_progress_manager_disabled")  # its "bars disabled" notice
    # "Dataset … execution finished in … seconds" after every run
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
        import ray.util.debug
    except ImportError:
        raise MissingDependency("ray", "ray", "`backend='ray'`", params=("backend",)) from None
    return ray


def _last_line(exc: BaseException) -> str:
    """The first sentences of the last line of a Ray error (its advice on OOM etc. is left out)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    sentences = lines[-1].split(". ")
    return ". ".join(sentences[:2])[:300]
