"""One inference, from request bytes to response bytes, whichever edge the request came by.

:class:`InferencePath` is the single path that decides: it refuses early under overload, routes
the request to a version (:class:`~sluice.serve.traffic.TrafficRouter`), decodes it against that
version's signature, queues it on the version's dispatcher and encodes the answer. The HTTP app
hands it the model named in the URL, the request's headers and a way to read the body; it
counts requests and failures per version for ``/metrics``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sluice.errors import ProtocolError, SluiceError
from sluice.serve.host import ModelHost, ServedVersion
from sluice.serve.protocol import HEADER_LENGTH, InferRequest, NonFinite, decode_request, encode_response
from sluice.serve.traffic import VERSION_HEADER, RouteChoice, TrafficRouter

__all__ = ["TIMEOUT_HEADER", "InferAnswer", "InferencePath"]

TIMEOUT_HEADER = "Sluice-Timeout-Ms"
"""Request header with a timeout in milliseconds (the ``timeout`` parameter takes microseconds)."""


@dataclass(frozen=True)
class InferAnswer:
    """An encoded inference response: its body and the headers that describe it."""

    body: bytes
    headers: dict[str, str]


class InferencePath:
    """Answers inference requests for ``host``'s models, routed by ``traffic``; ``non_finite`` says
    how JSON outputs carry NaN and infinity (:data:`~sluice.serve.protocol.NonFinite`)."""

    def __init__(self, host: ModelHost, traffic: TrafficRouter, *, non_finite: NonFinite = "triton") -> None:
        self.host = host
        self.traffic = traffic
        self.non_finite: NonFinite = non_finite
        self.requests: Counter[tuple[str, str]] = Counter()
        self.failures: Counter[tuple[str, str, int]] = Counter()

    async def infer(
        self,
        name: str,
        selector: str | None,
        headers: Mapping[str, str],
        read_body: Callable[[], Awaitable[bytes]],
    ) -> InferAnswer:
        """Answer one request for model ``name`` (``selector``: a version or label, None to route);
        ``headers`` are keyed in lower case. Errors raise :class:`~sluice.errors.SluiceError`."""
        choice, served, body = await self._admit(name, selector, headers, read_body)
        key = (served.name, str(served.version))
        self.requests[key] += 1
        started_s = self.traffic.clock()
        try:
            answer, decoded, outputs = await self._run(body, headers, served)
        except SluiceError as exc:
            self.failures[(*key, exc.http_status)] += 1
            self.traffic.failed(choice, served, started_s, exc.http_status)
            raise
        self.traffic.answered(choice, served, decoded.id, decoded.inputs, outputs, started_s)
        return answer

    async def _admit(
        self,
        name: str,
        selector: str | None,
        headers: Mapping[str, str],
        read_body: Callable[[], Awaitable[bytes]],
    ) -> tuple[RouteChoice, ServedVersion, bytes]:
        key = ("", "")
        try:
            admitting = self.host.get(name, selector)
            key = (admitting.name, str(admitting.version))
            # a version that would shed even a one-row request refuses before the body is
            # read, the cheapest answer under overload (a routed request's version is known
            # only from its body)
            if selector is not None or self.traffic.experiment(name) is None:
                admitting.dispatcher.refuse_early(timeout_s(headers, None))
            body = await read_body()
            # resolved again after the last await: a version swapped out meanwhile is closing,
            # and from here to the dispatcher's queue nothing yields to the loop
            choice = self.traffic.choose(name, selector, body, headers)
            return choice, self.host.get(name, choice.selector), body
        except SluiceError as exc:
            self.failures[(*key, exc.http_status)] += 1
            raise

    async def _run(
        self, body: bytes, headers: Mapping[str, str], served: ServedVersion
    ) -> tuple[InferAnswer, InferRequest, dict[str, Any]]:
        decoded = decode_request(
            body,
            header_length(headers),
            served.signature,
            model_name=served.name,
            max_batch_size=served.max_batch_size,
        )
        timeout = timeout_s(headers, decoded.timeout_us)
        outputs = await served.dispatcher.submit(
            decoded.inputs, decoded.batch_size, timeout, checked_against=served.signature
        )
        payload, answer_headers = encode_response(
            served.name,
            served.version,
            decoded.id,
            outputs,
            decoded.outputs,
            decoded.binary_data_output,
            self.non_finite,
        )
        answer_headers[VERSION_HEADER] = str(served.version)
        return InferAnswer(payload, answer_headers), decoded, outputs


def header_length(headers: Mapping[str, str]) -> int | None:
    """The binary extension's JSON header length, if the request has one."""
    value = headers.get(HEADER_LENGTH.lower())
    if value is None:
        return None
    if not value.isdigit():
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}")
    return int(value)


def timeout_s(headers: Mapping[str, str], timeout_us: int | None) -> float | None:
    """The request's timeout in seconds: :data:`TIMEOUT_HEADER`, else the ``timeout`` parameter."""
    value = headers.get(TIMEOUT_HEADER.lower())
    if value is not None:
        try:
            timeout_ms = float(value)
        except ValueError:
            raise ProtocolError(f"{TIMEOUT_HEADER} must be a number of milliseconds, got {value!r}") from None
        if not math.isfinite(timeout_ms) or timeout_ms <= 0:
            raise ProtocolError(f"{TIMEOUT_HEADER} must be a positive number of milliseconds, got {value!r}")
        return timeout_ms / 1000
    return timeout_us / 1e6 if timeout_us else None  # 0 means none, as in Triton
