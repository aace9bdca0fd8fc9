"""The experiment, feedback and route endpoints under ``/v2/models/{m}/``, framework-free.

The app matches the path against :data:`TRAFFIC_ROUTES`, checks the method and the bearer token
(every POST here needs it), parses the JSON body and calls :func:`traffic_endpoint`, which
answers a JSON document or raises :class:`~sluice.errors.SluiceError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluice.errors import ProtocolError
from sluice.serve.traffic import TrafficRouter

__all__ = ["TRAFFIC_ROUTES", "traffic_endpoint"]

TRAFFIC_ROUTES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("feedback",): ("POST",),
    ("experiment",): ("GET",),
    ("routes",): ("GET", "POST"),
    ("routes", "promote"): ("POST",),
    ("routes", "rollback"): ("POST",),
}
"""Path after ``/v2/models/{m}/`` → the methods it answers."""


async def traffic_endpoint(
    traffic: TrafficRouter, name: str, action: tuple[str, ...], method: str, document: Mapping[str, Any]
) -> dict[str, Any]:
    """Answer one of :data:`TRAFFIC_ROUTES` for model ``name`` with the request's JSON ``document``."""
    if action == ("feedback",):
        return traffic.feedback(name, document)
    if action == ("experiment",):
        return traffic.report(name)
    if action == ("routes",):
        return traffic.show(name) if method == "GET" else await traffic.set_routes(name, document)
    if action == ("routes", "promote"):
        variant = document.get("variant")
        if variant is not None and not isinstance(variant, str | int):
            raise ProtocolError(f"'variant' must be a version number or a label, got {variant!r}")
        return await traffic.promote(name, None if variant is None else str(variant))
    return await traffic.rollback(name)
