"""Training data: features and target read with :mod:`sluice.data`, split, scaled and sliced per rank.

Every rank reads the feature and target columns (nothing else) of the whole data set and keeps
them as one float32 matrix, then materialises only its own rows of each step. That is what makes
a step's global batch independent of the number of ranks: step ``k`` of an epoch takes rows
``[k*B, (k+1)*B)`` of a seeded permutation of the training split, and rank ``r`` of ``W`` takes
the ``r``-th contiguous ``B/W`` of them. Training with 1 or N processes therefore sees the same
batches, and every rank runs the same number of steps, so uneven shards cannot hang a collective.
(The price: each rank holds the feature matrix; tabular training sets fit comfortably.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sluice.data.readers import read_shard
from sluice.data.schema import feature_read_schema, infer_input_schema
from sluice.data.shards import Shard, plan_shards
from sluice.errors import ConfigError, DataError
from sluice.models.signature import BindPlan, Signature, TensorSpec, default_feature_columns, is_value_type
from sluice.train.config import TrainConfig

__all__ = [
    "TRAINING_SIGNATURE",
    "ColumnPlan",
    "Task",
    "TrainPlan",
    "TrainingData",
    "epoch_order",
    "load_training_data",
    "plan_columns",
    "rank_rows",
    "split_rows",
    "validation_rows",
]

Task = Literal["classification", "regression"]
ClassLabel = str | int | bool | float
_READ_ROWS = 1 << 16


# The trained network takes one float matrix; binding the data to this signature is how
# training picks its feature columns and builds that matrix, exactly as prediction binds.
_FEATURES_INPUT = TensorSpec("features", np.dtype(np.float64), (-1, -1))
TRAINING_SIGNATURE = Signature((_FEATURES_INPUT,), ())


@dataclass(frozen=True)
class TrainPlan:
    """Which columns train the model, decided from the schema alone (cheap: no rows read)."""

    shards: tuple[Shard, ...]
    schema: pa.Schema
    bind: BindPlan  # the feature columns, bound to the training signature
    target: str
    task: Task

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.bind.columns)


ColumnPlan = TrainPlan  # the name this plan had before training bound through Signature


@dataclass(frozen=True)
class TrainingData:
    """The standardised training and validation arrays, and what export needs to undo the scaling."""

    features: tuple[str, ...]
    task: Task
    classes: tuple[ClassLabel, ...]  # class labels in index order; empty for regression
    x_train: np.ndarray  # float32 [n_train, d], standardised
    y_train: np.ndarray  # int64 class indices, or float32 standardised target
    x_val: np.ndarray
    y_val: np.ndarray
    mean: np.ndarray  # float32 [d], training split
    std: np.ndarray  # float32 [d], training split; 1 where a column is constant
    target_mean: float  # regression target scaling (0 and 1 for classification)
    target_std: float
    dropped_rows: int  # rows with a missing or non-finite feature or target, or unreadable


def _task_of(t: pa.DataType, target: str) -> Task:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "regression"
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return "classification"
    raise DataError(f"target column '{target}' has type {t}; expected numbers, booleans or strings")


def plan_columns(config: TrainConfig) -> TrainPlan:
    """Resolve the feature and target columns and the task; raises DataError or ConfigError."""
    shards = plan_shards(config.data)
    if not shards:
        raise DataError(f"{config.data} names no input files")
    schema = infer_input_schema(shards)
    if config.target not in schema.names:
        raise DataError(f"{shards[0].source} has no target column '{config.target}'; its columns are {schema.names}")
    excluded = {config.target, *config.exclude}
    if config.features is not None:
        features = [f for f in config.features if f not in excluded]
        missing = [f for f in features if f not in schema.names]
        if missing:
            raise DataError(f"{shards[0].source} has no feature column {missing}; its columns are {schema.names}")
        wrong = [f for f in features if not is_value_type(schema.field(f).type)]
        if wrong:
            raise DataError(f"feature columns must be numeric; {wrong} are not")
    else:
        features = default_feature_columns(schema, excluded)
    if not features:
        raise ConfigError(f"no numeric feature columns besides the target '{config.target}'; name them with features")
    # NaN and infinite values bind; rows holding them are dropped with the other unusable rows
    bind = TRAINING_SIGNATURE.plan(schema, features, allow_nan=True)
    task = _task_of(schema.field(config.target).type, config.target)
    return TrainPlan(tuple(shards), schema, bind, config.target, task)


def _read_columns(plan: TrainPlan) -> tuple[np.ndarray, pa.ChunkedArray, int]:
    """The bound feature matrix (float64), the target of its rows, and the records left out
    (unreadable, or with a missing feature value)."""
    columns = [*plan.features, plan.target]
    parts: list[np.ndarray] = []
    targets: list[pa.Array] = []
    failed = 0
    for shard in plan.shards:
        schema = plan.schema if shard.format == "parquet" else feature_read_schema(plan.schema, plan.features)
        for item in read_shard(shard, columns=columns, schema=schema, batch_size=_READ_ROWS):
            failed += len(item.failures)
            if not item.batch.num_rows:
                continue
            bound = plan.bind.bind(item.batch)
            failed += len(bound.failures)
            target = item.batch.column(plan.target)
            if bound.failures:
                target = target.take(pa.array(bound.rows))
            parts.append(bound.inputs[_FEATURES_INPUT.name])
            targets.append(target.dictionary_decode() if pa.types.is_dictionary(target.type) else target)
    if not parts:
        raise DataError(f"{plan.shards[0].source} holds no rows to train on")
    target_type = targets[0].type
    return np.concatenate(parts), pa.chunked_array([t.cast(target_type) for t in targets]), failed


def _encode_target(target: pa.ChunkedArray, task: Task) -> tuple[np.ndarray, np.ndarray, tuple[ClassLabel, ...]]:
    """Target values (class indices or floats) and a mask of rows where it is usable."""
    if task == "regression":
        values = target.cast(pa.float64(), safe=False).to_numpy()
        return values, np.isfinite(values), ()
    valid = target.is_valid().to_numpy()
    classes = pc.unique(target.drop_null()).sort()
    indices = pc.index_in(target, value_set=classes).fill_null(0).to_numpy().astype(np.int64)
    return indices, np.asarray(valid, dtype=bool), tuple(classes.to_pylist())


def split_rows(n: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and validation splits: a seeded shuffle, each part sorted."""
    n_val = min(n - 1, max(1, round(n * validation_fraction)))
    order = np.random.default_rng([seed, 0]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_training_data(config: TrainConfig, plan: TrainPlan | None = None) -> TrainingData:
    """Read, clean, split and standardise the training data that ``config`` names."""
    plan = plan or plan_columns(config)
    x, target, failed = _read_columns(plan)
    y, usable, classes = _encode_target(target, plan.task)
    usable &= np.isfinite(x).all(axis=1)
    dropped = int(failed + (~usable).sum())
    x, y = x[usable], y[usable]
    if plan.task == "classification" and len(classes) < 2:
        raise DataError(f"target '{plan.target}' has {len(classes)} distinct value(s); classification needs two")
    if x.shape[0] < 2:
        raise DataError(f"{config.data} has {x.shape[0]} usable row(s); training needs more")
    train, val = split_rows(x.shape[0], config.validation_fraction, config.seed)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std < 1e-12] = 1.0
    x = ((x - mean) / std).astype(np.float32)
    target_mean, target_std = 0.0, 1.0
    if plan.task == "regression":
        target_mean, target_std = float(y[train].mean()), float(y[train].std()) or 1.0
        y = ((y - target_mean) / target_std).astype(np.float32)
    return TrainingData(
        features=plan.features,
        task=plan.task,
        classes=classes,
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        target_mean=target_mean,
        target_std=target_std,
        dropped_rows=dropped,
    )


def epoch_order(n_train: int, seed: int, epoch: int) -> np.ndarray:
    """The training rows in the order of one epoch: the same for every rank and world size."""
    return np.random.default_rng([seed, 1, epoch]).permutation(n_train)


def rank_rows(order: np.ndarray, step: int, global_batch: int, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s contiguous part of step ``step``'s global batch (indices into the training split)."""
    per_rank = global_batch // world
    start = step * global_batch + rank * per_rank
    return order[start : start + per_rank]


def validation_rows(n_val: int, rank: int, world: int) -> range:
    """This rank's validation rows; the parts may differ in size by one (sums are all-reduced)."""
    return range(n_val * rank // world, n_val * (rank + 1) // world)
