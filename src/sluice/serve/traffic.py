"""The driver of traffic routing on the server's event loop: experiments per model, shadows,
feedback, live route changes persisted to ``model.yaml``, and the guardrail's rollback.

:class:`TrafficRouter` owns one :class:`~sluice.serve.experiment.Experiment` per model whose
``model.yaml`` has a ``routing:`` section (rebuilt when that section changes on disk, keeping
what it measured). The app asks it which variant answers a request that names no version,
tells it how each request went, and hands it the experiment and route endpoints' bodies; it
answers with JSON documents and :class:`~sluice.errors.SluiceError` on bad input. Shadow copies
run as tasks after the primary has answered, on the shadow version's own dispatcher, and are
dropped (counted) rather than queued when too many run or requests wait for the primary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from sluice.errors import ConfigError, ModelNotFound, Overloaded, ProtocolError, SluiceError, UnknownRequest
from sluice.serve.experiment import Experiment, Prediction, prediction_summary
from sluice.serve.host import ModelHost, ServedVersion
from sluice.serve.route_control import RouteControl

__all__ = ["VERSION_HEADER", "RouteChoice", "TrafficRouter", "sticky_key"]

log = logging.getLogger(__name__)

VERSION_HEADER = "Sluice-Model-Version"
"""Response header naming the version that answered an inference request."""
_HEADER_LENGTH = "inference-header-content-length"
_SHADOW_TIMEOUT_S = 30.0  # a stuck shadow frees its in-flight slot after this (counted as an error)
_GUARD_EVERY = 10  # routed requests of a model between two judgements of its canaries


@dataclass(frozen=True)
class RouteChoice:
    """Where one inference request goes: the selector to resolve, and what routed it there."""

    selector: str | None
    experiment: Experiment | None = None
    routing_key: str | None = None


class TrafficRouter:
    """Routing, shadows, feedback and route control for ``host``; see the module docstring."""

    def __init__(
        self, host: ModelHost, *, rng: np.random.Generator | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.host = host
        self.rng = rng or np.random.default_rng()
        self.clock = clock
        self._experiments: dict[str, Experiment] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.control = RouteControl(host)
        self._since_judged: dict[str, int] = {}
        self._rolling_back: set[str] = set()

    # -- routing -------------------------------------------------------------------------------

    def experiments(self) -> dict[str, Experiment]:
        """The live experiments by model name (after syncing with the loaded configs)."""
        for name in list(self._experiments):
            self.experiment(name)
        return dict(self._experiments)

    def experiment(self, name: str) -> Experiment | None:
        """``name``'s experiment, following the routing section it was last loaded with."""
        config = self.host.config(name)
        routing = config.routing if config is not None else None
        current = self._experiments.get(name)
        if routing is None:
            self._experiments.pop(name, None)
            return None
        if current is None:
            current = self._experiments[name] = Experiment(routing, rng=self.rng, clock=self.clock)
        elif current.routing is not routing:  # the same object on every request until a reload
            if current.routing == routing:
                current.routing = routing  # reloaded unchanged: live (e.g. Thompson) weights stay
            else:
                current.reconfigure(routing)
        return current

    def choose(self, name: str, selector: str | None, body: bytes, headers: Mapping[str, str]) -> RouteChoice:
        """Route an HTTP request: a version or label in the URL bypasses routing."""
        return self.choose_by(name, selector, lambda spec: sticky_key(spec, body, headers))

    def choose_by(self, name: str, selector: str | None, key_of: Callable[[str], str | None]) -> RouteChoice:
        """Route a request whose sticky key ``key_of(spec)`` finds; a version or label bypasses routing."""
        experiment = self.experiment(name) if selector is None else None
        if experiment is None:
            return RouteChoice(selector)
        spec = experiment.routing.sticky_key
        key = None if spec is None else key_of(spec)
        return RouteChoice(experiment.route(key), experiment, key)

    def version_of(self, name: str, experiment: Experiment) -> dict[str, str]:
        """Variant (as written) → the version it resolves to now, for variants that are served."""
        found: dict[str, str] = {}
        for variant in [*experiment.table.weights, *experiment.table.shadow]:
            try:
                found[variant] = str(self.host.get(name, variant).version)
            except SluiceError:
                continue
        return found

    # -- after a request -----------------------------------------------------------------------

    def failed(self, choice: RouteChoice, served: ServedVersion, started_s: float, http_status: int) -> None:
        """A routed request failed; the server's failures (5xx) count against its version."""
        if choice.experiment is not None and http_status >= 500:
            choice.experiment.record(str(served.version), self.clock() - started_s, None)
            self._guard(served.name, choice.experiment)

    def answered(
        self,
        choice: RouteChoice,
        served: ServedVersion,
        request_id: str | None,
        inputs: dict[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        started_s: float,
    ) -> None:
        """A routed request was answered: record it, start its shadow copies, judge the canary."""
        experiment = choice.experiment
        if experiment is None:
            return
        prediction = prediction_summary(outputs)
        experiment.record(
            str(served.version),
            self.clock() - started_s,
            prediction,
            request_id=request_id,
            routing_key=choice.routing_key,
        )
        if experiment.table.shadow:
            self._start_shadows(served, experiment, inputs, prediction)
        self._guard(served.name, experiment)

    def _start_shadows(
        self, primary: ServedVersion, experiment: Experiment, inputs: dict[str, np.ndarray], prediction: Prediction
    ) -> None:
        # requests waiting for the primary: it is busy, and shadow work is the first to go
        behind = len(primary.dispatcher.batcher) > 0
        for variant in experiment.pick_shadows():
            stats = experiment.shadow_stats(variant)
            if behind:
                stats.dropped += 1
                continue
            experiment.shadow_in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._shadow(primary.name, variant, experiment, inputs, prediction)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shadow(
        self, name: str, variant: str, experiment: Experiment, inputs: dict[str, np.ndarray], primary: Prediction
    ) -> None:
        stats = experiment.shadow_stats(variant)
        started_s = self.clock()
        try:
            served = self.host.get(name, variant)
            rows = int(next(iter(inputs.values())).shape[0])
            outputs = await served.dispatcher.submit(inputs, rows, _SHADOW_TIMEOUT_S)
        except Overloaded:  # the shadow's own batcher sheds: dropped under load, not an error
            stats.dropped += 1
            return
        except SluiceError as exc:
            stats.errors += 1
            log.debug("shadow %s of model '%s' failed: %s", variant, name, exc)
            return
        finally:
            experiment.shadow_in_flight -= 1
        stats.copies += 1
        stats.latency.record(self.clock() - started_s)
        stats.compare(primary, prediction_summary(outputs))

    async def close(self) -> None:
        """Wait for shadow copies still running (their dispatchers finish what they queued)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- guardrail -----------------------------------------------------------------------------

    def _guard(self, name: str, experiment: Experiment) -> None:
        if experiment.routing.guardrail is None or len(experiment.table.weights) < 2:
            return
        count = self._since_judged.get(name, 0) + 1
        self._since_judged[name] = count % _GUARD_EVERY
        if count < _GUARD_EVERY or name in self._rolling_back:
            return
        versions = self.version_of(name, experiment)
        primary = experiment.table.primary
        for variant, weight in experiment.table.weights.items():
            if variant == primary or weight <= 0 or variant not in versions or primary not in versions:
                continue
            evidence = experiment.judge(versions[primary], versions[variant])
            if evidence is not None:
                self._rolling_back.add(name)  # one rollback at a time
                task = asyncio.get_running_loop().create_task(self._auto_rollback(name, variant, evidence))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return

    async def _auto_rollback(self, name: str, variant: str, evidence: str) -> None:
        experiment = self._experiments.get(name)
        log.warning("guardrail: rolling back variant '%s' of model '%s': %s", variant, name, evidence)
        try:
            await self.control.change(name, lambda routing: _without(routing, variant))
        except SluiceError as exc:
            log.error("guardrail: the rollback of '%s' of model '%s' failed: %s", variant, name, exc)
            return
        finally:
            self._rolling_back.discard(name)
        if experiment is not None:
            at = datetime.now(UTC).isoformat(timespec="seconds")
            experiment.rollbacks.append({"variant": variant, "evidence": evidence, "automatic": True, "at": at})

    # -- feedback ------------------------------------------------------------------------------

    def feedback(self, name: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """Attribute an outcome (``reward``, or the true ``label``) to the version that served."""
        experiment = self.experiment(name)
        if experiment is None:
            raise ConfigError(f"model '{name}' has no routing section in model.yaml, so it takes no feedback")
        request_id, key = document.get("id"), document.get("routing_key")
        if (
            not isinstance(request_id, str | None)
            or not isinstance(key, str | None)
            or (request_id is None) == (key is None)
        ):
            raise ProtocolError("feedback needs exactly one of 'id' (a request id) or 'routing_key', as a string")
        served = experiment.served(request_id, key)
        if served is None:
            what = f"request id '{request_id}'" if request_id is not None else f"routing key '{key}'"
            raise UnknownRequest(f"model '{name}' has no remembered answer for {what}")
        reward = _reward(document, served.predicted)
        if experiment.routing.experiment.outcome == "binary" and reward not in (0.0, 1.0):
            raise ProtocolError(
                f"model '{name}' takes binary outcomes: 'reward' must be 0 or 1, got {reward:g} "
                "(set routing.experiment.outcome: continuous in model.yaml for other numbers)"
            )
        experiment.add_outcome(served.version, reward)
        if experiment.routing.mode == "thompson":
            experiment.table = experiment.table.with_weights(
                experiment.thompson_weights(self.version_of(name, experiment))
            )
        return {"model_name": name, "model_version": served.version, "outcome": reward}

    def report(self, name: str) -> dict[str, Any]:
        """The experiment's JSON document (``GET /v2/models/{m}/experiment``)."""
        experiment = self.experiment(name)
        if experiment is None:
            self.host.get(name)  # 404 for an unknown model
            raise ConfigError(f"model '{name}' has no routing section in model.yaml")
        return {"model_name": name, **experiment.to_dict(self.version_of(name, experiment))}

    # -- live changes --------------------------------------------------------------------------

    def show(self, name: str) -> dict[str, Any]:
        """The routing and labels as loaded, and the live weights."""
        config = self.host.config(name)
        if config is None:
            self.host.get(name)
            raise ModelNotFound(f"model '{name}' is not loaded")
        experiment = self.experiment(name)
        live = dict(experiment.table.weights) if experiment is not None else {}
        routing = config.routing.model_dump(mode="json") if config.routing is not None else None
        return {"model_name": name, "labels": config.labels, "routing": routing, "live_weights": live}

    async def set_routes(self, name: str, change: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``{"weights": …, "shadow": …, "sticky_key": …, "mode": …}``, persist it, show it."""
        await self.control.set_routes(name, change)
        return self.show(name)

    async def promote(self, name: str, variant: str | None) -> dict[str, Any]:
        """See :meth:`RouteControl.promote`; answers the new routing."""
        await self.control.promote(name, variant)
        return self.show(name)

    async def rollback(self, name: str) -> dict[str, Any]:
        """See :meth:`RouteControl.rollback`; answers the new routing."""
        await self.control.rollback(name)
        return self.show(name)


def _without(routing: dict[str, Any] | None, variant: str) -> dict[str, Any]:
    if routing is None:
        raise ConfigError("the model has no routing section any more")
    weights = {k: w for k, w in routing["weights"].items() if k != variant}
    return {**routing, "weights": weights or {next(iter(routing["weights"])): 100.0}}


def sticky_key(spec: str, body: bytes, headers: Mapping[str, str]) -> str | None:
    """An HTTP request's sticky key: a header (``header:NAME``) or a request parameter (``parameters.PATH``)."""
    if spec.startswith("header:"):
        return headers.get(spec.removeprefix("header:").lower())
    declared = headers.get(_HEADER_LENGTH)
    header = body[: int(declared)] if declared is not None and declared.isdigit() else body
    try:
        document = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the decoder reports the broken body
    value: Any = document
    for part in ["parameters", *spec.removeprefix("parameters.").split(".")]:
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else str(value)


def _reward(document: Mapping[str, Any], predicted: str | None) -> float:
    if ("reward" in document) == ("label" in document):
        raise ProtocolError("feedback needs exactly one of 'reward' (a number) or 'label' (the true label)")
    if "label" in document:
        if predicted is None:
            raise ProtocolError("feedback by 'label' needs a one-row request with a class output; send 'reward'")
        return 1.0 if str(document["label"]) == predicted else 0.0
    reward = document["reward"]
    if isinstance(reward, bool) or not isinstance(reward, int | float):
        raise ProtocolError(f"'reward' must be a number, got {reward!r}")
    return float(reward)
