"""The settings of ``sluice serve`` and what every serving process sets up before it serves.

:class:`ServeSettings` is the one validated settings object (flags > environment > defaults,
merged by the CLI); :mod:`sluice.serve.server` serves them in one process and
:mod:`sluice.serve.workers` in several.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

if TYPE_CHECKING:
    from sluice.http import ASGIApp

__all__ = ["CUT_OFF_GRACE_S", "SWITCH_INTERVAL_S", "MountFactory", "Mounts", "ServeSettings", "prepare_process"]

SWITCH_INTERVAL_S = 0.0005
CUT_OFF_GRACE_S = 1
"""Seconds past the drain timeout that a batch already running may take before its requests are cut off."""

Mounts = Mapping[str, "ASGIApp"]
MountFactory = Callable[[], Mounts]
"""Builds the mounted apps; with ``workers`` > 1 each worker process calls it (it must pickle)."""


class ServeSettings(BaseModel):
    """Everything ``sluice serve`` needs; flags > environment > defaults are merged by the CLI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: Path = Field(description="Model repository directory.")
    host: str = Field(default="127.0.0.1", description="Address to bind; other hosts can reach only 0.0.0.0 or an IP.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port).")
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the gRPC service on the same address (0: any free port; None: no gRPC). "
        "`sluice serve` listens on 8001 unless told --no-grpc.",
    )
    auth_token: SecretStr | None = Field(
        default=None, description="Bearer token required for inference and repository control."
    )
    max_body_bytes: int = Field(default=64 << 20, ge=1, description="Largest request body accepted (413 beyond).")
    target_p99_ms: float = Field(
        default=100.0, gt=0, description="Default latency target of the adaptive batcher (model.yaml may override)."
    )
    trust_pickle: bool = Field(default=False, description="Allow pickle/joblib model files, which can run any code.")
    intra_op_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Threads inside one predict call. One leaves the other cores to the HTTP loop and "
        "makes small batches fastest; more can help large batches of heavy models on a many-core machine.",
    )
    device: str = Field(default="auto", description="auto (a GPU when there is one), cpu, cuda or cuda:N.")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32", description="What PyTorch and Hugging Face models compute in (fp32: as saved)."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Serving processes behind the same ports, each with its own copy of every model "
        "(1: this process serves; more: a supervisor runs them, see sluice.serve.workers).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: str | None = Field(
        default=None, description="Write one JSON line per request to this file ('-': stderr); off by default."
    )
    watch: bool = Field(
        default=False,
        description="Reload models whose files change, or whose MLflow registry alias moves, without a restart.",
    )
    watch_interval_s: float = Field(default=1.0, gt=0, description="Seconds between polls of the repository.")
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On shutdown, how long in-flight requests may take to finish."
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a request's head (408 beyond), counted from the "
        "connection or the request's first byte.",
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds a request's body may take to arrive after its head (408 beyond)."
    )
    max_incomplete_requests: int | None = Field(
        default=None,
        ge=1,
        description="Most connections still sending a request; past it the one waiting longest gets 503 "
        "(None: half the open-file limit, at most 1024).",
    )
    json_non_finite: Literal["null", "triton"] = Field(
        default="triton",
        description="NaN and infinity in JSON outputs: triton (bare NaN, Infinity, -Infinity, as Triton "
        "writes them and tritonclient reads them) or null (strict JSON; the values become null).",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        from sluice.models.config import check_device_name  # here: the settings load without the model layer

        return check_device_name(device)


def prepare_process(settings: ServeSettings) -> None:
    """Set up a serving process: the server's logging, and the interpreter's switch interval."""
    _log_to_stderr(settings.log_level)
    # The event loop holds the GIL while it parses requests; a predict thread that finished
    # its batch waits up to the switch interval (5 ms by default) to hand results back. A
    # 0.5 ms interval keeps that hand-over well under the latency targets.
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def _log_to_stderr(level: str) -> None:
    # uvicorn configures only its own loggers; the server's own news (a model loaded, failed,
    # swapped; a drain began) goes to stderr at the same level
    package = logging.getLogger("sluice")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        package.addHandler(handler)
        package.propagate = False
    package.setLevel(level.upper())
