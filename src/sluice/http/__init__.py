"""The HTTP edge: what every Sluice ASGI app shares, and nothing that decides.

Both the inference server (:mod:`sluice.serve.app`) and the jobs API (:mod:`sluice.jobs.http`)
read requests, answer them and translate errors through here, so a body limit, a JSON error or a
:class:`~sluice.errors.SluiceError` reads the same on every route. This package knows ASGI and
HTTP only: routing decisions, predicting, authorisation and limits belong to the apps, which a
gRPC edge can call the same way. Importing it imports only the standard library.
"""

from __future__ import annotations

from sluice.http.notices import RepeatedNotices
from sluice.http.request import (
    ASGIApp,
    Message,
    Receive,
    Request,
    Scope,
    Send,
    json_limit_error,
    parse_json,
    parse_json_object,
    read_body,
)
from sluice.http.response import (
    JSON_HEADERS,
    ErrorHeaders,
    Handler,
    Response,
    answer,
    error_body,
    error_response,
    send_response,
)
from sluice.http.routing import find_mount, no_route, require_method

__all__ = [
    "JSON_HEADERS",
    "ASGIApp",
    "ErrorHeaders",
    "Handler",
    "Message",
    "Receive",
    "RepeatedNotices",
    "Request",
    "Response",
    "Scope",
    "Send",
    "answer",
    "error_body",
    "error_response",
    "find_mount",
    "json_limit_error",
    "no_route",
    "parse_json",
    "parse_json_object",
    "read_body",
    "require_method",
    "send_response",
]
