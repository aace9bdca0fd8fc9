"""Live changes to a model's routing: validated, written to ``model.yaml`` atomically, then loaded.

:class:`RouteControl` serialises changes per model; each one reads ``model.yaml`` as it is on
disk, builds the new settings, validates them (unknown versions or labels are refused), writes
them through a temporary file renamed into place, and asks the host to load the model, so that
any variant not yet served loads and warms up before routing (which follows the loaded config)
sends it a request. Requests in flight finish on the versions they were routed to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from sluice.configfile import format_validation_error
from sluice.errors import ConfigError, ModelNotFound, ProtocolError
from sluice.models.config import ModelConfig
from sluice.models.repository import write_config
from sluice.serve.host import ModelHost

__all__ = ["RouteControl"]

log = logging.getLogger(__name__)

_FIELDS = ("weights", "shadow", "sticky_key", "mode")


class RouteControl:
    """Changes the routing of ``host``'s models; see the module docstring."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host
        self._locks: dict[str, asyncio.Lock] = {}

    async def set_routes(self, name: str, change: Mapping[str, Any]) -> None:
        """Apply ``{"weights": …, "shadow": …, "sticky_key": …, "mode": …}`` and persist it."""
        unknown = sorted(set(change) - set(_FIELDS))
        if unknown:
            raise ProtocolError(
                f"unknown routing field(s) {', '.join(unknown)}; expected weights, shadow, sticky_key, mode"
            )

        def update(routing: dict[str, Any] | None) -> dict[str, Any]:
            if routing is None and "weights" not in change:
                raise ConfigError(f"model '{name}' has no routing yet: give weights")
            merged = {**(routing or {}), **change}
            if isinstance(merged.get("shadow"), dict):  # a fraction of 0 ends a shadow
                merged["shadow"] = {k: f for k, f in merged["shadow"].items() if f != 0}
            return merged

        await self.change(name, update)

    async def promote(self, name: str, variant: str | None) -> None:
        """Make ``variant`` (default: the only candidate) the stable version and give it all traffic;
        the version it replaces is kept as the label ``previous`` for :meth:`rollback`."""

        def build(config: ModelConfig) -> dict[str, Any]:
            if config.routing is None:
                raise ConfigError(f"model '{name}' has no routing section in model.yaml: nothing to promote")
            candidates = [v for v in config.routing.weights if v != config.routing.primary]
            chosen = variant
            if chosen is None:
                if len(candidates) != 1:
                    raise ConfigError(f"model '{name}' has candidates {candidates or 'none'}: name the one to promote")
                chosen = candidates[0]
            version = self.host.get(name, chosen).version
            labels = {**config.labels, "stable": version}
            if "stable" in config.labels and config.labels["stable"] != version:
                labels["previous"] = config.labels["stable"]
            routing = {**config.routing.model_dump(), "weights": {"stable": 100.0}}
            routing["shadow"] = {k: f for k, f in routing["shadow"].items() if k not in ("stable", str(version))}
            return {**config.model_dump(), "labels": labels, "routing": routing}

        await self._apply(name, build)

    async def rollback(self, name: str) -> None:
        """End a canary: every request to the primary again. Without one (after a promotion),
        restore the ``previous`` label as ``stable``."""

        def build(config: ModelConfig) -> dict[str, Any]:
            routing = config.routing
            if routing is None:
                raise ConfigError(f"model '{name}' has no routing section in model.yaml: nothing to roll back")
            document = config.model_dump()
            if sum(1 for w in routing.weights.values() if w > 0) > 1:
                document["routing"]["weights"] = {routing.primary: 100.0}
            elif "previous" in config.labels:
                labels = dict(config.labels)
                labels["stable"] = labels.pop("previous")
                document["labels"] = labels
            else:
                raise ConfigError(f"model '{name}' has no canary taking traffic and no 'previous' label to restore")
            return document

        await self._apply(name, build)

    async def change(self, name: str, update: Callable[[dict[str, Any] | None], dict[str, Any]]) -> None:
        """Apply ``update`` to the routing section of model.yaml as it is on disk; see :meth:`_apply`."""

        def build(config: ModelConfig) -> dict[str, Any]:
            routing = config.routing.model_dump() if config.routing is not None else None
            return {**config.model_dump(), "routing": update(routing)}

        await self._apply(name, build)

    async def _apply(self, name: str, build: Callable[[ModelConfig], dict[str, Any]]) -> None:
        # one change at a time per model: read model.yaml, build, validate, write it atomically,
        # then load, so that new variants warm up before routing (which follows the loaded config)
        # sends them a request
        if name not in self.host.repository.names():
            raise ModelNotFound(f"no model named '{name}' in repository {self.host.repository.root}")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            try:
                config = ModelConfig.model_validate(build(self.host.repository.config(name)))
            except ValidationError as exc:
                raise ConfigError(f"model '{name}': {format_validation_error(exc)}") from None
            self._check_variants(name, config)
            path = self.host.repository.model_dir(name) / "model.yaml"
            await asyncio.to_thread(write_config, path, config)
            await self.host.load(name)
        routing = config.routing.model_dump(mode="json") if config.routing else None
        log.info("routing of model '%s' is now %s; labels %s", name, routing, config.labels)

    def _check_variants(self, name: str, config: ModelConfig) -> None:
        if config.routing is None:
            return
        on_disk = self.host.repository.versions(name)
        for variant in [*config.routing.weights, *config.routing.shadow]:
            if variant.isdigit() and int(variant) not in on_disk:
                raise ConfigError(f"model '{name}' has no version {variant}; versions: {on_disk}")
            if not variant.isdigit() and variant not in config.labels:
                labels = sorted(config.labels) or "none"
                raise ConfigError(f"model '{name}' has no label '{variant}'; labels: {labels}")
