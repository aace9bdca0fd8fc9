"""The answer side of the HTTP edge: responses, sending them, and errors translated to answers.

Every :class:`~sluice.errors.SluiceError` becomes ``{"error": message}`` with the error's
``http_status`` and, for an :class:`~sluice.errors.HttpError`, its headers; anything else is a
500 that names the exception, and is logged with its traceback (with
:class:`~sluice.http.RepeatedNotices`: the first of each kind, the rest as a count).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from sluice.errors import HttpError, LimitExceeded, SluiceError
from sluice.http.notices import RepeatedNotices
from sluice.http.request import Request, Send

__all__ = [
    "JSON_HEADERS",
    "ErrorHeaders",
    "Handler",
    "Response",
    "answer",
    "error_body",
    "error_response",
    "send_response",
]

log = logging.getLogger(__name__)

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}

ErrorHeaders = Callable[[SluiceError], Mapping[str, str]]
"""Extra headers an app adds to the answer for an error (e.g. ``Retry-After`` when shedding)."""


@dataclass
class Response:
    """What a handler answers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, document: object, status: int = 200) -> Response:
        """``document`` as compact JSON."""
        return cls(status, json.dumps(document, separators=(",", ":")).encode("utf-8"), dict(JSON_HEADERS))


Handler = Callable[[Request], Awaitable[Response]]


def error_body(message: str) -> bytes:
    """An error response body: ``{"error": message}``."""
    return json.dumps({"error": message}).encode("utf-8")


def error_response(exc: SluiceError, extra_headers: Mapping[str, str] | None = None) -> Response:
    """The answer for ``exc``: its status, ``{"error": message}``, and the headers it needs."""
    headers = {**JSON_HEADERS, **(extra_headers or {})}
    if isinstance(exc, HttpError):
        headers.update(exc.headers)
    return Response(exc.http_status, error_body(str(exc)), headers)


async def answer(
    request: Request,
    handler: Handler,
    error_headers: ErrorHeaders | None = None,
    notices: RepeatedNotices | None = None,
) -> Response:
    """``handler``'s answer to ``request``, with every error translated to its response.

    With ``notices``, a request refused for passing a limit and an internal error are logged as
    the first of their kind and then counted; without, each internal error logs its traceback.
    """
    try:
        return await handler(request)
    except SluiceError as exc:
        if notices is not None and isinstance(exc, LimitExceeded):
            notices.note(exc.kind, f"refused {request.method} {request.path}: {exc}")
        return error_response(exc, error_headers(exc) if error_headers is not None else None)
    except Exception as exc:
        if notices is None:
            log.exception("internal error on %s %s", request.method, request.path)
        else:
            kind = f"internal error {type(exc).__name__}"
            notices.note(kind, f"internal error on {request.method} {request.path}", exc_info=exc)
        return Response(500, error_body(f"internal error: {type(exc).__name__}: {exc}"), dict(JSON_HEADERS))


async def send_response(send: Send, response: Response) -> None:
    """Send ``response`` with its ``Content-Length``."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
