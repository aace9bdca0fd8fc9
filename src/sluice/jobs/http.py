"""The jobs REST API, an ASGI app that ``sluice serve --jobs`` mounts at ``/v1/jobs``.

``POST /v1/jobs`` (body: the job spec as JSON) → 201 and the job's status;
``GET /v1/jobs[?state=RUNNING&limit=50]`` → ``{"jobs": [...]}``; ``GET /v1/jobs/{id}`` → its
status; ``POST /v1/jobs/{id}:cancel`` and ``POST /v1/jobs/{id}:resume`` → its status;
``GET /v1/jobs/{id}/events[?after=N]`` → ``{"events": [...]}``. Errors are
``{"error": message}`` with the error's HTTP status (400 bad spec, 404 unknown job, 409 a
state that does not allow the request). The host app checks the bearer token first.
Store calls run in a thread, so a slow submit (it loads the model) never blocks the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs

from sluice.errors import ConfigError, SluiceError
from sluice.jobs.api import list_jobs, plan_request
from sluice.jobs.model import JobRequest
from sluice.jobs.store import JobStore

__all__ = ["PREFIX", "JobsApi"]

log = logging.getLogger(__name__)

PREFIX = "/v1/jobs"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _HttpError(SluiceError):
    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


class JobsApi:
    """ASGI app over a :class:`~sluice.jobs.store.JobStore`; mount it at :data:`PREFIX`."""

    def __init__(self, store: JobStore, *, max_body_bytes: int = 1 << 20) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, document = await self._route(scope, receive)
        except SluiceError as exc:
            status, document = exc.http_status, {"error": str(exc)}
        except Exception as exc:
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            status, document = 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}
        body = json.dumps(document, separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        method, path = scope["method"], scope["path"]
        rest = path[len(PREFIX) :].strip("/")
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        if not rest:
            if method == "POST":
                return 201, await self._submit(receive)
            _allow(method, "GET", path)
            return 200, {"jobs": await self._list(query)}
        job_id, _, action = rest.partition(":")
        if "/" in job_id:
            job_id, _, sub = job_id.partition("/")
            if sub != "events" or action:
                raise _HttpError(f"no route for {method} {path}", 404)
            _allow(method, "GET", path)
            after = _int(query.get("after", "0"), "after")
            events = await asyncio.to_thread(self.store.events, job_id, after)
            return 200, {"events": [{"id": n, **asdict(e)} for n, e in events]}
        if not action:
            _allow(method, "GET", path)
            return 200, (await asyncio.to_thread(self.store.status, job_id)).to_dict()
        _allow(method, "POST", path)
        if action == "cancel":
            return 200, (await asyncio.to_thread(self.store.cancel, job_id)).to_dict()
        if action == "resume":
            return 200, (await asyncio.to_thread(self.store.resume, job_id)).to_dict()
        raise _HttpError(f"unknown action {action!r} on a job; use :cancel or :resume", 404)

    async def _submit(self, receive: Receive) -> dict[str, Any]:
        body = await self._body(receive)
        try:
            document = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"the request body is not valid JSON: {exc}") from None
        request = JobRequest.parse(document, "job spec")

        def create() -> dict[str, Any]:
            job = plan_request(request)
            self.store.create_job(job)
            return self.store.status(job.id).to_dict()

        return await asyncio.to_thread(create)

    async def _list(self, query: dict[str, str]) -> list[dict[str, Any]]:
        limit = _int(query.get("limit", "100"), "limit")
        statuses = await asyncio.to_thread(list_jobs, query.get("state"), limit=limit, store=self.store)
        return [s.to_dict() for s in statuses]

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _HttpError("the client disconnected before sending the whole body", 400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _HttpError(f"request body exceeds the limit of {self.max_body_bytes} bytes", 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _allow(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise _HttpError(f"method {method} not allowed on {path}; use {allowed}", 405)


def _int(value: str, name: str) -> int:
    if not value.isdigit():
        raise ConfigError(f"query parameter {name} must be a non-negative integer, found {value!r}")
    return int(value)
