"""The error tree: every error survives a trip between processes with its message, fields and codes."""

from __future__ import annotations

import pickle

import pytest

from sluice import errors
from sluice.errors import (
    DataError,
    ErrorFractionExceeded,
    HttpError,
    MissingDependency,
    Overloaded,
    SluiceError,
)

SAMPLES: list[SluiceError] = [
    DataError("`key_column` 'x' is not a column of the input", params=("key_column",)),
    MissingDependency("pyspark", "spark", "`backend='spark'`", params=("backend",)),
    ErrorFractionExceeded("more than `max_error_fraction` 0.0", {"rows": 3}, params=("max_error_fraction",)),
    Overloaded("queue full", retry_after_s=1.5),
    HttpError("no such route", 404, {"Allow": "GET"}),
]


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_fields(error: SluiceError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (str(copy), copy.args, copy.params) == (str(error), error.args, error.params)
    assert (copy.exit_code, copy.http_status) == (error.exit_code, error.http_status)
    assert vars(copy) == vars(error)


def test_every_error_class_without_own_constructor_pickles() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    plain = [c for c in classes if c.__init__ is SluiceError.__init__]
    assert len(plain) > 15
    for cls in plain:
        copy = pickle.loads(pickle.dumps(cls("message", params=("features",))))
        assert (type(copy), str(copy), copy.params) == (cls, "message", ("features",))


def test_params_default_to_none_named() -> None:
    assert DataError("plain message").params == ()
    assert SluiceError.params == ()
