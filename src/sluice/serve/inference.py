"""One inference, from request bytes to response bytes, whichever edge the request came by.

:class:`InferencePath` is the single path that decides: it refuses early under overload, routes
the request to a version (:class:`~sluice.serve.traffic.TrafficRouter`), decodes it against that
version's signature, queues it on the version's dispatcher and encodes the answer; it counts
requests and failures per version for ``/metrics``. Each edge (the HTTP app, the gRPC service)
hands it the model named in the request and an :class:`InferCall` that reads, decodes and
encodes in that edge's terms.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sluice.errors import HttpError, ProtocolError, SluiceError
from sluice.serve.experiment import Experiment
from sluice.serve.host import ModelHost, ServedVersion
from sluice.serve.protocol import HEADER_LENGTH, InferRequest, NonFinite, decode_request, encode_response
from sluice.serve.traffic import VERSION_HEADER, RouteChoice, TrafficRouter, sticky_key

__all__ = ["CLIENT_GONE", "TIMEOUT_HEADER", "ClientWatch", "InferAnswer", "InferCall", "InferencePath"]

TIMEOUT_HEADER = "Sluice-Timeout-Ms"
"""Request header with a timeout in milliseconds (the ``timeout`` parameter takes microseconds)."""

Answer = TypeVar("Answer", covariant=True)

CLIENT_GONE = 499
"""The status recorded for a request whose HTTP client hung up before its answer (nginx's)."""


@dataclass(frozen=True)
class InferAnswer:
    """An encoded inference response: its body and the headers that describe it."""

    body: bytes
    headers: dict[str, str]


class InferCall(Protocol[Answer]):
    """What an edge hands :class:`InferencePath` for one request: how to read, route, decode and answer it.

    The HTTP app and the gRPC service each translate their request into one of these; the
    path decides everything else (admission, routing, the queue, counting), once for both.
    Timeouts count from the request's arrival, when the edge made the call.
    """

    def early_timeout_s(self) -> float | None:
        """The timeout known before the request is read (a header or the call's deadline)."""

    async def read(self) -> None:
        """Read the request's payload (the HTTP body; nothing on gRPC, which has it already)."""

    def sticky_key(self, spec: str) -> str | None:
        """The value an experiment's ``sticky_key`` names (``header:NAME`` or ``parameters.PATH``)."""

    def decode(self, served: ServedVersion) -> InferRequest:
        """Decode and check the request against the version it was routed to."""

    def timeout_s(self, decoded: InferRequest) -> float | None:
        """The request's timeout once decoded."""

    def encode(self, served: ServedVersion, decoded: InferRequest, outputs: Mapping[str, Any]) -> Answer:
        """The edge's answer for ``outputs``."""

    def watch_client(self) -> ClientWatch | None:
        """Start watching for the client to go away while the request waits behind others
        (None: the edge cancels the request itself, as gRPC does)."""


class ClientWatch(Protocol):
    """Watches one waiting request's client; cancels the request's task when the client leaves."""

    gone: bool

    def stop(self) -> None:
        """Stop watching (the answer is ready)."""


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
        receive: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> InferAnswer:
        """Answer one HTTP request for model ``name`` (``selector``: a version or label, None to route);
        ``headers`` are keyed in lower case. With the ASGI ``receive``, a client that hangs up
        while its request waits takes it out of the queue (:data:`CLIENT_GONE`). Errors raise
        :class:`~sluice.errors.SluiceError`."""
        return await self.run(name, selector, _HttpCall(headers, read_body, receive, self.non_finite))

    async def run(self, name: str, selector: str | None, call: InferCall[Answer]) -> Answer:
        """Answer one request of any edge; errors raise :class:`~sluice.errors.SluiceError`.

        The request's time on the server counts from this call: the latency target and its
        timeout are budgets of its whole stay, not of its time in the queue alone.
        """
        arrived_s = self.traffic.clock()
        choice, served = await self._admit(name, selector, call, arrived_s)
        key = (served.name, str(served.version))
        self.requests[key] += 1
        started_s = self.traffic.clock()
        try:
            decoded = call.decode(served)
            outputs = await self._wait(served, decoded, call, arrived_s)
            answer = call.encode(served, decoded, outputs)
        except SluiceError as exc:
            self.failures[(*key, exc.http_status)] += 1
            self.traffic.failed(choice, served, started_s, exc.http_status)
            raise
        self.traffic.answered(choice, served, decoded.id, decoded.inputs, outputs, started_s)
        return answer

    async def _wait(
        self, served: ServedVersion, decoded: InferRequest, call: InferCall[Answer], arrived_s: float
    ) -> dict[str, Any]:
        watches: list[ClientWatch] = []

        def watch() -> None:
            started = call.watch_client()
            if started is not None:
                watches.append(started)

        try:
            return await served.dispatcher.submit(
                decoded.inputs,
                decoded.batch_size,
                call.timeout_s(decoded),
                checked_against=served.signature,
                on_queued=watch,
                waited_s=self.traffic.clock() - arrived_s,
            )
        except asyncio.CancelledError:
            if not watches or not watches[0].gone:
                raise
            # the watch cancelled the wait; the task itself goes on to answer nobody, quietly
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise HttpError("the client closed the connection before the answer", CLIENT_GONE) from None
        finally:
            for started in watches:
                started.stop()

    async def _admit(
        self, name: str, selector: str | None, call: InferCall[Answer], arrived_s: float
    ) -> tuple[RouteChoice, ServedVersion]:
        key = ("", "")
        try:
            admitting = self.host.get(name, selector)
            key = (admitting.name, str(admitting.version))
            # a version that would shed even a one-row request refuses before the body is
            # read, the cheapest answer under overload; a routed request's version is known
            # only from its body, so it is refused then only when every variant would refuse
            waited_s = self.traffic.clock() - arrived_s
            experiment = None if selector is not None else self.traffic.experiment(name)
            if experiment is None:
                admitting.dispatcher.refuse_early(call.early_timeout_s(), waited_s=waited_s)
            else:
                self._refuse_routed_early(name, experiment, call.early_timeout_s(), waited_s)
            await call.read()
            # resolved again after the last await: a version swapped out meanwhile is closing,
            # and from here to the dispatcher's queue nothing yields to the loop
            choice = self.traffic.choose_by(name, selector, call.sticky_key)
            return choice, self.host.get(name, choice.selector)
        except SluiceError as exc:
            self.failures[(*key, exc.http_status)] += 1
            raise

    def _refuse_routed_early(self, name: str, experiment: Experiment, timeout_s: float | None, waited_s: float) -> None:
        refusals: list[tuple[ServedVersion, SluiceError]] = []
        for variant, weight in experiment.table.weights.items():
            if weight <= 0:
                continue
            try:
                served = self.host.get(name, variant)
            except SluiceError:
                continue  # not served (yet): routing decides what to do with it
            error = served.dispatcher.refusal(timeout_s, waited_s=waited_s)
            if error is None:
                return
            refusals.append((served, error))
        if refusals:  # counted once, on the variant that comes first in the routing table
            served, error = refusals[0]
            served.dispatcher.count_refusal(error)
            raise error


class _HttpCall:
    """An HTTP request: OIP JSON, or a JSON header followed by binary tensors."""

    __slots__ = ("body", "headers", "non_finite", "read_body", "receive")

    def __init__(
        self,
        headers: Mapping[str, str],
        read_body: Callable[[], Awaitable[bytes]],
        receive: Callable[[], Awaitable[Mapping[str, Any]]] | None,
        non_finite: NonFinite,
    ) -> None:
        self.headers = headers
        self.read_body = read_body
        self.receive = receive
        self.non_finite: NonFinite = non_finite
        self.body = b""

    def watch_client(self) -> ClientWatch | None:
        task = asyncio.current_task()
        if self.receive is None or task is None:
            return None
        return _DisconnectWatch(self.receive, task)

    def early_timeout_s(self) -> float | None:
        return timeout_s(self.headers, None)

    async def read(self) -> None:
        self.body = await self.read_body()

    def sticky_key(self, spec: str) -> str | None:
        return sticky_key(spec, self.body, self.headers)

    def decode(self, served: ServedVersion) -> InferRequest:
        return decode_request(
            self.body,
            header_length(self.headers),
            served.signature,
            model_name=served.name,
            max_batch_size=served.max_batch_size,
        )

    def timeout_s(self, decoded: InferRequest) -> float | None:
        return timeout_s(self.headers, decoded.timeout_us)

    def encode(self, served: ServedVersion, decoded: InferRequest, outputs: Mapping[str, Any]) -> InferAnswer:
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
        return InferAnswer(payload, answer_headers)


class _DisconnectWatch:
    """Once the body is read, the ASGI server's next message is ``http.disconnect`` when the
    client hangs up (or when the answer is sent, by which time the watch has stopped)."""

    __slots__ = ("_task", "_watcher", "gone")

    def __init__(self, receive: Callable[[], Awaitable[Mapping[str, Any]]], task: asyncio.Task[Any]) -> None:
        self.gone = False
        self._task = task
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> None:
        try:
            message = await receive()
        except Exception:  # noqa: BLE001 — an ASGI server with nothing more to say: nothing to watch
            return
        if message.get("type") == "http.disconnect":
            self.gone = True
            self._task.cancel()

    def stop(self) -> None:
        self._watcher.cancel()


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
