"""The :class:`Model` contract every adapter implements."""

from __future__ import annotations

import abc
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sluice.errors import ModelOutOfMemory, PredictError
from sluice.models.checks import check_outputs
from sluice.models.config import Concurrency, LoadOptions, ModelConfig, ModelFormat
from sluice.models.signature import Signature

__all__ = ["Model", "ModelSource", "Prepared"]


@dataclass
class Prepared:
    """A bound batch after the model's own per-record preparation (tokenizing, decoding images).

    ``inputs`` holds the rows ``ok`` of the bound batch (indices, ascending), in the form
    :meth:`Model.predict` takes; ``failed`` lists the rows that could not be prepared, each with
    the reason. ``counters`` are per-batch counts the model reports (e.g. truncated records),
    added up into the run's summary.
    """

    inputs: dict[str, np.ndarray]
    ok: np.ndarray
    failed: list[tuple[int, str]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: enough to load it again, e.g. in a worker process."""

    format: ModelFormat
    location: str  # artifact path, or 'module:attr' for python callables
    config: ModelConfig = field(default_factory=ModelConfig)
    options: LoadOptions = field(default_factory=LoadOptions)
    name: str | None = None
    version: int | None = None
    search_path: str | None = None  # directory put on sys.path for python models

    @property
    def display_name(self) -> str:
        if self.name is not None:
            return f"{self.name}@{self.version}"
        return Path(self.location).name if self.format != "python" else self.location

    def with_options(self, options: LoadOptions) -> ModelSource:
        return ModelSource(self.format, self.location, self.config, options, self.name, self.version, self.search_path)

    def with_config(self, config: ModelConfig) -> ModelSource:
        """This source with ``config`` (e.g. model.yaml's with a job's settings over it)."""
        return ModelSource(self.format, self.location, config, self.options, self.name, self.version, self.search_path)


class Model(abc.ABC):
    """A loaded model: a :class:`Signature` and a whole-batch :meth:`predict`.

    ``concurrency`` tells the engines how ``predict`` may run in parallel: ``threads`` when
    it is thread-safe and releases the GIL, ``processes`` when it holds the GIL (plain
    Python), ``serial`` when it must never run twice at once.
    """

    signature: Signature
    source: ModelSource
    concurrency: Concurrency = "threads"

    @abc.abstractmethod
    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on one prepared batch (:meth:`prepare`); every output has one entry per row."""

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> Prepared:
        """The model's per-record preparation of bound inputs, run by the engines off the thread
        that runs :meth:`predict`, so the model computes while the next batch is prepared.

        Most models take bound tensors as they are (the default); text and image models
        tokenize or decode here, and a record that cannot be prepared fails alone.
        """
        num_rows = next(iter(inputs.values())).shape[0] if inputs else 0
        return Prepared(dict(inputs), np.arange(num_rows))

    def warm_up_inputs(self) -> dict[str, np.ndarray] | None:
        """Inputs to warm the model up with before it serves; None: one row of zeros per input
        (empty values for BYTES), which suits every model that takes such rows."""
        return None

    @property
    def preferred_batch_size(self) -> int | None:
        """Rows per batch the engines use when the job leaves the batch size to them, instead of
        tuning it; None (most models): tune or take the default. Deep models, for which one batch
        of the default 4,096 records takes minutes and a tuning pass far longer, name theirs."""
        return None

    @property
    def default_features(self) -> list[str] | None:
        """Feature columns the artifact itself names (e.g. scikit-learn's feature_names_in_)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (sessions, devices)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source.display_name} {self.signature.describe()}>"

    def predict_checked(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`prepare` then :meth:`predict` on bound inputs, with the output names and row
        counts checked against the input (:func:`~sluice.models.checks.check_outputs`).

        A record that cannot be prepared raises :class:`~sluice.errors.PredictError` naming its row.
        """
        prepared = self.prepare(inputs)
        if prepared.failed:
            row, message = prepared.failed[0]
            raise PredictError(f"row {row}: {message}")
        return self.predict_prepared(prepared.inputs)

    def predict_prepared(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`predict` on inputs :meth:`prepare` returned, with the outputs checked.

        torch's out-of-memory error, raised or wrapped by any adapter, comes out as
        :class:`~sluice.errors.ModelOutOfMemory`, so the engines halve the batch instead of
        failing its records.
        """
        num_rows = next(iter(inputs.values())).shape[0] if inputs else 0
        try:
            outputs = self.predict(inputs)
        except ModelOutOfMemory:
            raise
        except Exception as exc:
            oom = _out_of_memory(exc, self.source.display_name)
            if oom is None:
                raise
            raise oom from exc
        return check_outputs(outputs, num_rows, signature=self.signature, source=f"model {self.source.display_name}")


def _out_of_memory(exc: BaseException, model: str) -> ModelOutOfMemory | None:
    """The Sluice error for torch's out-of-memory error in ``exc`` or what it was raised from, else None."""
    # only a model that imported torch can raise torch's error; its type is read from the loaded
    # module, so recognising it never loads torch (and models.base needs nothing from models.deep)
    oom_type = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if not isinstance(oom_type, type):
        return None
    seen: BaseException | None = exc
    for _ in range(4):  # an adapter's own error, raised from torch's
        if seen is None:
            return None
        if isinstance(seen, oom_type):
            first_line = str(seen).strip().splitlines()[0] if str(seen).strip() else type(seen).__name__
            return ModelOutOfMemory(f"{model} ran out of memory: {first_line}")
        seen = seen.__cause__ or seen.__context__
    return None
