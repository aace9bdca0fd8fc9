"""What a job submitted over the REST API may ask for: the operator's policy, checked first.

Whoever holds the API's token must not be able to run code on the workers or reach files the
operator did not offer. A job arriving over REST therefore takes its model from the server's
repository by name (``NAME``, ``NAME@VERSION``, ``NAME@LABEL``) or from the references the
operator allows, sets no trust flag, and reads and writes only under the operator's data roots.
:meth:`SubmitPolicy.check` decides before anything is loaded, listed or written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sluice.errors import ConfigError, ModelNotFound, NotPermitted
from sluice.jobs.model import JobRequest
from sluice.models.repository import is_callable_reference, parse_reference

__all__ = ["SubmitPolicy"]

_HINT_MODEL = "the server's operator may allow it with `sluice serve --jobs-allow-model REF`"
_HINT_ROOT = "the server's operator names the roots with `sluice serve --jobs-data-root DIR`"


@dataclass(frozen=True)
class SubmitPolicy:
    """The operator's limits on submitted jobs.

    ``repository``: where models named in a job come from. ``data_roots``: local directories or
    URI prefixes (``s3://bucket/prefix/``) that every input and output must lie under; none
    means no job is accepted. ``allowed_models``: references allowed besides repository names,
    exactly as a job gives them (``scoring:predict``, ``/models/lr.onnx``).
    """

    repository: str
    data_roots: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()

    def check(self, request: JobRequest) -> JobRequest:
        """``request`` with the server's repository, or :class:`~sluice.errors.NotPermitted`."""
        self._check_trust(request)
        self._check_model(request)
        for field in ("input", "output"):
            self._check_location(field, getattr(request, field))
        return request.model_copy(update={"repository": os.path.abspath(self.repository)})

    @staticmethod
    def _check_trust(request: JobRequest) -> None:
        if request.trust_pickle or request.trusted_types:
            field = "trust_pickle" if request.trust_pickle else "trusted_types"
            raise NotPermitted(
                f"`{field}`: a job submitted over the REST API cannot trust pickled or unlisted types; "
                "the repository's sluice-repository.yaml decides what its models may load"
            )
        if request.model_search_path is not None:
            raise NotPermitted(
                "`model_search_path`: a job submitted over the REST API cannot choose where code is imported from"
            )

    def _check_model(self, request: JobRequest) -> None:
        if request.repository is not None and not _same_path(request.repository, self.repository):
            raise NotPermitted(
                f"`repository` {request.repository!r}: jobs submitted over the REST API use the server's "
                f"repository ({os.path.abspath(self.repository)}); leave `repository` out"
            )
        model = request.model
        if model in self.allowed_models or _is_repository_name(model):
            return
        raise NotPermitted(
            f"`model` {model!r}: a job submitted over the REST API names a model of the server's repository "
            f"(NAME, NAME@VERSION or NAME@LABEL), not a file or a Python callable; {_HINT_MODEL}"
        )

    def _check_location(self, field: str, location: str) -> None:
        if not self.data_roots:
            raise NotPermitted(
                f"`{field}` {location!r}: this server accepts no jobs over the REST API until it has data roots; "
                + _HINT_ROOT
            )
        if _is_uri(location):
            inside = any(_uri_under(location, root) for root in self.data_roots if _is_uri(root))
        elif not os.path.isabs(location):
            raise ConfigError(
                f"`{field}` {location!r}: paths in a job submitted over the REST API must be absolute (or URIs)"
            )
        else:
            inside = any(_path_under(location, root) for root in self.data_roots if not _is_uri(root))
        if not inside:
            raise NotPermitted(
                f"`{field}` {location!r} is outside the server's data roots ({', '.join(self.data_roots)}); "
                + _HINT_ROOT
            )


def _is_repository_name(model: str) -> bool:
    if is_callable_reference(model) or os.sep in model or Path(model).exists():
        return False
    try:
        parse_reference(model)
    except ModelNotFound:
        return False
    return True


def _is_uri(location: str) -> bool:
    return "://" in location or location.startswith("memory:")


def _uri_under(location: str, root: str) -> bool:
    prefix = root if root.endswith("/") else root + "/"
    path = location.split("://", 1)[-1]
    return (location == root.rstrip("/") or location.startswith(prefix)) and ".." not in path.split("/")


def _path_under(location: str, root: str) -> bool:
    # symlinks resolved: a link under a root that points elsewhere is elsewhere
    real, base = os.path.realpath(location), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)
