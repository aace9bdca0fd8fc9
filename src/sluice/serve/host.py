"""The model versions a server holds: loaded, warmed up, each behind its own batching dispatcher.

:class:`ModelHost` decides which versions of each repository model to serve (those its
``versions:`` policy names, by default the latest one, plus every labelled or routed one),
loads each in a worker thread, gives it a :class:`~sluice.serve.dispatch.Dispatcher` under
an :class:`~sluice.serve.policy.AdaptivePolicy`, and sends it one warm-up inference of zeros
before calling it ready. It resolves what a URL names (``NAME``, ``NAME/versions/2``,
``NAME/versions/stable``) to one served version, and loads and unloads models on request.
Every method runs on the server's event loop.
:func:`sluice.serve.prometheus.render_metrics` writes their dispatchers' figures for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sluice.errors import ConfigError, ModelNotFound, Overloaded, SluiceError
from sluice.metrics import BucketedHistogram
from sluice.models.base import Model
from sluice.models.config import LoadOptions, ModelConfig
from sluice.models.loader import load_source
from sluice.models.policy_config import select_versions
from sluice.models.repository import ModelRepository
from sluice.models.signature import Signature, TensorSpec
from sluice.serve.dispatch import Dispatcher, DispatchMetrics
from sluice.serve.policy import AdaptivePolicy, BatchPolicy, FixedPolicy

__all__ = [
    "BATCH_BOUNDS_ROWS",
    "LATENCY_BOUNDS_S",
    "ModelHost",
    "ServedVersion",
    "VersionState",
]

log = logging.getLogger(__name__)

LATENCY_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BOUNDS_ROWS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
_PLATFORMS = {"onnx": "onnxruntime_onnx", "sklearn": "sklearn", "pickle": "sklearn", "python": "python"}

State = Literal["LOADING", "READY", "UNAVAILABLE"]
_NOT_WANTED = "not served: outside the version policy and named by no label or route"


def _new_metrics() -> DispatchMetrics:
    return DispatchMetrics(
        queue=BucketedHistogram(LATENCY_BOUNDS_S),
        compute=BucketedHistogram(LATENCY_BOUNDS_S),
        total=BucketedHistogram(LATENCY_BOUNDS_S),
        batch_rows=BucketedHistogram(BATCH_BOUNDS_ROWS),
    )


@dataclass(frozen=True)
class ServedVersion:
    """One loaded, warmed-up model version and the dispatcher that batches its requests."""

    name: str
    version: int
    model: Model
    dispatcher: Dispatcher
    max_batch_size: int  # 0: the model has no batch dimension

    @property
    def signature(self) -> Signature:
        return self.model.signature

    @property
    def platform(self) -> str:
        return _PLATFORMS.get(self.model.source.format, self.model.source.format)


@dataclass(frozen=True)
class VersionState:
    """A version's state as the repository index reports it."""

    state: State
    reason: str = ""
    blocks_ready: bool = True  # False when older versions of the model serve meanwhile


class ModelHost:
    """The served versions of every model in ``repository``; see the module docstring."""

    def __init__(
        self, repository: ModelRepository, *, options: LoadOptions | None = None, target_p99_ms: float = 100.0
    ) -> None:
        self.repository = repository
        self.options = options or LoadOptions()
        self.target_p99_ms = target_p99_ms
        self._served: dict[str, dict[int, ServedVersion]] = {}
        self._configs: dict[str, ModelConfig] = {}
        self._states: dict[tuple[str, int], VersionState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._started = False
        self._draining = False

    # -- state ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every model the server set out to serve has loaded and answered its warm-up, and the
        server is not shutting down."""
        if not self._started or self._draining:
            return False
        counted = (s for s in self._states.values() if s.blocks_ready and s.reason != "unloaded")
        return all(s.state == "READY" for s in counted)

    def begin_drain(self) -> None:
        """Report not ready from now on (shutdown has begun); requests are still answered."""
        self._draining = True

    @property
    def draining(self) -> bool:
        """Shutdown has begun (:meth:`begin_drain`)."""
        return self._draining

    def cut_off_drain(self) -> int:
        """The drain ran out of time: answer every queued request 503 with ``Retry-After``, so the
        server stops without running them; batches already running finish. Returns how many."""
        error = Overloaded("the server is shutting down: its drain timeout passed before this request ran", 1.0)
        return sum(
            served.dispatcher.shed_queued(error) for versions in self._served.values() for served in versions.values()
        )

    def state(self, name: str, version: int) -> VersionState | None:
        """The state of ``name`` version ``version`` (None: never loaded)."""
        return self._states.get((name, version))

    def config(self, name: str) -> ModelConfig | None:
        """The ``model.yaml`` settings ``name`` was last loaded with (None: not loaded)."""
        return self._configs.get(name)

    def served(self) -> dict[str, list[ServedVersion]]:
        """Served versions per model name, oldest first."""
        return {name: [versions[v] for v in sorted(versions)] for name, versions in sorted(self._served.items())}

    def index(self, *, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository index: every model version on disk with its state (Triton's format)."""
        entries: list[dict[str, Any]] = []
        for name in self.repository.names():
            for version in self.repository.versions(name):
                state = self._states.get((name, version))
                if ready_only and (state is None or state.state != "READY"):
                    continue
                entry: dict[str, Any] = {"name": name, "version": str(version)}
                if state is not None:
                    entry["state"] = state.state
                    entry["reason"] = state.reason
                entries.append(entry)
        return entries

    def get(self, name: str, selector: str | None = None) -> ServedVersion:
        """The served version a URL names: ``selector`` is None, a version number or a label."""
        versions = self._served.get(name)
        if not versions:
            if any(s.state == "LOADING" for (n, _), s in self._states.items() if n == name):
                raise Overloaded(f"model '{name}' is loading", retry_after_s=1.0)
            if name in self._configs or name in self.repository.names():
                raise ModelNotFound(f"Request for unknown model: '{name}' has no available versions")
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found")
        version = self._select(name, selector, versions)
        served = versions.get(version)
        if served is None:
            raise ModelNotFound(f"Request for unknown model: '{name}' version {version} is not found")
        return served

    def _select(self, name: str, selector: str | None, versions: dict[int, ServedVersion]) -> int:
        labels = self._configs[name].labels if name in self._configs else {}
        if selector is None:
            stable = labels.get("stable")
            return stable if stable in versions else max(versions)
        if selector.isdigit():
            return int(selector)
        if selector == "latest":
            return max(versions)
        if selector not in labels:
            raise ModelNotFound(f"Request for unknown model: '{name}' has no version or label '{selector}'")
        return labels[selector]

    # -- loading -------------------------------------------------------------------------------

    async def load_all(self, *, exclude: Container[str] = frozenset()) -> None:
        """Load every model in the repository but those in ``exclude`` (read as each model's turn
        comes); a model that fails is logged and left unavailable."""
        try:
            for name in self.repository.names():
                if name in exclude:
                    continue
                try:
                    # this process's own start-up: a subclass's load (a request from a client) may do more
                    await ModelHost.load(self, name)
                except SluiceError as exc:
                    log.error("model '%s' failed to load: %s", name, exc)
        finally:
            self._started = True

    async def load(self, name: str) -> None:
        """Load (or reload) ``name``: serve its wanted versions and drop the others.

        The swap is atomic: new versions load and answer their warm-up first, then routing
        switches to them, then the versions no longer served finish their queued requests and
        close. A changed ``model.yaml`` (other than its labels) reloads every served version.
        Versions that fail stay UNAVAILABLE with the reason and, while the model has served
        versions, the old ones keep serving; the first failure is raised after the rest load.
        """
        if name not in self.repository.names():
            raise ModelNotFound(f"failed to load '{name}': no model of that name in repository {self.repository.root}")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            config = self.repository.config(name)
            wanted = self._wanted_versions(name, config)
            current = self._served.get(name, {})
            reload = wanted if self._settings_changed(name, config) else wanted - set(current)
            serving = {v: s for v, s in current.items() if v in wanted}
            first_error: SluiceError | None = None
            for version in sorted(reload):
                self._states[(name, version)] = VersionState("LOADING", blocks_ready=not current)
                try:
                    serving[version] = await self._load_version(name, version, config)
                except SluiceError as exc:
                    log.error("model '%s' version %d failed to load: %s", name, version, exc)
                    self._states[(name, version)] = VersionState("UNAVAILABLE", str(exc), blocks_ready=not current)
                    first_error = first_error or exc
                    continue
                self._states[(name, version)] = VersionState("READY")
            if first_error is not None:  # keep serving what served before, beside what did load
                serving = {**current, **serving}
            self._configs[name] = config
            self._served[name] = serving
            await self._retire(name, current, serving)
            for version in set(self.repository.versions(name)) - wanted - set(serving):
                self._states[(name, version)] = VersionState("UNAVAILABLE", _NOT_WANTED, blocks_ready=False)
            if first_error is not None:
                raise first_error

    def _settings_changed(self, name: str, config: ModelConfig) -> bool:
        old = self._configs.get(name)
        # labels, routing and the version policy change where requests go, not how a version runs
        routing_only = {"labels", "routing", "versions"}
        return old is not None and old.model_dump(exclude=routing_only) != config.model_dump(exclude=routing_only)

    async def _retire(self, name: str, before: dict[int, ServedVersion], after: dict[int, ServedVersion]) -> None:
        # routing already points at ``after``: what the old versions hold in their queues was
        # admitted before the switch, and close() runs it before the model is released
        kept = {id(served) for served in after.values()}
        for version, old in before.items():
            if id(old) in kept:
                continue
            if version not in after:
                self._states.pop((name, version), None)
            log.info("draining %s version %d", name, version)
            await _close(old)

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: finish its queued requests, then release its models."""
        if name not in self._served and name not in self.repository.names():
            raise ModelNotFound(f"failed to unload '{name}': no model of that name is loaded or in the repository")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self._served.pop(name, {})
            for version in self.repository.versions(name) if name in self.repository.names() else []:
                self._states[(name, version)] = VersionState("UNAVAILABLE", "unloaded")
            for served in versions.values():
                self._states[(name, served.version)] = VersionState("UNAVAILABLE", "unloaded")
                await _close(served)

    async def close(self) -> None:
        """Unload every model (queued requests finish first)."""
        for name in list(self._served):
            await ModelHost.unload(self, name)  # this process's own shutdown, as in load_all

    def _wanted_versions(self, name: str, config: ModelConfig) -> set[int]:
        versions = self.repository.versions(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' in {self.repository.root} has no version directories (1/, 2/, …)")
        named = {*config.labels.values(), *self._routed_versions(name, config, versions)}
        return {*select_versions(config.versions, versions), *(v for v in named if v in versions)}

    def _routed_versions(self, name: str, config: ModelConfig, versions: list[int]) -> set[int]:
        # refused before anything changes, so what serves keeps serving
        routed: set[int] = set()
        if config.routing is None:
            return routed
        for variant in [*config.routing.weights, *config.routing.shadow]:
            version = int(variant) if variant.isdigit() else config.labels.get(variant)
            if version not in versions:
                raise ConfigError(
                    f"{self.repository.model_dir(name) / 'model.yaml'}: routing variant '{variant}' names no "
                    f"version on disk; versions: {versions}, labels: {config.labels or 'none'}"
                )
            routed.add(version)
        return routed

    async def _load_version(self, name: str, version: int, config: ModelConfig) -> ServedVersion:
        source = self.repository.resolve(f"{name}@{version}", self.options)
        model = await asyncio.to_thread(load_source, source)
        batching = config.batching
        max_batch_size = batching.max_batch_size if _batchable(model.signature) else 0
        policy: BatchPolicy
        if batching.fixed:
            policy = FixedPolicy(max(1, max_batch_size), batching.queue_delay_us)
        else:
            policy = AdaptivePolicy(batching.target_p99_ms or self.target_p99_ms, max(1, max_batch_size))
        dispatcher = Dispatcher(
            # the dispatcher checks each batch's outputs against the signature itself, and runs
            # the model's own preparation (tokenizing, decoding) on each request before predict
            model.predict,
            policy,
            max_queue_rows=batching.max_queue_rows,
            # only runtimes that compute and return may run on the event loop: Python code can
            # block (a lock, a file, the network) and would freeze every request with it
            allow_inline=source.format in _INLINE_FORMATS,
            signature=model.signature,
            model_name=name,
            prepare=model.prepare if type(model).prepare is not Model.prepare else None,
        )
        dispatcher.metrics = _new_metrics()
        served = ServedVersion(name, version, model, dispatcher, max_batch_size)
        try:
            # straight to the model: a warm-up guess at dynamic widths is no client's request,
            # and must not count in the dispatcher's figures or teach its latency model
            warm_up = model.warm_up_inputs() or warm_up_inputs(model.signature)
            await asyncio.to_thread(model.predict_checked, warm_up)
        except BaseException:
            await _close(served)
            raise
        log.info("serving %s version %d (%s)", name, version, model.signature.describe())
        return served


_INLINE_FORMATS = frozenset({"onnx", "sklearn", "xgboost", "lightgbm"})


def warm_up_inputs(signature: Signature) -> dict[str, np.ndarray]:
    """One row of zeros (empty strings for text) for every input of ``signature``."""
    return {spec.name: _zeros(spec) for spec in signature.inputs}


def _zeros(spec: TensorSpec) -> np.ndarray:
    shape = tuple(1 if d < 0 else d for d in spec.shape) or (1,)
    if spec.dtype.kind in "OUS":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)


def _batchable(signature: Signature) -> bool:
    specs = [*signature.inputs, *signature.outputs]
    return all(spec.shape and spec.shape[0] < 0 for spec in specs)


async def _close(served: ServedVersion) -> None:
    try:
        await served.dispatcher.close()
    finally:
        served.model.close()
