"""Per-request preparation of a batch, for models that prepare their inputs (decode, tokenize).

A dynamically batched group holds many clients' requests: a request whose records the model
cannot prepare (an image that does not decode) fails alone with a 400 naming the reason, and the
others are predicted together. Preparation runs where the batch computes, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sluice.errors import ProtocolError
from sluice.models.base import Prepared

__all__ = ["PrepareFn", "PreparedBatch", "prepare_requests"]

Arrays = dict[str, np.ndarray]
PrepareFn = Callable[[Mapping[str, np.ndarray]], Prepared]


@dataclass(frozen=True)
class PreparedBatch:
    """The prepared inputs of the requests ``live`` (indices into the batch), concatenated, and
    the error of each request that could not be prepared."""

    inputs: Arrays
    live: tuple[int, ...]
    rows: int
    rejected: dict[int, ProtocolError] = field(default_factory=dict)


def prepare_requests(prepare: PrepareFn, requests: Sequence[Arrays], model_name: str) -> PreparedBatch:
    """Prepare each request's inputs on its own, so one bad record fails only its own request."""
    parts: list[Arrays] = []
    live: list[int] = []
    rejected: dict[int, ProtocolError] = {}
    rows = 0
    for index, inputs in enumerate(requests):
        prepared = prepare(inputs)
        if prepared.failed:
            row, reason = prepared.failed[0]
            rejected[index] = ProtocolError(f"model '{model_name}' cannot take row {row} of the request: {reason}")
            continue
        parts.append(prepared.inputs)
        live.append(index)
        rows += int(prepared.ok.shape[0])
    if not parts:
        return PreparedBatch({}, (), 0, rejected)
    names = parts[0].keys()
    joined = {name: parts[0][name] if len(parts) == 1 else np.concatenate([p[name] for p in parts]) for name in names}
    return PreparedBatch(joined, tuple(live), rows, rejected)
