"""The real-time server: the Open Inference Protocol (KServe v2, as NVIDIA Triton speaks it).

:mod:`sluice.serve.protocol` turns request bytes into tensors and tensors into response bytes,
with no HTTP framework in sight; the server drives it. Importing this package imports nothing
heavy: the names below load their modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice._lazy import lazy_exports

_EXPORTS = {
    "ControlClient": "sluice.serve.control",
    "RouteTable": "sluice.serve.routing",
    "ServeSettings": "sluice.serve.server",
    "ServerThread": "sluice.serve.server",
    "experiment_report": "sluice.serve.abreport",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # names for type checkers; at run time __getattr__ imports them lazily
    from sluice.serve.abreport import experiment_report as experiment_report
    from sluice.serve.control import ControlClient as ControlClient
    from sluice.serve.routing import RouteTable as RouteTable
    from sluice.serve.server import ServerThread as ServerThread
    from sluice.serve.server import ServeSettings as ServeSettings

__getattr__ = lazy_exports(__name__, _EXPORTS)
