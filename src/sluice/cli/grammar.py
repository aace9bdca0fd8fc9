"""One grammar for every command: how flags, values and arguments read in ``--help``, and old spellings.

Every command and group of ``sluice`` is built from :class:`SluiceTyper`, whose commands are
:class:`SluiceCommand` (groups :class:`SluiceGroup`). They render help the same way everywhere:

* a flag (``--overwrite``) shows no value, since it takes none;
* an option's value is an upper-case word: its own metavar (``SECONDS``, ``KEY=VALUE``), else
  ``TEXT``, ``N`` (an integer), ``NUMBER`` or ``PATH`` from its type;
* a positional argument is upper case (``MODEL``, ``JOB_ID``) in the usage line and in its
  Arguments section, ``[VARIANT]`` when optional.

A renamed flag keeps its old spelling: :class:`Renamed` entries rewrite it to the new one before
parsing and print a deprecation note on stderr; ``--help`` lists them under the options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import CommandFunctionType

__all__ = [
    "Renamed",
    "SluiceCommand",
    "SluiceGroup",
    "SluiceTyper",
    "command_class",
    "deprecation_epilog",
    "group_class",
]

_TYPE_METAVARS = {"int": "N", "float": "NUMBER", "str": "TEXT", "Path": "PATH", "bool": "BOOL"}


@dataclass(frozen=True)
class Renamed:
    """An old flag spelling, still accepted: ``--data`` → ``--input``.

    With ``only_with_value`` the old name is itself a flag of the command (``--json``, which now
    prints to stdout) and only its old form, followed by a value (``--json FILE``), is rewritten.
    """

    new: str
    only_with_value: bool = False


def _value_metavar(param: Any) -> str:
    bare = getattr(param, "bare_type", None)
    name = str(bare()) if callable(bare) else "str"
    if name.startswith("list[") and name.endswith("]"):
        name = name[5:-1]
    return _TYPE_METAVARS.get(name, "TEXT")


def _tidy(param: Any) -> None:
    """Give the parameter the house spelling in help (idempotent)."""
    if getattr(param, "param_type_name", "") == "argument":
        param.metavar = (param.metavar or param.name or "ARG").upper()
        # the upper-case name is the value's description; typer would add "<str>" beside it
        param.display_type_rich = _no_type
    elif getattr(param, "is_flag", False) and not getattr(param, "count", False):
        param.metavar = ""
    elif param.metavar is None:
        param.metavar = _value_metavar(param)


def _no_type(ctx: Any) -> None:
    return None


def _unbrace(piece: str) -> str:
    # a required argument reads MODEL in the usage line, as in every Unix manual; optional ones [VARIANT]
    return piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece


def rewrite_renamed(args: list[str], renamed: Mapping[str, Renamed], stop: Callable[[str], bool]) -> list[str]:
    """``args`` with each old spelling in ``renamed`` as its new one; a note on stderr for each.

    Rewriting stops at ``--`` and at the first token ``stop`` accepts (a group's subcommand).
    """
    result: list[str] = []
    noted: set[str] = set()
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--" or stop(arg):
            return result + args[index:]
        name, eq, value = arg.partition("=")
        rule = renamed.get(name)
        has_value = bool(eq) or (index + 1 < len(args) and not args[index + 1].startswith("-"))
        if rule is not None and (has_value or not rule.only_with_value):
            if name not in noted:
                noted.add(name)
                old = f"{name} VALUE" if rule.only_with_value else name
                typer.echo(f"warning: {old} is deprecated; use {rule.new} instead", err=True)
            arg = f"{rule.new}={value}" if eq else rule.new
        result.append(arg)
        index += 1
    return result


def deprecation_epilog(renamed: Mapping[str, Renamed]) -> str | None:
    """The help's closing line listing old spellings, or None."""
    if not renamed:
        return None
    pairs = ", ".join(
        f"{old} FILE → {rule.new} FILE" if rule.only_with_value else f"{old} → {rule.new}"
        for old, rule in renamed.items()
    )
    return f"Deprecated spellings, still accepted: {pairs}."


class _Grammar:
    """What :class:`SluiceCommand` and :class:`SluiceGroup` add to typer's classes."""

    renamed: ClassVar[Mapping[str, Renamed]] = {}

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            _tidy(param)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [_unbrace(piece) for piece in pieces]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if self.renamed:
            commands = getattr(self, "commands", {})
            args = rewrite_renamed(list(args), self.renamed, lambda arg: arg in commands)
        parsed: list[str] = super().parse_args(ctx, args)  # type: ignore[misc]
        return parsed


class SluiceCommand(_Grammar, TyperCommand):
    """A command with the house help style."""


class SluiceGroup(_Grammar, TyperGroup):
    """A group with the house help style."""


def command_class(renamed: Mapping[str, Renamed]) -> type[TyperCommand]:
    """A command class that also accepts the ``renamed`` old spellings."""
    return type("SluiceCommand", (SluiceCommand,), {"renamed": dict(renamed)})


def group_class(renamed: Mapping[str, Renamed]) -> type[TyperGroup]:
    """A group class (options before a subcommand) that also accepts the ``renamed`` old spellings."""
    return type("SluiceGroup", (SluiceGroup,), {"renamed": dict(renamed)})


class SluiceTyper(typer.Typer):
    """``typer.Typer`` whose commands and groups use the house help style."""

    def __init__(self, *, cls: type[TyperGroup] | None = None, **kwargs: Any) -> None:
        super().__init__(cls=cls or SluiceGroup, **kwargs)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        """Register a command (a :class:`SluiceCommand` unless ``cls`` says otherwise)."""
        return super().command(name, cls=cls or SluiceCommand, **kwargs)
