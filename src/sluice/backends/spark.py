"""The Spark backend: each pending shard is one Spark task, run by ``mapInArrow``.

The driver builds a one-column DataFrame of shard positions, one row per partition, and maps
it with ``mapInArrow``: in the Python worker each task reads its shard with Sluice's readers
(pyarrow and fsspec, so ``s3://`` works without Hadoop jars), feeds Arrow batches of the job's
batch size straight into the model (no pandas, no per-row UDF), commits its part and returns
one row of counts. The model is loaded once per Python worker (Spark reuses workers between
tasks) and kept for every later task. A task that raises is retried by Spark itself
(``spark.task.maxFailures``); Sluice errors are deterministic and come back as data instead.
"""

from __future__ import annotations

import functools
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from sluice.backends.driver import TaskEngine
from sluice.backends.environment import ScopedEnviron
from sluice.backends.processes import ChildProcesses
from sluice.backends.shardtask import ShardJob, ShardOutcome, run_shard
from sluice.errors import EngineError, MissingDependency

__all__ = ["SparkEngine", "is_local", "local_environment", "start_session", "stop_session"]

DEFAULT_MASTER = "local[*]"
_OUTCOME_SCHEMA = "outcome string"


class SparkEngine(TaskEngine):
    """Runs shard tasks on Spark: an existing session, or one started (and stopped) here.

    ``master`` (e.g. ``local[2]``, ``spark://host:7077``) starts a session of Sluice's own;
    without it the active session is used when there is one (``spark-submit``, a notebook),
    else a ``local[*]`` session is started. Only a session started here is stopped, with its
    JVM, on exit.
    """

    name = "spark"

    def __init__(self, master: str | None = None, *, session: Any = None) -> None:
        self.master = master
        self.session = session
        self._owned = False
        self._children = ChildProcesses()

    def __enter__(self) -> SparkEngine:
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise MissingDependency("pyspark", "spark", "`backend='spark'`", params=("backend",)) from None
        if self.session is None and self.master is None:
            self.session = SparkSession.getActiveSession()
        if self.session is None:
            self._children.mark()
            self.session = start_session(self.master or DEFAULT_MASTER)
            self._owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned and self.session is not None:
            started = self._children.started()  # the JVM and its Python workers
            stop_session(self.session)
            self._children.reap(started)
            self.session = None
            self._owned = False

    def slots(self) -> int:
        return int(self.session.sparkContext.defaultParallelism)

    def run(self, job: ShardJob) -> Iterator[ShardOutcome]:
        """Run every shard of ``job`` as its own task; outcomes arrive when the job ends.

        The job runs from a helper thread, so that Ctrl-C reaches this thread outside py4j's
        socket read: pyspark's handler cancels the jobs over a connection of its own, and the
        Spark job group is cancelled here before the interrupt goes on.
        """
        spark = self.session
        count = len(job.shards)
        group = f"sluice-{uuid.uuid4().hex[:12]}"
        positions = spark.range(0, count, 1, numPartitions=count)
        frame = positions.mapInArrow(functools.partial(_spark_partition, job), _OUTCOME_SCHEMA)
        result: dict[str, Any] = {}

        def collect() -> None:
            spark.sparkContext.setJobGroup(group, f"sluice predict: {count} shard(s)", interruptOnCancel=True)
            try:
                result["rows"] = frame.collect()
            except Exception as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
                result["error"] = exc

        thread = threading.Thread(target=collect, name="sluice-spark-job", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.1)
        except KeyboardInterrupt:
            spark.sparkContext.cancelJobGroup(group)
            thread.join(60)
            raise
        error = result.get("error")
        if error is not None:
            if not _is_engine_error(error):
                raise error
            raise EngineError(f"the Spark job failed after Spark's retries: {_last_line(error)}") from None
        return (ShardOutcome.from_json(row.outcome) for row in result["rows"])


def _spark_partition(job: ShardJob, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The ``mapInArrow`` function: shard positions in, one outcome row per shard out."""
    for batch in batches:
        for position in batch.column(0).to_pylist():
            outcome = run_shard(job, int(position))
            yield pa.RecordBatch.from_pydict({"outcome": [outcome.to_json()]})


def is_local(master: str) -> bool:
    """Whether ``master`` runs Spark on this machine, started by this process (``local[4]``, ``local-cluster[…]``)."""
    return master.startswith("local")


def local_environment(master: str) -> dict[str, str]:
    """What a Spark session on ``master`` gets in its environment as it starts: for a local
    master, loopback only and workers on this interpreter (with Sluice on its path); for a
    cluster's master, nothing: its executors run their own Python."""
    if not is_local(master):
        return {}
    return {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}


def start_session(master: str) -> Any:
    """A Spark session on ``master`` as Sluice runs it: loopback for local masters, no UI, quiet
    logs, workers on this interpreter. Stop it with :func:`stop_session`."""
    from pyspark.sql import SparkSession

    quiet_logs = Path(__file__).with_name("log4j2.properties").as_uri()
    builder = (
        SparkSession.builder.master(master)
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={quiet_logs}")
        .appName("sluice")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.execution.pyspark.udf.faulthandler.enabled", "true")
    )
    if is_local(master):
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    try:
        # The JVM and the context read these as they start, so they need not outlive it.
        with ScopedEnviron(local_environment(master)):
            session = builder.getOrCreate()
    except Exception as exc:
        if not _is_engine_error(exc):
            raise
        raise EngineError(
            f"could not start Spark (master {master}): {_last_line(exc)}; is Java 17+ installed?"
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def stop_session(session: Any) -> None:
    """Stop ``session`` and the JVM pyspark launched for it, so no Java process outlives the run."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    session.stop()
    if gateway is None:
        return
    process = getattr(gateway, "proc", None)
    gateway.shutdown()
    SparkContext._gateway = None
    SparkContext._jvm = None
    if process is None:
        return
    # The JVM exits when its stdin closes; it stops its Python workers on the way out.
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout=30)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it did not go quietly
        process.kill()
        process.wait()


def _is_engine_error(exc: BaseException) -> bool:
    """Spark's own failures (a failed job, the JVM gone), as opposed to bugs in this module."""
    try:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException
    except ImportError:
        return False
    return isinstance(exc, PySparkException | Py4JError)


def _last_line(exc: BaseException) -> str:
    """The line of a Spark failure that says what went wrong, without the JVM stack trace.

    A Python exception in a task ends its Python traceback with ``Type: message``; a failed
    job's JVM message carries the task's ``most recent failure: …``; else the first line.
    """
    text = str(exc).split("JVM stacktrace:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    for line in lines:
        _, found, failure = line.partition("most recent failure: ")
        if found:
            return failure.rstrip(": ")[:300]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1][:300]
    return lines[0][:300]
