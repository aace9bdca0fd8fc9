"""Jobs on a real S3 API: moto's server on 127.0.0.1, input and output as s3:// URIs, crash and resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sluice.jobs
from jobs_support import output_files, run_worker, write_inputs, write_spec
from sluice._net import free_loopback_port
from sluice.jobs.model import JobState
from support import invoke

BUCKET = "sluice-jobs"
MANIFEST = "_sluice_job.json"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, with dummy credentials in the environment."""
    from moto.server import ThreadedMotoServer

    env = pytest.MonkeyPatch()
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never look for an instance role
    port = free_loopback_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    env.undo()


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir(BUCKET)
    yield fs
    fs.rm(BUCKET, recursive=True)


def _objects(fs: Any, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(prefix))
    return {n: fs.cat(f"{prefix}/{n}") for n in names if n not in ("_summary.json", MANIFEST)}


def _local(directory: Path) -> dict[str, bytes]:
    """The same files of a local reference run (its manifest names the local input, so it differs)."""
    return {k: v for k, v in output_files(directory).items() if k != MANIFEST}


def test_s3_in_and_out_through_the_cli(tmp_path: Path, models, s3: Any, s3_endpoint: str) -> None:
    write_inputs(tmp_path / "in", 3, 40)
    s3.put(str(tmp_path / "in") + "/", f"{BUCKET}/in/", recursive=True)
    reference = sluice.jobs.submit(
        {"model": str(models.onnx), "input": str(tmp_path / "in"), "output": str(tmp_path / "ref"), "key_column": "id"},
        store=tmp_path / "home-ref",
    )
    assert reference.wait().state is JobState.SUCCEEDED
    spec = write_spec(tmp_path / "job.yaml", model=str(models.onnx), input=f"s3://{BUCKET}/in/",
                      output=f"s3://{BUCKET}/out", key_column="id")  # fmt: skip
    result = invoke("jobs", "submit", spec, "--storage-option", f"endpoint_url={s3_endpoint}", "--wait", "-q",
                    "--json", "--home", tmp_path / "home")  # fmt: skip
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout.split("\n", 1)[1])
    assert (status["state"], status["rows"], status["output"]) == ("SUCCEEDED", 120, f"s3://{BUCKET}/out")
    assert _objects(s3, f"{BUCKET}/out") == _local(tmp_path / "ref")
    summary = json.loads(s3.cat(f"{BUCKET}/out/_summary.json"))
    assert (summary["job"], summary["rows"]) == (status["id"], 120)


def test_s3_output_survives_sigkill_and_resume(tmp_path: Path, models, s3: Any, s3_endpoint: str) -> None:
    write_inputs(tmp_path / "in", 4, 300)
    base = {"model": str(models.onnx), "input": str(tmp_path / "in"), "key_column": "id", "batch_size": 100}
    reference = sluice.jobs.submit({**base, "output": str(tmp_path / "ref")}, store=tmp_path / "home-ref")
    assert reference.wait().state is JobState.SUCCEEDED
    home = tmp_path / "home"
    options = {"endpoint_url": s3_endpoint}
    job = sluice.jobs.submit({**base, "output": f"s3://{BUCKET}/out", "storage_options": options}, store=home)
    # killed half-way through an upload, then after a part is uploaded but before it is recorded
    assert run_worker(home, failpoints="shard.batch_written=2") == -9
    assert run_worker(home, failpoints="shard.committed=2") == -9
    assert run_worker(home) == 0
    status = job.status()
    assert (status.state, status.rows, status.attempts) == (JobState.SUCCEEDED, 1200, 6)
    assert _objects(s3, f"{BUCKET}/out") == _local(tmp_path / "ref")


def test_an_aborted_upload_leaves_an_earlier_object_as_it_was(s3: Any, s3_endpoint: str) -> None:
    from sluice.data.location import resolve_location
    from sluice.data.writers import AtomicFile

    target = resolve_location(f"s3://{BUCKET}/x/part-00000.parquet", {"endpoint_url": s3_endpoint})
    first = AtomicFile(target)
    first.open().write(b"complete")
    first.commit()
    second = AtomicFile(target)
    second.open().write(b"half of a part")
    second.abort()  # closing would have completed the upload: a partial part at the final key
    s3.invalidate_cache()
    assert s3.cat(f"{BUCKET}/x/part-00000.parquet") == b"complete"


def test_predict_reads_and_writes_s3_with_storage_options(tmp_path: Path, models, s3: Any, s3_endpoint: str) -> None:
    write_inputs(tmp_path / "in", 2, 25)
    s3.put(str(tmp_path / "in") + "/", f"{BUCKET}/in/", recursive=True)
    local = invoke("predict", "-m", models.onnx, "-i", tmp_path / "in", "-o", tmp_path / "ref", "--key-column", "id",
                   "-q")  # fmt: skip
    assert local.exit_code == 0, local.output
    remote = invoke("predict", "-m", models.onnx, "-i", f"s3://{BUCKET}/in/", "-o", f"s3://{BUCKET}/predicted",
                    "--key-column", "id", "--storage-option", f"endpoint_url={s3_endpoint}", "-q")  # fmt: skip
    assert remote.exit_code == 0, remote.output
    assert _objects(s3, f"{BUCKET}/predicted") == _local(tmp_path / "ref")
