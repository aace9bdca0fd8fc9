"""Options and flag handling shared by the commands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer

__all__ = ["RepositoryOption", "given_fields", "split_csv"]

RepositoryOption = Annotated[
    str | None,
    typer.Option(
        "--repository",
        "-r",
        help="Model repository directory (default: $SLUICE_REPOSITORY, else ./models).",
        show_default=False,
    ),
]


def split_csv(value: str | None) -> list[str] | None:
    """``"a, b,c"`` → ``["a", "b", "c"]``; None stays None."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def given_fields(
    fields: Mapping[str, Any], required: Sequence[str], *, from_file: bool, file_flag: str
) -> dict[str, Any]:
    """The flags the user set; without a settings file, the ``required`` ones must be among them."""
    given = {k: v for k, v in fields.items() if v is not None}
    missing = [f"--{k.replace('_', '-')}" for k in required if k not in given]
    if missing and not from_file:
        from sluice.errors import ConfigError

        raise ConfigError(f"{', '.join(missing)} required (or give them in a {file_flag} file)")
    return given
