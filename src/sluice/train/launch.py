"""Starting the ranks and collecting the result: spawned on 127.0.0.1, in process, or under torchrun.

``train`` decides how the ranks start. Under ``torchrun`` (``RANK``, ``WORLD_SIZE`` and
``MASTER_ADDR`` set) this process is one rank and nothing is spawned. Otherwise ``nproc`` 1 runs
in this process and ``nproc`` N spawns N processes joined over a free port on 127.0.0.1; rank 0
sends progress through a queue and writes its :class:`TrainResult` to a private file. If a rank
fails, the others are terminated and its error surfaces here as a :class:`SluiceError`.
"""

from __future__ import annotations

import gc
import os
import queue
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice import errors
from sluice._net import free_loopback_port
from sluice.errors import ConfigError, Interrupted, MissingDependency, SluiceError, TrainError
from sluice.train.config import TrainConfig
from sluice.train.data import plan_columns
from sluice.train.values import (
    EpochMetrics,
    Progress,
    RunOptions,
    StepMetrics,
    TrainHistory,
    TrainResult,
    TrainStart,
)

# the value types are re-exported: this was their home before sluice.train.values
__all__ = [
    "EpochMetrics",
    "Progress",
    "RunOptions",
    "StepMetrics",
    "TrainHistory",
    "TrainResult",
    "TrainStart",
    "train",
]


@dataclass(frozen=True)
class _RankFailure:
    rank: int
    error_type: str
    message: str


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train the MLP data-parallel as ``config`` says; ``progress`` receives rank 0's events."""
    return launch(config, progress)


def launch(config: TrainConfig, progress: Progress | None = None, options: RunOptions | None = None) -> TrainResult:
    """:func:`train` with diagnostic options."""
    options = options or RunOptions()
    plan_columns(config)  # user errors surface here, before any process starts
    try:
        import torch.distributed as dist
    except ImportError as exc:
        raise MissingDependency("torch", "train", "Training") from exc
    if under_torchrun():
        return _run_torchrun(config, progress, options)
    if dist.is_initialized():
        raise ConfigError("a torch.distributed process group already exists here; run under torchrun instead")
    if config.nproc == 1:
        return _run_inline(config, progress, options)
    return _run_spawned(config, progress, options)


def under_torchrun() -> bool:
    """True when a launcher (torchrun) made this process one rank of a group."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def _backend(config: TrainConfig, world: int) -> str:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if config.backend == "nccl" and gpus < 1:
        raise ConfigError("backend nccl needs CUDA GPUs; none are visible (use gloo)")
    if config.backend == "auto":
        return "nccl" if gpus >= world else "gloo"
    return config.backend


def _run_rank(
    config: TrainConfig, options: RunOptions, rank: int, world: int, local_rank: int, emit: Any
) -> TrainResult:
    import torch

    from sluice.train.loop import run_rank

    cuda = _backend(config, world) == "nccl"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return run_rank(config, options, rank, world, device, emit)


def _run_inline(config: TrainConfig, progress: Progress | None, options: RunOptions) -> TrainResult:
    import torch.distributed as dist

    dist.init_process_group(
        _backend(config, 1), init_method=f"tcp://127.0.0.1:{free_loopback_port()}", rank=0, world_size=1
    )
    try:
        return _run_rank(config, options, 0, 1, 0, progress)
    finally:
        dist.destroy_process_group()


def _run_torchrun(config: TrainConfig, progress: Progress | None, options: RunOptions) -> TrainResult:
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if config.nproc != world:
        config = TrainConfig.build(**{**config.model_dump(), "nproc": world})
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(_backend(config, world), init_method="env://")
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return _run_rank(config, options, rank, world, local_rank, progress if rank == 0 else None)
    finally:
        if owned:
            dist.destroy_process_group()


def _worker(rank: int, config: TrainConfig, options: RunOptions, port: int, result: str, events: Any) -> None:
    import torch
    import torch.distributed as dist

    # Ranks share the cores: without this each one starts a thread per core and they thrash.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.nproc))
    try:
        dist.init_process_group(
            _backend(config, config.nproc), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=config.nproc
        )
        out = _run_rank(config, options, rank, config.nproc, rank, events.put if rank == 0 else None)
        if rank == 0:
            torch.save(out, result)
    except SluiceError as exc:
        events.put(_RankFailure(rank, type(exc).__name__, str(exc)))
        raise
    finally:
        gc.collect()  # DDP's reducer holds the process group; free it before the group goes
        if dist.is_initialized():
            dist.destroy_process_group()
    # Leave without interpreter teardown, where a collective library's threads can abort the
    # process (seen: "terminate called without an active exception"); flush the events first.
    events.close()
    events.join_thread()
    os._exit(0)


def _run_spawned(config: TrainConfig, progress: Progress | None, options: RunOptions) -> TrainResult:
    import multiprocessing

    import torch
    from torch.multiprocessing.spawn import ProcessException, start_processes

    events = multiprocessing.get_context("spawn").Queue()
    failures: list[_RankFailure] = []
    with tempfile.TemporaryDirectory(prefix="sluice-train-") as tmpdir:
        result = str(Path(tmpdir) / "result.pt")
        args = (config, options, free_loopback_port(), result, events)
        context = start_processes(_worker, args=args, nprocs=config.nproc, join=False, start_method="spawn")  # type: ignore[no-untyped-call]
        try:
            while not context.join(timeout=0.1):
                _drain(events, progress, failures)
        except ProcessException as exc:
            _drain(events, progress, failures)
            raise _rank_error(exc, failures) from None
        except KeyboardInterrupt:
            raise Interrupted("training interrupted; rerun with resume to continue from the last epoch") from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
        _drain(events, progress, failures)
        # Our own file, written by our own rank 0 into a private directory.
        out: TrainResult = torch.load(result, weights_only=False)
        return out


def _drain(events: Any, progress: Progress | None, failures: list[_RankFailure]) -> None:
    while True:
        try:
            item = events.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, _RankFailure):
            failures.append(item)
        elif progress is not None:
            progress(item)


def _rank_error(exc: Exception, failures: list[_RankFailure]) -> SluiceError:
    """The first rank's own SluiceError if it raised one, else a description of the failure."""
    for failure in failures:
        cls = getattr(errors, failure.error_type, None)
        if isinstance(cls, type) and issubclass(cls, SluiceError):
            try:
                return cls(failure.message)
            except TypeError:
                return TrainError(f"training failed on rank {failure.rank}: {failure.message}")
    rank = getattr(exc, "error_index", "?")
    exit_code = getattr(exc, "exit_code", None)
    if exit_code is not None:
        signal = getattr(exc, "signal_name", None)
        how = f"signal {signal}" if signal else f"exit code {exit_code}"
        return TrainError(f"training failed: rank {rank} died ({how}); the other ranks were stopped")
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return TrainError(f"training failed on rank {rank}: {lines[-1] if lines else exc}")
