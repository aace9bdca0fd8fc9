"""What every command shares at run time: the consoles, calling the API, and rendering its errors.

The library's messages name parameters as the Python API spells them, in backquotes
(`` `features` ``, `` `overwrite=True` ``, `` `device='cpu'` ``), and list them in
:attr:`~sluice.errors.SluiceError.params`. The command line shows the same message with each
such parameter spelled as its flag (``--features``, ``--overwrite``, ``--device cpu``), from the
one table :data:`FLAGS`.

Commands import this module; it imports no command, so the command tree has one root (main.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from sluice.batch.summary import RunSummary
    from sluice.errors import SluiceError

__all__ = ["FLAGS", "PIPE_WIDTH", "console", "error_message", "flag_text", "render_summary", "run_cli"]

T = TypeVar("T")

FLAGS: Mapping[str, str] = {
    # sluice predict (and the job specs sluice jobs submits)
    "features": "--features",
    "key_column": "--key-column",
    "key_type": "--key-type",
    "image_column": "--image-column",
    "include": "--include",
    "exclude": "--exclude",
    "overwrite": "--overwrite",
    "max_error_fraction": "--max-error-fraction",
    "input_format": "--input-format",
    "trust_pickle": "--trust-pickle",
    "trusted_types": "--trust-type",
    "device": "--device",
    "backend": "--backend",
    "text_column": "--text-column",
    "task": "--task",
    "max_length": "--max-length",
    # sluice stream
    "claim_idle_ms": "--claim-idle-ms",
    # sluice serve
    "port": "--port",
    # sluice tune, sluice cost
    "max_latency_ms": "--max-latency-ms",
    "memory_limit": "--memory-limit",
    "prices": "--prices",
    "cores": "--cores",
    # sluice train plan
    "params": "--params",
    "workers": "--workers",
    "bandwidth_bytes_per_s": "--bandwidth",
    "latency_us": "--latency-us",
    "dtype_bytes": "--dtype-bytes",
    "powersgd_rank": "--powersgd-rank",
    "localsgd_period": "--localsgd-period",
    "layer_width": "--layer-width",
}
"""Parameter (as the Python API and job specs spell it) → the flag that sets it on the command line."""

# `name` or `name=value`; a value of True is the bare flag, any other value follows the flag
_PARAM = re.compile(r"`([a-z_][a-z0-9_]*)(?:=([^`]*))?`")
_QUOTES = "'\""


def flag_text(text: str, params: Iterable[str] | None = None) -> str:
    """``text`` with each backquoted parameter among ``params`` (default: all of :data:`FLAGS`) as its flag.

    ``"pass `overwrite=True`"`` → ``"pass --overwrite"``; ``"use `device='cpu'`"`` → ``"use --device cpu"``.
    """
    names = set(FLAGS if params is None else params).intersection(FLAGS)

    def spell(match: re.Match[str]) -> str:
        name, value = match[1], match[2]
        if name not in names:
            return match[0]
        if value is None or value == "True":
            return FLAGS[name]
        return f"{FLAGS[name]} {value.strip(_QUOTES)}"

    return _PARAM.sub(spell, text)


def error_message(exc: SluiceError) -> str:
    """The error's message as the command line shows it: its parameters spelled as flags."""
    return flag_text(str(exc), exc.params)


PIPE_WIDTH = 10_000
"""Columns of a console that is not a terminal (a pipe, a file): wide enough that no table is cut."""


def console(stderr: bool = True) -> Console:
    """A rich console on stderr (progress, messages) or stdout (results).

    On a terminal it has the terminal's width; off one (a pipe, a file, a test) rich would assume
    80 columns and cut table cells ("19,788…"), so it takes :data:`PIPE_WIDTH` unless ``COLUMNS`` says.
    """
    import os

    from rich.console import Console

    out = Console(stderr=stderr)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = PIPE_WIDTH
    return out


def render_summary(summary: RunSummary) -> None:
    """The run summary table, on stderr."""
    from sluice.cli.render import summary_table

    console().print(summary_table(summary))


def run_cli(action: Callable[[], T]) -> T:
    """Call the API; translate errors into a message and the error's exit code."""
    from sluice.errors import SluiceError

    try:
        return action()
    except SluiceError as exc:
        from rich.markup import escape

        console().print(f"[bold red]error:[/] {escape(error_message(exc))}", highlight=False, soft_wrap=True)
        summary = getattr(exc, "summary", None)
        if summary is not None:
            render_summary(summary)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console().print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
