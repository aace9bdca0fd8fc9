"""Gradient synchronisation strategies, all on PyTorch's own DDP machinery, with accounting.

Every strategy is DistributedDataParallel (bucketed all-reduce overlapping backward) plus a
communication hook: ``ddp`` the plain all-reduce hook, ``fp16`` the fp16 compression hook,
``powersgd`` the PowerSGD hook (error feedback, warm start), ``localsgd`` the post-local-SGD hook
with a periodic model averager. Each hook is wrapped so that every bucket's collective is timed
(from the hook's call until its future completes) and its payload counted: the bytes each rank
contributes to collectives per step (a ring all-reduce puts about twice that on the wire).
"""

# No ``from __future__ import annotations`` here: DDP compares a hook's annotations with the real
# ``GradBucket`` and ``Future[Tensor]`` types, so they must be evaluated.

from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch
from torch import nn
from torch._C._distributed_c10d import GradBucket
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import PostLocalSGDState, post_localSGD_hook
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
from torch.distributed.algorithms.model_averaging.utils import average_parameters
from torch.nn.parallel import DistributedDataParallel

from sluice.errors import ConfigError
from sluice.train.config import TrainConfig

__all__ = ["CommMeter", "Synchronizer", "wrap_model"]

Hook = Callable[[Any, GradBucket], torch.futures.Future[torch.Tensor]]


@dataclass
class CommMeter:
    """Collective intervals and payload bytes of the current step."""

    intervals: list[tuple[float, float]] = field(default_factory=list)
    grad_bytes: int = 0
    blocking_s: float = 0.0  # collectives outside backward (model averaging): never hidden

    def reset(self) -> None:
        self.intervals.clear()
        self.grad_bytes = 0
        self.blocking_s = 0.0

    def comm_s(self) -> float:
        """Seconds during which at least one collective was in flight."""
        total, end = 0.0, float("-inf")
        for a, b in sorted(self.intervals):
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    def exposed_s(self, backward_end: float) -> float:
        """Communication not hidden behind backward: from the last bucket's hook to backward's end."""
        hidden_until = max((a for a, _ in self.intervals), default=backward_end)
        return max(0.0, backward_end - hidden_until) + self.blocking_s


def _timed(meter: CommMeter, inner: Hook, bytes_of: Callable[[Any, GradBucket], Callable[[], int]]) -> Hook:
    def hook(state: Any, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
        start = perf_counter()
        count = bytes_of(state, bucket)
        fut = inner(state, bucket)
        meter.grad_bytes += count()

        def done(f: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            meter.intervals.append((start, perf_counter()))
            return f.value()

        return fut.then(done)

    return hook


def _buffer_bytes(scale: float) -> Callable[[Any, GradBucket], Callable[[], int]]:
    def count(_state: Any, bucket: GradBucket) -> Callable[[], int]:
        buffer = bucket.buffer()
        size = int(buffer.numel() * buffer.element_size() * scale)
        return lambda: size

    return count


def _powersgd_bytes(state: Any, bucket: GradBucket) -> Callable[[], int]:
    """Elements PowerSGD all-reduces, from its own compression statistics (P and Q, or raw)."""
    before = state.total_numel_after_compression
    buffer = bucket.buffer()
    exact = state.iter < state.start_powerSGD_iter

    def count() -> int:
        numel = buffer.numel() if exact else state.total_numel_after_compression - before
        return int(numel * buffer.element_size())

    return count


class Synchronizer:
    """A DDP-wrapped model and its strategy: what happens after each optimizer step, and counters."""

    def __init__(self, ddp: DistributedDataParallel, config: TrainConfig, meter: CommMeter, hook_state: Any) -> None:
        self.ddp = ddp
        self.strategy = config.strategy
        self.meter = meter
        self.hook_state = hook_state
        self.averager: PeriodicModelAverager | None = None
        self._param_bytes = sum(p.numel() * p.element_size() for p in ddp.module.parameters())
        if config.strategy == "localsgd":
            self.averager = PeriodicModelAverager(
                period=config.localsgd_period, warmup_steps=config.localsgd_start_iter
            )

    @property
    def module(self) -> nn.Module:
        module: nn.Module = self.ddp.module
        return module

    def after_step(self) -> bool:
        """Run the strategy's post-step work (model averaging); True when replicas are now in sync."""
        if self.averager is None:
            return True
        step, warmup, period = self.averager.step, self.averager.warmup_steps, self.averager.period
        averages = step >= warmup and (step - warmup) % period == 0
        start = perf_counter()
        self.averager.average_parameters(self.ddp.module.parameters())
        if averages:
            self._count_averaging(start)
        return bool(step < warmup or averages)

    def synchronize(self) -> None:
        """Make the replicas equal (local SGD averages them; the others are always in sync)."""
        if self.averager is not None:
            start = perf_counter()
            average_parameters(self.ddp.module.parameters(), None)  # type: ignore[arg-type]
            self._count_averaging(start)

    def _count_averaging(self, start: float) -> None:
        end = perf_counter()
        self.meter.intervals.append((start, end))
        self.meter.blocking_s += end - start
        self.meter.grad_bytes += self._param_bytes

    def compression_ratio(self) -> float | None:
        """PowerSGD's effective ratio so far (elements before / after compression), else None."""
        if self.strategy != "powersgd":
            return None
        ratio, _, after = self.hook_state.compression_stats()
        return float(ratio) if after else None

    def state_dict(self) -> dict[str, int]:
        """Iteration counters, saved in checkpoints so that a resumed run keeps its schedule."""
        counters = {"hook_iter": int(getattr(self.hook_state, "iter", 0))}
        if self.averager is not None:
            counters["averager_step"] = int(self.averager.step)
        return counters

    def load_state_dict(self, counters: dict[str, int]) -> None:
        if hasattr(self.hook_state, "iter"):
            self.hook_state.iter = counters.get("hook_iter", 0)
        if self.averager is not None:
            self.averager.step = counters.get("averager_step", 0)


def wrap_model(model: nn.Module, config: TrainConfig, device: torch.device) -> Synchronizer:
    """Wrap ``model`` (already on ``device``) in DDP with the configured strategy's hook."""
    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=config.bucket_cap_mb)
    meter = CommMeter()
    state: Any = None
    if config.strategy == "ddp":
        hook = _timed(meter, default_hooks.allreduce_hook, _buffer_bytes(1.0))
    elif config.strategy == "fp16":
        hook = _timed(meter, default_hooks.fp16_compress_hook, _buffer_bytes(0.5))
    elif config.strategy == "powersgd":
        if config.powersgd_start_iter < 2:
            raise ConfigError("powersgd_start_iter must be at least 2 (PowerSGD's error feedback needs a warm-up)")
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=config.powersgd_rank,
            start_powerSGD_iter=config.powersgd_start_iter,
            use_error_feedback=True,
            warm_start=True,
            random_seed=config.seed,
        )
        hook = _timed(meter, powerSGD_hook.powerSGD_hook, _powersgd_bytes)
    else:
        # Gradients are all-reduced (plain DDP) until the start step, then not at all: the
        # replicas train locally and the averager averages the models every period steps.
        state = PostLocalSGDState(  # type: ignore[no-untyped-call]
            process_group=None,
            subgroup=None,
            start_localSGD_iter=config.localsgd_start_iter,
            post_local_gradient_allreduce=False,
        )

        def localsgd_bytes(s: Any, bucket: GradBucket) -> Callable[[], int]:
            size = bucket.buffer().numel() * bucket.buffer().element_size() if s.iter < s.start_localSGD_iter else 0
            return lambda: size

        hook = _timed(meter, post_localSGD_hook, localsgd_bytes)
    ddp.register_comm_hook(state, hook)
    return Synchronizer(ddp, config, meter, state)
