"""``sluice jobs``: submit, list, inspect, cancel and resume persisted batch jobs; run workers."""

from __future__ import annotations

import json
import sys
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sluice.cli.grammar import SluiceTyper
from sluice.cli.options import parse_key_values
from sluice.cli.runtime import console, run_cli

if TYPE_CHECKING:
    from sluice.jobs.api import Job
    from sluice.jobs.model import JobStatus
    from sluice.jobs.store import JobStore

__all__ = ["jobs_app"]

jobs_app = SluiceTyper(
    help="Batch jobs as a service: persisted in a job database, resumable after crashes, retried, "
    "with exactly-once output. The database is $SLUICE_HOME/jobs.db (default ~/.sluice).",
    no_args_is_help=True,
)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="SLUICE_HOME",
        help="Directory of the job database jobs.db (default: $SLUICE_HOME, else ~/.sluice).",
        show_default=False,
        show_envvar=False,
    ),
]
JobIdArgument = Annotated[str, typer.Argument(help="Job id (a unique prefix is enough).", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
SlotsOption = Annotated[int, typer.Option(min=1, max=64, help="Shards this process runs at once.")]

# exit codes by final state; FAILED because too many records failed is 3, as for `sluice predict`
EXIT_FAILED = 1
EXIT_TOO_MANY_ERRORS = 3
EXIT_CANCELLED = 4


def _store(home: Path | None) -> JobStore:
    from sluice.jobs.store import open_store

    return open_store(home)


def _out() -> Any:

    return console(stderr=False)


@jobs_app.command("submit")
def submit(
    spec: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON: any `sluice predict` option, plus retries.")],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Run the job in this process (alongside any workers) until it ends."),
    ] = False,
    name: Annotated[str | None, typer.Option(help="A label for `sluice jobs list`.", show_default=False)] = None,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            metavar="KEY=VALUE",
            help="fsspec option for s3:// (or other) URIs, e.g. endpoint_url=http://127.0.0.1:9000; repeatable. "
            "a.b=v sets a nested key; true/false are booleans.",
            show_default=False,
        ),
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(min=1, help="Attempts per shard before the job fails (default 3).", show_default=False)
    ] = None,
    slots: SlotsOption = 2,
    home: HomeOption = None,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="With --wait: no progress lines.")] = False,
) -> None:
    """Validate and queue a job; prints its id as the first line.

    The spec is checked at once against the model and the input (unknown keys, missing files and
    columns that do not bind are errors). Without --wait, `sluice jobs worker` runs it.
    With --wait the exit code tells how it ended: 0 SUCCEEDED or PARTIALLY_SUCCEEDED, 1 FAILED,
    3 FAILED because more records failed than max_error_fraction allows, 4 CANCELLED.
    """
    from sluice.jobs.api import submit as submit_job

    options = run_cli(lambda: parse_key_values(storage_option or [], "--storage-option"))
    overrides: dict[str, Any] = {"name": name, "max_attempts": max_attempts}
    if options:
        overrides["storage_options"] = options
    job = run_cli(lambda: submit_job(spec, store=_store(home), **overrides))
    print(job.id, flush=True)
    if wait:
        _wait_and_exit(job, slots, as_json, quiet)
    elif as_json:
        print(json.dumps(job.status().to_dict(), indent=2))


def _wait_and_exit(job: Job, slots: int, as_json: bool, quiet: bool) -> None:

    watcher = None if quiet else _Watcher(job)
    if watcher is not None:
        watcher.start()
    try:
        status = run_cli(lambda: job.wait(slots=slots))
    finally:
        if watcher is not None:
            watcher.stop()
    _show(status, as_json)
    raise typer.Exit(_exit_code(status))


def _exit_code(status: JobStatus) -> int:
    from sluice.jobs.model import JobState

    if status.state is JobState.CANCELLED:
        return EXIT_CANCELLED
    if status.state is JobState.FAILED:
        return EXIT_TOO_MANY_ERRORS if status.shards_done == status.shards_total else EXIT_FAILED
    return 0


class _Watcher:
    """Prints a line on stderr whenever another shard of the job is done."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-jobs-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        done = -1
        while not self._stop.wait(0.5):
            status = self.job.status()
            if status.shards_done != done:
                done = status.shards_done
                print(
                    f"{status.state.value}: {done}/{status.shards_total} shards, {status.rows:,} rows, "
                    f"{status.rows_failed:,} failed, {status.rows_per_second:,.0f} rows/s",
                    file=sys.stderr,
                    flush=True,
                )


@jobs_app.command("list")
def list_(
    state: Annotated[
        str | None, typer.Option(help="Only jobs in this state (QUEUED, RUNNING, FAILED, …).", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs, newest first.")] = 50,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first: id, name, state, shards, rows, throughput."""
    from sluice.cli.jobs_render import jobs_table
    from sluice.jobs.api import list_jobs

    statuses = run_cli(lambda: list_jobs(state, limit=limit, store=_store(home)))
    if as_json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        _out().print(jobs_table(statuses))


@jobs_app.command("status")
def status(job_id: JobIdArgument, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """State, progress in rows and shards, throughput, errors and output location of a job."""
    from sluice.jobs.api import get

    _show(run_cli(lambda: get(job_id, store=_store(home)).status()), as_json)


def _show(status: JobStatus, as_json: bool) -> None:
    from sluice.cli.jobs_render import status_table

    if as_json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        _out().print(status_table(status))


@jobs_app.command("cancel")
def cancel(job_id: JobIdArgument, home: HomeOption = None) -> None:
    """Cancel a job: at once if nothing runs, else CANCELLING until its workers stop (next heartbeat)."""
    from sluice.jobs.api import cancel as cancel_job

    result = run_cli(lambda: cancel_job(job_id, store=_store(home)))
    print(f"{result.id} {result.state.value}")


@jobs_app.command("resume")
def resume(
    job_id: JobIdArgument,
    wait: Annotated[bool, typer.Option("--wait", help="Run the job in this process until it ends.")] = False,
    slots: SlotsOption = 2,
    home: HomeOption = None,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="With --wait: no progress lines.")] = False,
) -> None:
    """Queue a FAILED or CANCELLED job again: finished shards are kept, the rest redone.

    A job whose worker died needs no resume: its leases lapse and any worker takes over (at once
    for a worker on the same machine). With --wait, exit codes as for `submit --wait`.
    """
    from sluice.jobs.api import get

    job = run_cli(lambda: get(job_id, store=_store(home)))
    if not wait or run_cli(job.status).state.value in ("FAILED", "CANCELLED"):
        result = run_cli(lambda: job.resume().status())
        print(f"{result.id} {result.state.value}", flush=True)
    if wait:
        _wait_and_exit(job, slots, as_json, quiet)


@jobs_app.command("logs")
def logs(
    job_id: JobIdArgument,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until the job ends.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Print a job's events: submitted, started, shards done, attempts failed and retried, final state."""
    from sluice.cli.jobs_render import event_line
    from sluice.jobs.api import get

    job = run_cli(lambda: get(job_id, store=_store(home)))
    after = 0
    while True:
        for number, event in run_cli(partial(job.logs, after)):
            print(event_line(event), flush=True)
            after = number
        if not follow or run_cli(job.status).terminal:
            return
        threading.Event().wait(0.5)


@jobs_app.command("worker")
def worker(
    slots: SlotsOption = 2,
    lease: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0.5,
            help="Lease on each piece of work, renewed every third of it; a dead worker's work is taken over "
            "after it lapses (at once, if it ran on this machine).",
        ),
    ] = 30.0,
    poll: Annotated[float, typer.Option(metavar="SECONDS", min=0.01, help="How often an idle worker looks.")] = 0.5,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once no job is queued or running, instead of waiting for more.")
    ] = False,
    job_id: Annotated[
        str | None,
        typer.Option("--job", help="Work on this job only (a unique prefix of its id is enough).", show_default=False),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Run queued jobs: claim shards, run them, record each once its part is durable.

    Start as many workers on this machine as you like: leases keep two workers off the same shard
    (SQLite in WAL mode needs one machine; several machines need a server database behind the
    JobStore interface). Stop with Ctrl-C or SIGTERM: shards in progress are dropped and given back.
    """
    import logging
    import signal

    from sluice.jobs.worker import Worker

    store = run_cli(lambda: _store(home))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package = logging.getLogger("sluice")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    runner = Worker(store, slots=slots, lease_s=lease, poll_s=poll, job_id=job_id)
    previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: runner.stop())
    try:
        run_cli(lambda: runner.run(until_idle=until_idle))
    finally:
        signal.signal(signal.SIGTERM, previous)
        package.removeHandler(handler)
