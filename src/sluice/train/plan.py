"""How long gradient communication takes per step, and what each training strategy buys.

Pure arithmetic on a ring all-reduce model; the formulas and a worked example are in
``docs/training-plan.md``. :func:`plan_communication` returns a :class:`CommPlan`; the CLI renders it.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sluice.errors import ConfigError

__all__ = [
    "CommPlan",
    "StrategyCost",
    "default_layer_width",
    "parse_bandwidth",
    "parse_latency_us",
    "parse_params",
    "plan_communication",
]

# Decimal literals with PEP 515 underscores; what Decimal still rejects ("", "e5") is caught by _decimal.
_NUMBER = r"((?:\d+(?:_\d+)*)?(?:\.\d+)?(?:[eE][+-]?\d+)?)"
_PARAMS = re.compile(_NUMBER + r"\s*([kKmMbBtT]?)")
_PARAM_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
_BANDWIDTH = re.compile(_NUMBER + r"\s*([kKMGT]?)(i?)(bit/s|bits/s|bit|bits|bps|b/s|B/s|Bps|byte/s|bytes/s)")
_SI = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_LATENCY = re.compile(_NUMBER + r"\s*(us|µs|μs|ms|s)?")
_LATENCY_UNIT_US = {None: Decimal(1), "us": Decimal(1), "µs": Decimal(1), "μs": Decimal(1), "ms": Decimal(1000)}
_LATENCY_UNIT_US["s"] = Decimal(1_000_000)

# Transformer-like stacks: about 12·L·d² weights in L blocks of width d, with d/L ≈ 128 (LLaMA and
# GPT-3 shapes); together d = (128·12⁻¹·P)^(1/3), rounded to a multiple of 64.
_ASPECT_RATIO = 128
_WIDTH_MULTIPLE = 64


def parse_params(text: str) -> int:
    """A parameter count: ``350M``, ``1.3B``, ``7e9``, ``125k``, ``1_000_000`` (suffixes K, M, B, T)."""
    match = _PARAMS.fullmatch(text.strip())
    number = _decimal(match[1]) if match else None
    value = number * _PARAM_SUFFIX[match[2].lower()] if match and number is not None else None
    if value is None or value < 1:
        raise ConfigError(
            f"invalid parameter count {text!r}: expected a positive number such as 350M, 1.3B, 7e9 or 125k "
            "(suffixes K, M, B, T)"
        )
    return int(value.to_integral_value())


def parse_bandwidth(text: str) -> float:
    """A link bandwidth in bytes/s: ``100Gbit``, ``25Gbps``, ``10GB/s``, ``400Mbit``, ``1GiB/s``.

    Lower-case ``b``/``bit``/``bps`` are bits, ``B``/``Bps``/``byte`` are bytes; prefixes are decimal
    (K, M, G, T = 10³…10¹²) unless written binary (Ki, Mi, Gi, Ti).
    """
    match = _BANDWIDTH.fullmatch(text.strip())
    number = _decimal(match[1]) if match else None
    value = None
    if match and number is not None and not (match[3] and match[2] not in _BINARY):
        scale = _BINARY[match[2]] if match[3] else _SI[match[2]]
        per_byte = 1 if match[4][0] == "B" or match[4].startswith("byte") else 8
        value = number * scale / per_byte
    if value is None or value <= 0:
        raise ConfigError(
            f"invalid bandwidth {text!r}: expected a rate with a unit such as 100Gbit, 25Gbps, 400Mbit "
            "(bits per second) or 10GB/s, 1GiB/s (bytes per second)"
        )
    return float(value)


def parse_latency_us(text: str) -> float:
    """A per-message latency in µs: ``5`` (µs), ``5us``, ``5µs``, ``0.02ms``; returns microseconds."""
    match = _LATENCY.fullmatch(text.strip())
    number = _decimal(match[1]) if match else None
    value = number * _LATENCY_UNIT_US[match[2]] if match and number is not None else None
    if value is None or value < 0:
        raise ConfigError(
            f"invalid latency {text!r}: expected microseconds such as 5, 5us, 2.5µs or 0.01ms (0 or more)"
        )
    return float(value)


def _decimal(text: str) -> Decimal | None:
    if not text:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def default_layer_width(params: int) -> int:
    """The width d assumed for PowerSGD when none is given: ``(128/12 · params)^(1/3)``, to a multiple of 64."""
    width = math.cbrt(_ASPECT_RATIO / 12 * params)
    return max(_WIDTH_MULTIPLE, round(width / _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE)


@dataclass(frozen=True)
class StrategyCost:
    """What one strategy communicates per optimizer step, on average over steps."""

    strategy: str
    bytes_per_step: float
    """Payload each worker all-reduces per step (before the ring's 2(N−1)/N factor)."""
    bandwidth_seconds: float
    latency_seconds: float
    seconds_per_step: float
    """Communication time per step; below this compute time per step, communication dominates."""
    speedup: float
    """DDP's communication time divided by this strategy's."""
    assumption: str


@dataclass(frozen=True)
class CommPlan:
    """Ring all-reduce figures for one model size and cluster; all times in seconds."""

    params: int
    workers: int
    bandwidth_bytes_per_s: float
    latency_seconds: float
    dtype_bytes: int
    gradient_bytes: int
    ring_factor: float
    """2(N−1)/N: the share of the gradient each worker sends (and receives) in a ring all-reduce."""
    bandwidth_seconds: float
    latency_term_seconds: float
    allreduce_seconds: float
    """T: bandwidth lower bound plus latency term; the step compute time below which communication dominates."""
    powersgd_rank: int
    layer_width: int
    layer_width_assumed: bool
    powersgd_compression: float
    localsgd_period: int
    strategies: tuple[StrategyCost, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_communication(
    params: int,
    workers: int,
    bandwidth_bytes_per_s: float,
    *,
    latency_us: float = 5.0,
    dtype_bytes: int = 4,
    powersgd_rank: int = 4,
    localsgd_period: int = 8,
    layer_width: int | None = None,
) -> CommPlan:
    """Per-step gradient communication of data-parallel training with a ring all-reduce.

    ``T = 2(N−1)/N · S/B + 2(N−1)·α`` with ``S = params × dtype_bytes``; then fp16 (S/2), PowerSGD
    (square ``layer_width`` matrices, two all-reduces of rank-r factors) and local SGD (T/H).
    """
    _check(params, workers, bandwidth_bytes_per_s, latency_us, dtype_bytes, powersgd_rank, localsgd_period)
    width = layer_width if layer_width is not None else default_layer_width(params)
    if width < 1 or powersgd_rank > width:
        raise ConfigError(
            f"`layer_width` must be at least the PowerSGD rank {powersgd_rank}, found {width}", params=("layer_width",)
        )
    latency_s = latency_us / 1e6
    ring_factor = 2 * (workers - 1) / workers
    hop_latency_s = 2 * (workers - 1) * latency_s
    gradient_bytes = params * dtype_bytes

    def cost(name: str, payload: float, all_reduces: int, per_step: float, assumption: str) -> StrategyCost:
        bandwidth_s = ring_factor * payload / bandwidth_bytes_per_s * per_step
        latency_term_s = all_reduces * hop_latency_s * per_step
        return StrategyCost(name, payload * per_step, bandwidth_s, latency_term_s, bandwidth_s + latency_term_s, 0.0,
                            assumption)  # fmt: skip

    compression = width * width / (powersgd_rank * 2 * width)
    strategies = [
        cost("ddp", gradient_bytes, 1, 1.0, f"all-reduce every gradient in {dtype_bytes}-byte values"),
        cost("fp16", params * 2, 1, 1.0, "gradients sent as 2-byte values"),
        cost(
            "powersgd", gradient_bytes / compression, 2, 1.0,
            f"all weights in {width}×{width} matrices, each sent as rank-{powersgd_rank} factors "
            f"({compression:g}× fewer bytes) in two all-reduces",
        ),
        cost("localsgd", gradient_bytes, 1, 1 / localsgd_period,
             f"models averaged every {localsgd_period} steps"),
    ]  # fmt: skip
    ddp_s = strategies[0].seconds_per_step
    strategies = [_with_speedup(s, ddp_s) for s in strategies]
    return CommPlan(
        params=params,
        workers=workers,
        bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        latency_seconds=latency_s,
        dtype_bytes=dtype_bytes,
        gradient_bytes=gradient_bytes,
        ring_factor=ring_factor,
        bandwidth_seconds=strategies[0].bandwidth_seconds,
        latency_term_seconds=strategies[0].latency_seconds,
        allreduce_seconds=ddp_s,
        powersgd_rank=powersgd_rank,
        layer_width=width,
        layer_width_assumed=layer_width is None,
        powersgd_compression=compression,
        localsgd_period=localsgd_period,
        strategies=tuple(strategies),
    )


def _with_speedup(cost: StrategyCost, ddp_seconds: float) -> StrategyCost:
    speedup = ddp_seconds / cost.seconds_per_step if cost.seconds_per_step > 0 else math.inf
    return StrategyCost(**{**asdict(cost), "speedup": speedup})


def _check(
    params: int,
    workers: int,
    bandwidth: float,
    latency_us: float,
    dtype_bytes: int,
    rank: int,
    period: int,
) -> None:
    limits = [
        ("params", params, params >= 1, "a positive count"),
        ("workers", workers, workers >= 2, "at least 2 (one worker communicates nothing)"),
        ("bandwidth_bytes_per_s", bandwidth, bandwidth > 0 and math.isfinite(bandwidth), "a positive rate"),
        ("latency_us", latency_us, latency_us >= 0 and math.isfinite(latency_us), "0 or more"),
        ("dtype_bytes", dtype_bytes, dtype_bytes in (1, 2, 4, 8), "1, 2, 4 or 8"),
        ("powersgd_rank", rank, rank >= 1, "at least 1"),
        ("localsgd_period", period, period >= 1, "at least 1"),
    ]
    for param, value, ok, expected in limits:
        if not ok:
            raise ConfigError(f"`{param}` must be {expected}, found {value:g}", params=(param,))
