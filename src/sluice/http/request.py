"""The request side of the HTTP edge: ASGI types, the parsed request, its body and its JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sluice.errors import HttpError, LimitExceeded, ProtocolError

__all__ = [
    "ASGIApp",
    "Message",
    "Receive",
    "Request",
    "Scope",
    "Send",
    "json_limit_error",
    "parse_json",
    "parse_json_object",
    "read_body",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(slots=True)  # not frozen: a frozen dataclass costs a setattr call per field, per request
class Request:
    """One HTTP request as the apps see it; the body is read on demand with :func:`read_body`.

    ``parts`` are the path's non-empty segments, ``headers`` are keyed in lower case, and
    ``query`` keeps the last value of each query parameter.
    """

    method: str
    path: str
    parts: list[str]
    headers: dict[str, str]
    query: dict[str, str]
    receive: Receive

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> Request:
        """The request of an ASGI ``http`` scope."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query_string = scope.get("query_string", b"")
        # most requests have no query: skip the parser on the inference hot path
        query = {k: v[-1] for k, v in parse_qs(query_string.decode("latin-1")).items()} if query_string else {}
        path = scope["path"]
        return cls(scope["method"], path, [p for p in path.split("/") if p], headers, query, receive)

    @property
    def route(self) -> str:
        """The path as routing reads it: ``/`` and the segments, empty ones dropped."""
        return "/" + "/".join(self.parts)


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The whole body; 413 before reading when ``Content-Length`` is over the limit, or as soon as
    the bytes received pass it; 400 when the client disconnects first."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError(f"invalid Content-Length {declared!r}")
        if int(declared) > max_body_bytes:
            raise _too_large(int(declared), max_body_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise HttpError("the client disconnected before sending the whole body", 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body_bytes:
            raise _too_large(size, max_body_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(size: int, max_body_bytes: int) -> HttpError:
    return HttpError(f"request body of {size} bytes exceeds the limit of {max_body_bytes} bytes", 413)


def parse_json(body: bytes, *, invalid: str = "the request body is not valid JSON") -> Any:
    """The JSON document in ``body`` (an empty body is ``null``); :class:`~sluice.errors.ProtocolError`
    starting with ``invalid`` and naming the parser's complaint otherwise."""
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{invalid}: {exc}") from None
    except (RecursionError, ValueError) as exc:
        raise json_limit_error(exc, invalid) from None


def json_limit_error(exc: RecursionError | ValueError, invalid: str) -> ProtocolError:
    """The 400 for a JSON document Python's parser gives up on without a syntax error: nesting
    deeper than the interpreter's recursion limit, or an integer longer than its digit limit.
    Catching these only after a failed parse keeps every good request free of any depth check."""
    if isinstance(exc, RecursionError):
        levels = sys.getrecursionlimit()
        message = f"{invalid}: arrays or objects are nested too deeply (the server parses fewer than {levels} levels)"
        return LimitExceeded(message, "JSON nested too deeply")
    if "integer string conversion" in str(exc):
        digits = sys.get_int_max_str_digits()
        return LimitExceeded(f"{invalid}: a number has more than {digits} digits", "JSON number too long")
    return ProtocolError(f"{invalid}: {exc}")


def parse_json_object(body: bytes, *, invalid: str = "the request body is not valid JSON") -> dict[str, Any]:
    """The JSON object in ``body``; an empty or blank body is ``{}``, any other document is refused."""
    if not body.strip():
        return {}
    document = parse_json(body, invalid=invalid)
    if not isinstance(document, dict):
        raise ProtocolError("the request JSON must be an object")
    return document
