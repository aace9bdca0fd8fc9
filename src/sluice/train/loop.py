"""One rank's training loop: epochs of steps with gradient accumulation, metrics, checkpoints, resume.

Step ``k`` of an epoch: the rank takes its slice of the global batch, runs ``grad_accumulation``
micro-batches (all but the last under ``no_sync``, so gradients are exchanged once per step),
steps the optimizer and lets the strategy do its post-step work. Each epoch ends with the replicas
synchronised, a validation pass over every rank's share of the validation rows (sums
all-reduced), and rank 0 writing a checkpoint atomically. ``resume`` restarts from it: the data
order of an epoch depends only on the seed and the epoch, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sluice.errors import ConfigError, DataError
from sluice.train.config import TrainConfig
from sluice.train.data import TrainingData, epoch_order, load_training_data, rank_rows, validation_rows
from sluice.train.model import build_mlp, metric_name, output_width, step_loss, validation_sums
from sluice.train.strategies import Synchronizer, wrap_model
from sluice.train.values import EpochMetrics, RunOptions, StepMetrics, TrainHistory, TrainResult, TrainStart

__all__ = ["checkpoint_path", "run_rank"]

Emit = Callable[[Any], None] | None
_CHECKPOINT_VERSION = 1
# Changing these does not change what a run computes, so a resumed run may change them.
_NOT_IDENTITY = {"resume", "checkpoint_dir", "plot", "epochs", "repository", "model_name", "nproc", "backend"}


def run_fingerprint(config: TrainConfig) -> str:
    """What identifies a run for resuming: everything that decides the numbers it computes."""
    fields = config.model_dump(exclude=_NOT_IDENTITY)
    fields.pop("grad_accumulation")  # the same global batches either way
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def checkpoint_path(config: TrainConfig) -> Path:
    """``checkpoint_dir/checkpoint.pt``, by default under ``$SLUICE_HOME/checkpoints/<model>-<run>``."""
    if config.checkpoint_dir is not None:
        return Path(config.checkpoint_dir) / "checkpoint.pt"
    home = Path(os.environ.get("SLUICE_HOME") or Path.home() / ".sluice").expanduser()
    return home / "checkpoints" / f"{config.model_name}-{run_fingerprint(config)[:12]}" / "checkpoint.pt"


@dataclass
class _Run:
    """The state of one rank's run."""

    config: TrainConfig
    options: RunOptions
    rank: int
    world: int
    device: torch.device
    data: TrainingData
    sync: Synchronizer
    optimizer: torch.optim.Optimizer
    emit: Emit
    steps: list[StepMetrics]
    epochs: list[EpochMetrics]

    @property
    def steps_per_epoch(self) -> int:
        return int(self.data.x_train.shape[0]) // self.config.global_batch_size


def run_rank(
    config: TrainConfig, options: RunOptions, rank: int, world: int, device: torch.device, emit: Emit
) -> TrainResult:
    """Train on this rank of an initialised process group; every rank returns the same model."""
    data = load_training_data(config)
    if data.x_train.shape[0] < config.global_batch_size:
        raise DataError(
            f"the training split has {data.x_train.shape[0]} rows, fewer than one global batch "
            f"({config.global_batch_size}); lower global_batch_size"
        )
    mlp = build_mlp(len(data.features), config.hidden, output_width(data.task, len(data.classes)), config.seed)
    sync = wrap_model(mlp.to(device), config, device)
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(mlp.parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.SGD(mlp.parameters(), lr=config.lr, momentum=config.momentum)
    run = _Run(config, options, rank, world, device, data, sync, optimizer, emit, [], [])
    path = checkpoint_path(config)
    start_epoch = _resume(run, path) if config.resume else 0
    if emit is not None:
        emit(
            TrainStart(
                epochs=config.epochs,
                start_epoch=start_epoch,
                steps_per_epoch=run.steps_per_epoch,
                world_size=world,
                train_rows=int(data.x_train.shape[0]),
                validation_rows=int(data.x_val.shape[0]),
                features=data.features,
                task=data.task,
                strategy=config.strategy,
            )
        )
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    val = validation_rows(int(data.x_val.shape[0]), rank, world)
    x_val = torch.from_numpy(data.x_val[val.start : val.stop]).to(device)
    y_val = torch.from_numpy(data.y_val[val.start : val.stop]).to(device)
    for epoch in range(start_epoch, config.epochs):
        started = perf_counter()
        first = len(run.steps)
        loss_sum = _train_epoch(run, epoch, x_train, y_train).to(device)
        run.sync.meter.reset()
        run.sync.synchronize()
        sync_s, sync_bytes = run.sync.meter.comm_s(), run.sync.meter.grad_bytes
        sums = torch.cat([validation_sums(run.sync.module, data.task, x_val, y_val, data.target_std), loss_sum])
        dist.all_reduce(sums)
        run.epochs.append(_epoch_metrics(run, epoch, run.steps[first:], sums.tolist(), perf_counter() - started,
                                         sync_s, sync_bytes))  # fmt: skip
        if emit is not None:
            emit(run.epochs[-1])
        if rank == 0:
            _save(run, path, epoch + 1)
    return _result(run, start_epoch, path)


def _train_epoch(run: _Run, epoch: int, x_train: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
    """Run one epoch's steps; returns ``[sum of loss × rows, rows]`` over this rank's rows."""
    config, sync = run.config, run.sync
    order = epoch_order(int(x_train.shape[0]), config.seed, epoch)
    micro, accum = config.micro_batch_size, config.grad_accumulation
    total = torch.zeros(2, dtype=torch.float64)
    for k in range(run.steps_per_epoch):
        step = epoch * run.steps_per_epoch + k + 1
        if run.options.exit_at_step == (run.rank, step):
            os._exit(17)  # a test's simulated crash: no cleanup, like a killed process
        rows = rank_rows(order, k, config.global_batch_size, run.rank, run.world)
        index = torch.from_numpy(rows)
        xb, yb = x_train[index].to(run.device), y_train[index].to(run.device)
        sync.meter.reset()
        started = perf_counter()
        losses = []
        for m in range(accum):
            part = slice(m * micro, (m + 1) * micro)
            with sync.ddp.no_sync() if m < accum - 1 else contextlib.nullcontext():
                loss = step_loss(run.data.task, sync.ddp(xb[part]), yb[part]) / accum
                loss.backward()  # type: ignore[no-untyped-call]
            losses.append(loss.detach())
        backward_end = perf_counter()
        run.optimizer.step()
        synced = sync.after_step()  # before zero_grad: the averager skips parameters without gradients
        run.optimizer.zero_grad(set_to_none=True)
        step_loss_value = float(torch.stack(losses).sum().item())
        ended = perf_counter()
        total += torch.tensor([step_loss_value * len(rows), len(rows)], dtype=torch.float64)
        step_s, exposed = ended - started, sync.meter.exposed_s(backward_end)
        divergence = _divergence(sync) if run.options.check_replicas else None
        record = StepMetrics(
            epoch + 1, step, step_loss_value, config.global_batch_size / step_s, step_s, step_s - exposed,
            sync.meter.comm_s(), exposed, sync.meter.grad_bytes, synced, divergence,
        )  # fmt: skip
        run.steps.append(record)
        if run.emit is not None:
            run.emit(record)
    return total


def _divergence(sync: Synchronizer) -> float:
    """The largest difference of any parameter between any two ranks."""
    flat = torch.cat([p.detach().reshape(-1) for p in sync.module.parameters()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max().item())


def _epoch_metrics(
    run: _Run, epoch: int, steps: list[StepMetrics], sums: list[float], wall_s: float, sync_s: float, sync_bytes: int
) -> EpochMetrics:
    val_loss, val_metric_sum, val_rows, train_loss_sum, train_rows = sums
    task = run.data.task
    metric = val_metric_sum / val_rows if task == "classification" else float(np.sqrt(val_metric_sum / val_rows))
    grad_bytes = sum(s.grad_bytes for s in steps) + sync_bytes
    step_s = sum(s.step_s for s in steps)
    return EpochMetrics(
        epoch=epoch + 1,
        steps=len(steps),
        train_loss=train_loss_sum / max(train_rows, 1.0),
        val_loss=val_loss / val_rows,
        val_metric=metric,
        metric_name=metric_name(task),
        samples_per_s=len(steps) * run.config.global_batch_size / step_s if step_s else 0.0,
        wall_s=wall_s,
        compute_s=sum(s.compute_s for s in steps),
        comm_s=sum(s.comm_s for s in steps) + sync_s,
        exposed_comm_s=sum(s.exposed_comm_s for s in steps) + sync_s,
        grad_bytes=grad_bytes,
        grad_bytes_per_step=grad_bytes / max(len(steps), 1),
        compression_ratio=run.sync.compression_ratio(),
        replica_divergence=_divergence(run.sync) if run.options.check_replicas else None,
    )


def _save(run: _Run, path: Path, epochs_done: int) -> None:
    """Write the checkpoint atomically: a temporary file renamed over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "version": _CHECKPOINT_VERSION,
        "fingerprint": run_fingerprint(run.config),
        "epochs_done": epochs_done,
        "model": run.sync.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "strategy": run.sync.state_dict(),
        "steps": [asdict(s) for s in run.steps],
        "epochs": [asdict(e) for e in run.epochs],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume(run: _Run, path: Path) -> int:
    """Load the last checkpoint into the run; returns the epochs it had completed (0 if none)."""
    if not path.exists():
        return 0
    state = torch.load(path, map_location=run.device, weights_only=True)
    if state.get("version") != _CHECKPOINT_VERSION or state.get("fingerprint") != run_fingerprint(run.config):
        raise ConfigError(
            f"the checkpoint {path} belongs to a run with a different configuration; "
            "resume with the same settings or choose another checkpoint_dir"
        )
    run.sync.module.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.sync.load_state_dict(state["strategy"])
    run.steps[:] = [StepMetrics(**s) for s in state["steps"]]
    run.epochs[:] = [EpochMetrics(**e) for e in state["epochs"]]
    return int(state["epochs_done"])


def _result(run: _Run, start_epoch: int, path: Path) -> TrainResult:
    data, last = run.data, run.epochs[-1] if run.epochs else None
    return TrainResult(
        config=run.config,
        state_dict={k: v.detach().to("cpu").clone() for k, v in run.sync.module.state_dict().items()},
        hidden=tuple(run.config.hidden),
        feature_names=data.features,
        task=data.task,
        class_labels=data.classes,
        feature_mean=data.mean,
        feature_std=data.std,
        target_mean=data.target_mean,
        target_std=data.target_std,
        history=TrainHistory(tuple(run.steps), tuple(run.epochs)),
        metric_name=metric_name(data.task),
        validation_metric=last.val_metric if last else float("nan"),
        validation_loss=last.val_loss if last else float("nan"),
        world_size=run.world,
        rank=run.rank,
        train_rows=int(data.x_train.shape[0]),
        validation_rows=int(data.x_val.shape[0]),
        dropped_rows=data.dropped_rows,
        resumed_from_epoch=start_epoch,
        checkpoint_path=str(path),
    )
