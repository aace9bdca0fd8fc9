"""``tune``: profile a model on real rows and choose its batch size and worker set-up."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sluice.data.readers import read_shard
from sluice.data.schema import feature_read_schema, infer_input_schema
from sluice.data.shards import plan_shards
from sluice.errors import ConfigError, DataError
from sluice.models.base import Model
from sluice.models.loader import model_digest
from sluice.models.signature import FeatureSpec
from sluice.tune.measure import ModelBench
from sluice.tune.memory import memory_bound
from sluice.tune.profile import Profile
from sluice.tune.search import Constraints, SearchSpace, choose, exhaustive, search

__all__ = ["load_sample", "parse_bytes", "thread_setups", "tune"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "k": 1 << 10, "m": 1 << 20})
_UNITS.update({"g": 1 << 30, "t": 1 << 40})


def parse_bytes(text: str | int) -> int:
    """``"2GiB"``, ``"512MB"``, ``"1e9"`` or an int, in bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigError(f"memory size {text!r} is not understood: use e.g. 2GiB, 512MiB, 8GB or a byte count")
    return int(float(match.group(1)) * _UNITS[unit])


def thread_setups(model: Model, cores: int | None = None) -> tuple[tuple[int, int], ...]:
    """(workers, intra-op threads) worth trying: the engine's default first."""
    cores = cores or os.cpu_count() or 1
    if model.concurrency == "serial":
        return ((1, cores), (1, 1)) if cores > 1 else ((1, 1),)
    if model.concurrency == "processes":
        return tuple(dict.fromkeys([(cores, 1), (max(1, cores // 2), 1)]))
    setups = [(cores, 1), (1, cores)]
    if cores >= 4:
        setups.append((cores // 2, 2))
    return tuple(dict.fromkeys(setups))


def load_sample(
    model: Model,
    source: str,
    *,
    rows: int = 1 << 16,
    features: FeatureSpec = None,
    not_features: Sequence[str] = (),
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Up to ``rows`` rows of ``source`` bound to the model's inputs (rows that do not bind are left out).

    ``not_features`` are columns (keys, identifiers) never taken as features by default.
    """
    shards = plan_shards(source, storage_options=storage_options)
    schema = infer_input_schema(shards)
    features = features or model.source.config.features or model.default_features
    plan = model.signature.plan(schema, features, not_features=not_features, allow_nan=model.source.config.allow_nan)
    raw = plan.columns if shards[0].format != "parquet" else []
    read_schema = feature_read_schema(schema, raw)
    parts: list[dict[str, np.ndarray]] = []
    taken = 0
    for shard in shards:
        for item in read_shard(shard, columns=plan.columns, schema=read_schema, batch_size=rows, raw_columns=raw):
            bound = plan.bind(item.batch)
            if bound.num_rows:
                parts.append({k: v[: rows - taken] for k, v in bound.inputs.items()})
                taken += min(bound.num_rows, rows - taken)
            if taken >= rows:
                break
        if taken >= rows:
            break
    if not taken:
        raise DataError(f"{source} holds no row the model can take, so there is nothing to tune on")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def tune(
    model: Model,
    sample: str | Mapping[str, np.ndarray],
    *,
    features: FeatureSpec = None,
    key_column: str | None = None,
    max_latency_ms: float | None = None,
    memory_limit: str | int | None = None,
    price_per_hour: float | None = None,
    instance: str | None = None,
    setups: Sequence[tuple[int, int]] | None = None,
    sample_rows: int = 1 << 16,
    max_batch_size: int = 1 << 16,
    min_seconds: float = 0.25,
    sweep: bool = False,
) -> Profile:
    """Measure ``model`` over batch sizes and worker set-ups; choose the fastest within budgets.

    ``sweep=True`` measures the whole grid instead of searching (for comparison).
    """
    started = time.perf_counter()
    if isinstance(sample, str):
        not_features = [key_column] if key_column else []
        inputs = load_sample(model, sample, rows=sample_rows, features=features, not_features=not_features)
    else:
        inputs = dict(sample)
    limit = parse_bytes(memory_limit) if memory_limit is not None else None
    bound = ""
    per_row: int | None = None
    if limit is not None:  # the batch sizes worth measuring end where the measured memory per row says
        fit = memory_bound(model, inputs, limit, max_batch_size)
        max_batch_size, per_row = min(max_batch_size, fit.batch_size), fit.per_row_bytes
        bound = f"; batch sizes searched up to {max_batch_size:,}: {fit.describe()}"
    constraints = Constraints(max_latency_ms, limit)
    space = SearchSpace(tuple(setups or thread_setups(model)), max_batch=max_batch_size)
    bench = ModelBench(model.source, inputs, min_seconds=min_seconds, memory_limit_bytes=limit)
    measurements = exhaustive(bench, space) if sweep else search(bench, space, constraints)
    choice = choose(measurements, constraints)
    return Profile(
        model=model.source.display_name,
        model_digest=model_digest(model),
        measurements=measurements,
        chosen=choice.measurement,
        reason=choice.reason + bound,
        memory_per_row_bytes=per_row,
        max_latency_ms=max_latency_ms,
        memory_limit_bytes=limit,
        price_per_hour=price_per_hour,
        instance=instance,
        tuning_seconds=round(time.perf_counter() - started, 3),
        sample_rows=int(next(iter(inputs.values())).shape[0]),
    )
