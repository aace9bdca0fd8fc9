"""The processes of ``sluice serve --workers N``: the shared ports, starting, waiting and restarting.

:func:`listening_socket` binds with ``SO_REUSEPORT`` (see :mod:`sluice.serve.workers` for why);
:func:`start_worker` starts one worker interpreter with its control socket and returns a
:class:`WorkerProcess`, whose ``exited`` future a thread sets; :class:`RestartBackoff` decides
how long to wait before a worker that exited starts again; :func:`describe_exit` words a return
code for the log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LISTEN_BACKLOG", "RestartBackoff", "WorkerProcess", "describe_exit", "listening_socket", "start_worker"]

_WORKER_MAIN = "import sys; from sluice.serve.worker import main; sys.exit(main())"

LISTEN_BACKLOG = 2048


def listening_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, listening unless ``listen`` is False.

    Bound but not listening, it reserves the port for the workers without taking connections:
    the kernel hands connections only to the listening sockets of the group.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL``, from a process's return code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class RestartBackoff:
    """How long to wait before restarting a worker that exited ``uptime_s`` after it started.

    A worker that ran at least ``stable_after_s`` restarts at once; each exit sooner than that
    in a row doubles the pause, from ``first_delay_s`` up to ``max_delay_s``. From
    ``crash_loop_exits`` such exits in a row it is a crash loop.
    """

    stable_after_s: float = 30.0
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    crash_loop_exits: int = 3
    quick_exits: int = 0

    def next_delay_s(self, uptime_s: float) -> float:
        """The pause before the next start, counting this exit."""
        if uptime_s >= self.stable_after_s:
            self.quick_exits = 0
            return 0.0
        self.quick_exits += 1
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** (self.quick_exits - 1)))

    @property
    def crash_looping(self) -> bool:
        return self.quick_exits >= self.crash_loop_exits


class WorkerProcess:
    """A worker process, and a future of its return code (set by a thread that waits for it).

    Not asyncio's subprocess: its child watcher and ``Popen.send_signal`` both reap the
    process, so a worker that exits just as it is signalled was reported with code 255.
    """

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.popen = popen
        self.exited: asyncio.Future[int] = loop.create_future()

        def wait() -> None:
            code = popen.wait()
            loop.call_soon_threadsafe(self._exited, code)

        threading.Thread(target=wait, name=f"sluice-wait-{popen.pid}", daemon=True).start()

    def _exited(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None


def start_worker(control: socket.socket, loop: asyncio.AbstractEventLoop) -> WorkerProcess:
    """Start a worker interpreter that talks to its supervisor over ``control`` (closed here)."""
    popen = subprocess.Popen(
        [sys.executable, "-c", _WORKER_MAIN, str(control.fileno())],
        pass_fds=(control.fileno(),),
        process_group=0,  # Ctrl-C reaches the supervisor, which stops the workers in order
        env=_worker_environment(),
    )
    control.close()
    return WorkerProcess(popen, loop)


def _worker_environment() -> dict[str, str]:
    # the worker imports this very sluice, wherever this process found it
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
