"""The jobs REST API, an ASGI app that ``sluice serve --jobs`` mounts at ``/v1/jobs``.

``POST /v1/jobs`` (body: the job spec as JSON) → 201 and the job's status;
``GET /v1/jobs[?state=RUNNING&limit=50]`` → ``{"jobs": [...]}``; ``GET /v1/jobs/{id}`` → its
status; ``POST /v1/jobs/{id}:cancel`` and ``POST /v1/jobs/{id}:resume`` → its status;
``GET /v1/jobs/{id}/events[?after=N]`` → ``{"events": [...]}``. Errors are
``{"error": message}`` with the error's HTTP status (400 bad spec, 403 a spec the operator's
:class:`~sluice.jobs.policy.SubmitPolicy` does not allow, 404 unknown job, 409 a state that does
not allow the request, 413 a body over the limit), answered by the HTTP edge
(:mod:`sluice.http`). The host app checks the bearer token first; the policy is checked before
the spec's model is loaded or its input listed.
Store calls run in a thread, so a slow submit (it loads the model) never blocks the loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from sluice.errors import ConfigError, HttpError
from sluice.http import (
    Receive,
    Request,
    Response,
    Scope,
    Send,
    answer,
    no_route,
    read_body,
    require_method,
    send_response,
)
from sluice.http.request import parse_json
from sluice.jobs.api import list_jobs, plan_request
from sluice.jobs.model import JobRequest
from sluice.jobs.policy import SubmitPolicy
from sluice.jobs.protocol import JobStore

__all__ = ["PREFIX", "JobsApi"]

PREFIX = "/v1/jobs"


class JobsApi:
    """ASGI app over a :class:`~sluice.jobs.store.JobStore`; mount it at :data:`PREFIX`.

    ``policy`` limits what a submitted job may ask for; without one, the default repository
    serves the models and, with no data roots, every submission is refused.
    """

    def __init__(self, store: JobStore, *, max_body_bytes: int = 1 << 20, policy: SubmitPolicy | None = None) -> None:
        from sluice.models.loader import default_repository

        self.store = store
        self.max_body_bytes = max_body_bytes
        self.policy = policy or SubmitPolicy(default_repository())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send_response(send, await answer(Request.from_scope(scope, receive), self._route))

    async def _route(self, request: Request) -> Response:
        rest = request.path[len(PREFIX) :].strip("/")
        if not rest:
            if request.method == "POST":
                return Response.json(await self._submit(request), 201)
            require_method(request, "GET")
            return Response.json({"jobs": await self._list(request.query)})
        job_id, _, action = rest.partition(":")
        if "/" in job_id:
            job_id, _, sub = job_id.partition("/")
            if sub != "events" or action:
                raise no_route(request)
            require_method(request, "GET")
            return Response.json({"events": await self._events(job_id, request.query)})
        if not action:
            require_method(request, "GET")
            return Response.json((await asyncio.to_thread(self.store.status, job_id)).to_dict())
        require_method(request, "POST")
        if action == "cancel":
            return Response.json((await asyncio.to_thread(self.store.cancel, job_id)).to_dict())
        if action == "resume":
            return Response.json((await asyncio.to_thread(self.store.resume, job_id)).to_dict())
        raise HttpError(f"unknown action {action!r} on a job; use :cancel or :resume", 404)

    async def _submit(self, request: Request) -> dict[str, Any]:
        job_request = JobRequest.parse(parse_json(await read_body(request, self.max_body_bytes)), "job spec")
        job_request = self.policy.check(job_request)

        def create() -> dict[str, Any]:
            job = plan_request(job_request)
            self.store.create_job(job)
            return self.store.status(job.id).to_dict()

        return await asyncio.to_thread(create)

    async def _list(self, query: dict[str, str]) -> list[dict[str, Any]]:
        limit = _int(query.get("limit", "100"), "limit")
        statuses = await asyncio.to_thread(list_jobs, query.get("state"), limit=limit, store=self.store)
        return [s.to_dict() for s in statuses]

    async def _events(self, job_id: str, query: dict[str, str]) -> list[dict[str, Any]]:
        after = _int(query.get("after", "0"), "after")
        events = await asyncio.to_thread(self.store.events, job_id, after)
        return [{"id": n, **asdict(e)} for n, e in events]


def _int(value: str, name: str) -> int:
    if not value.isdigit():
        raise ConfigError(f"query parameter {name} must be a non-negative integer, found {value!r}")
    return int(value)
