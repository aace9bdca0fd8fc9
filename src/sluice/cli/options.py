"""Options and flag handling shared by the commands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer

__all__ = ["RepositoryOption", "TrustTypeOption", "given_fields", "parse_key_values", "split_csv"]

RepositoryOption = Annotated[
    str | None,
    typer.Option(
        "--repository",
        "-r",
        help="Model repository directory (default: $SLUICE_REPOSITORY, else ./models).",
        show_default=False,
    ),
]

TrustTypeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--trust-type", help="A type a skops file may contain that you reviewed (repeatable).", show_default=False
    ),
]


def split_csv(value: str | None) -> list[str] | None:
    """``"a, b,c"`` → ``["a", "b", "c"]``; None stays None."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def given_fields(
    fields: Mapping[str, Any],
    required: Sequence[str],
    *,
    from_file: bool,
    file_flag: str,
    flags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The flags the user set; without a settings file, the ``required`` ones must be among them.

    ``flags`` spells the fields whose flag is not ``--`` plus the field's name with dashes.
    """
    given = {k: v for k, v in fields.items() if v is not None}
    spelled = flags or {}
    missing = [spelled.get(k, f"--{k.replace('_', '-')}") for k in required if k not in given]
    if missing and not from_file:
        from sluice.errors import ConfigError

        raise ConfigError(f"{', '.join(missing)} required (or give them in a {file_flag} file)")
    return given


def parse_key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``["endpoint_url=http://…", "client_kwargs.region_name=eu-west-1", "anon=false"]`` → a nested dict.

    Dots in a key nest it; ``true``/``false`` become booleans; everything else stays a string.
    """
    from sluice.errors import ConfigError

    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, found {item!r}")
        *parents, leaf = key.strip().split(".")
        target = result
        for part in parents:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{flag} {item!r}: {part!r} is already set to a value")
            target = child
        target[leaf] = {"true": True, "false": False}.get(value.strip().lower(), value)
    return result
