"""One prediction step: bind a batch, predict, unbind the outputs beside the pass-through columns.

Every batch path runs this one function: the pipelined engine (lenient: a record that cannot
bind or that the model rejects becomes a failure and the rest of the batch goes on) and
in-memory prediction (strict: the first such record raises, naming its row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sluice.batch.predictor import Predictor
from sluice.errors import PredictError
from sluice.models.signature import BindPlan, Signature, tensor_to_arrow

__all__ = ["RowFailure", "StepResult", "empty_outputs", "predict_step"]


@dataclass(frozen=True)
class RowFailure:
    """A record of the batch that got no prediction: its row in the batch, the field, why."""

    row: int
    field: str | None
    message: str


@dataclass(frozen=True)
class StepResult:
    """The output rows of one batch and the rows that failed.

    ``batch`` holds the pass-through columns and then the model's outputs, for the input rows
    ``rows`` (indices into the input batch, ascending). ``failures`` lists the rows that did not
    bind, in row order, then the rows the model rejected.
    """

    batch: pa.RecordBatch
    rows: np.ndarray
    failures: list[RowFailure] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # the model's per-batch counts (Prepared.counters)


def _ignore(_seconds: float) -> None:
    pass


def predict_step(
    batch: pa.RecordBatch,
    bind: BindPlan,
    predictor: Predictor,
    *,
    strict: bool,
    passthrough: Sequence[str] = (),
    on_latency: Callable[[float], None] = _ignore,
) -> StepResult:
    """Bind ``batch`` with ``bind``, predict with ``predictor`` and unbind the outputs.

    With ``strict``, a row that does not bind raises :class:`~sluice.errors.BindError` and a row
    the model rejects raises :class:`~sluice.errors.PredictError`, each naming the row within
    ``batch``; otherwise such rows are returned as failures. Columns are not copied where Arrow
    and numpy share buffers: pass-through columns are slices of ``batch``, outputs views of the
    model's tensors.
    """
    bound = bind.bind(batch)
    if strict:
        bound.raise_first_failure()
    failures = [RowFailure(row, fld, message) for row, fld, message in bound.failures]
    keep = bound.rows
    outputs: list[tuple[str, pa.Array]] | None = None
    counters: dict[str, int] = {}
    if bound.num_rows:
        keep, outputs, counters = _predict_bound(bound.inputs, keep, predictor, strict, failures, on_latency)
    if outputs is None:
        outputs = empty_outputs(predictor.model.signature)
    kept = batch.select(list(passthrough))
    if keep.size != batch.num_rows:
        kept = kept.take(pa.array(keep))
    names = [*kept.schema.names, *(n for n, _ in outputs)]
    out = pa.RecordBatch.from_arrays([*kept.columns, *(a for _, a in outputs)], names=names)
    return StepResult(out, keep, failures, counters)


def _predict_bound(
    inputs: dict[str, np.ndarray],
    keep: np.ndarray,
    predictor: Predictor,
    strict: bool,
    failures: list[RowFailure],
    on_latency: Callable[[float], None],
) -> tuple[np.ndarray, list[tuple[str, pa.Array]] | None, dict[str, int]]:
    """Prepare and predict the bound rows ``keep``; returns the rows that got outputs, the
    output columns (None when no row did) and the model's counters. Failures are appended."""
    prepared = predictor.model.prepare(inputs)
    if strict and prepared.failed:
        row, message = prepared.failed[0]
        raise PredictError(f"row {int(keep[row])}: {message}")
    failures += [RowFailure(int(keep[i]), None, message) for i, message in prepared.failed]
    keep = keep[prepared.ok]
    if not keep.size:
        return keep, None, prepared.counters
    result = predictor.run(prepared.inputs, int(keep.size), on_latency)
    if strict and result.failed:
        row, message = result.failed[0]
        raise PredictError(f"row {int(keep[row])}: {message}")
    failures += [RowFailure(int(keep[i]), None, message) for i, message in result.failed]
    keep = keep[result.ok]
    if not keep.size:
        return keep, None, prepared.counters
    return keep, predictor.model.signature.unbind(result.outputs, int(keep.size)), prepared.counters


def empty_outputs(signature: Signature) -> list[tuple[str, pa.Array]]:
    """Zero-row output columns, for batches in which no record reached the model."""
    outputs = []
    for spec in signature.outputs:
        probe = np.zeros((0, *(max(d, 1) for d in spec.shape[1:])), dtype=spec.dtype)
        outputs.append((spec.name, tensor_to_arrow(spec.name, probe, 0)))
    return outputs
