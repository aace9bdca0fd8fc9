"""Routing helpers of the HTTP edge: the 404 and 405 answers, and prefix mounts."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.errors import HttpError
from sluice.http.request import ASGIApp, Request

__all__ = ["find_mount", "no_route", "require_method"]


def no_route(request: Request) -> HttpError:
    """The 404 for a path no route matches (raise it)."""
    return HttpError(f"no route for {request.method} {request.route}", 404)


def require_method(request: Request, *allowed: str) -> None:
    """405 unless the request's method is one of ``allowed`` (the message suggests the first)."""
    if request.method not in allowed:
        raise HttpError(f"method {request.method} not allowed on {request.route}; use {allowed[0]}", 405)


def find_mount(mounts: Mapping[str, ASGIApp], path: str) -> ASGIApp | None:
    """The app mounted at the prefix ``path`` falls under (``/v1/jobs`` takes ``/v1/jobs/…``), if any."""
    for prefix, app in mounts.items():
        if path == prefix or path.startswith(prefix + "/"):
            return app
    return None
