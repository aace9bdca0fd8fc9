"""The one exception tree of Sluice.

Every error a user can cause derives from :class:`SluiceError`. Each class knows the
CLI exit code and the HTTP status it maps to, so the edges (the CLI and the server)
translate errors without guessing; nothing else catches broadly.
"""

from __future__ import annotations

__all__ = [
    "BindError",
    "ConfigError",
    "DataError",
    "EngineError",
    "ErrorFractionExceeded",
    "HttpError",
    "Interrupted",
    "JobNotFound",
    "JobStateError",
    "LimitExceeded",
    "MissingDependency",
    "ModelError",
    "ModelLoadError",
    "ModelNotFound",
    "ModelOutOfMemory",
    "NotPermitted",
    "OutputConflict",
    "OutputError",
    "OutputInUse",
    "Overloaded",
    "PredictError",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "SluiceError",
    "StoreError",
    "TrainError",
    "UnknownRequest",
    "UnsafeModelError",
]


class SluiceError(Exception):
    """Base class: a problem the user can act on, with a message that says how.

    A message that tells the user to set a parameter names it as the Python API and job specs
    spell it, in backquotes (`` `features` ``, `` `overwrite=True` ``), and lists it in
    ``params``; an edge with its own spelling (the CLI's flags) rewrites exactly those names.
    """

    exit_code: int = 2
    http_status: int = 400
    params: tuple[str, ...] = ()
    """The parameters (fields) the message names, e.g. ``("features", "key_column")``."""

    def __init__(self, *args: object, params: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        if params:
            self.params = params

    def __reduce__(self) -> tuple[object, ...]:
        # errors cross process boundaries (worker processes, Ray, Spark); rebuilding from ``args``
        # alone would call subclass constructors with the wrong arguments and drop ``params``
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[SluiceError], args: tuple[object, ...], state: dict[str, object]) -> SluiceError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(SluiceError):
    """A job spec, option or configuration file is invalid."""


class MissingDependency(SluiceError):
    """An optional engine is not installed; the message carries the install hint."""

    exit_code = 2
    http_status = 500

    def __init__(self, package: str, extra: str, purpose: str, params: tuple[str, ...] = ()) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed. "
            f"Install it from the Sluice checkout with: make install-{extra} "
            f"(or .venv/bin/pip install -e '.[{extra}]')",
            params=params,
        )
        self.package = package
        self.extra = extra


class ModelError(SluiceError):
    """Base class for problems with a model."""


class ModelNotFound(ModelError):
    """A model reference names nothing in the repository or on disk."""

    http_status = 404


class ModelLoadError(ModelError):
    """A model artifact exists but cannot be loaded."""


class UnsafeModelError(ModelError):
    """Loading the artifact would execute arbitrary code and the user has not allowed it."""


class BindError(ModelError):
    """Columns do not match the model's signature (missing column, wrong dtype or width)."""


class PredictError(ModelError):
    """The model failed on a batch or returned something that breaks its signature."""

    exit_code = 1
    http_status = 500


class ModelOutOfMemory(PredictError):
    """The model ran out of memory (a CUDA out-of-memory) on a batch: a smaller batch may fit.

    The batch engine halves the batch and retries it rather than treating its records as bad.
    """


class DataError(SluiceError):
    """Input data is unusable as a whole (missing file, unreadable format, missing column)."""


class EngineError(SluiceError):
    """The cluster engine (Spark, Ray) failed outside Sluice's code: a worker died, a task
    failed after the engine's own retries, or the engine could not start."""

    exit_code = 1
    http_status = 500


class OutputConflict(SluiceError):
    """The output location holds results of a different job."""


class OutputInUse(OutputConflict):
    """Another run is writing the same output location now; retry once it has ended (HTTP 409)."""

    exit_code = 4
    http_status = 409


class OutputError(SluiceError):
    """The output location cannot be written: read-only, a file, inside a file, or the disk is full."""

    http_status = 500


class ErrorFractionExceeded(SluiceError):
    """More records failed than the job allows; ``summary`` holds the run's figures."""

    exit_code = 3

    def __init__(self, message: str, summary: object = None, params: tuple[str, ...] = ()) -> None:
        super().__init__(message, params=params)
        self.summary = summary


class TrainError(SluiceError):
    """Training failed on a rank (an exception there, or the process died)."""

    exit_code = 1
    http_status = 500


class ProtocolError(SluiceError):
    """A request breaks the protocol or the model's signature (HTTP 400)."""

    http_status = 400


class LimitExceeded(ProtocolError):
    """A request passes a limit of the parser or the server (JSON nested too deeply, a number with
    too many digits) (HTTP 400). ``kind`` names the limit: the server logs the first request of each
    kind and counts the rest, so a flood of them cannot flood the log."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class HttpError(SluiceError):
    """An HTTP-level refusal (400 for a client gone mid-body, 401, 404 for an unknown route, 405,
    413), with its status and any headers the answer needs (e.g. ``WWW-Authenticate``). The one
    such type: every app's edge (:mod:`sluice.http`) raises and answers it."""

    def __init__(self, message: str, http_status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.headers = headers or {}


class Overloaded(SluiceError):
    """The server cannot take the request now; retry after ``retry_after_s`` seconds.

    The HTTP edge answers 503 with ``Retry-After: ceil(retry_after_s)`` (at least 1).
    """

    exit_code = 1
    http_status = 503

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(SluiceError):
    """The request's own timeout passed before its result was ready (HTTP 504)."""

    exit_code = 1
    http_status = 504


class RemoteError(SluiceError):
    """A server refused a control request or could not be reached; the message says which."""

    exit_code = 1
    http_status = 502


class UnknownRequest(SluiceError):
    """Feedback names a request id or routing key the server does not remember answering (404)."""

    http_status = 404


class Interrupted(SluiceError):
    """The user interrupted the run; completed parts are kept."""

    exit_code = 130


class JobNotFound(SluiceError):
    """No job with the given id in the job store (HTTP 404)."""

    http_status = 404


class JobStateError(SluiceError):
    """The job is in a state that does not allow the request, e.g. cancelling a finished job (HTTP 409)."""

    http_status = 409


class NotPermitted(SluiceError):
    """The request asks for something the operator's policy does not allow (HTTP 403)."""

    http_status = 403


class StoreError(SluiceError):
    """The job store cannot be used (unreadable database, a schema from a newer Sluice)."""

    exit_code = 1
    http_status = 500
