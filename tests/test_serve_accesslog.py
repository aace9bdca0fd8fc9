"""The structured access log: JSON lines from a writer thread, bounded, and end to end."""

from __future__ import annotations

import http.client
import io
import json
import shutil
from pathlib import Path

import pytest

from sluice.errors import ConfigError
from sluice.serve.accesslog import AccessLog, AccessRecord
from sluice.serve.server import ServerThread, ServeSettings, build_app


def _record(status: int) -> AccessRecord:
    return AccessRecord(time=1.5, method="GET", path="/v2", status=status, duration_ms=0.2, bytes_out=10, client=None)


def test_records_are_written_as_json_lines_and_a_full_queue_drops_and_counts() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, max_pending=2)
    for status in (200, 404, 503):  # the writer is not running yet: the third does not fit
        log.record(_record(status))
    log.start()
    log.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[:2] == [
        {"time": 1.5, "method": "GET", "path": "/v2", "status": s, "duration_ms": 0.2, "bytes_out": 10, "client": None}
        for s in (200, 404)
    ]
    assert lines[2]["event"] == "access_log_dropped" and lines[2]["records"] == 1
    assert (log.written, log.dropped) == (2, 1)


def test_an_unwritable_access_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot open the access log .*/missing/access\.log: No such file"):
        build_app(ServeSettings(repository=tmp_path, access_log=str(tmp_path / "missing" / "access.log")))


def test_the_server_logs_every_answer(models, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "clf" / "1").mkdir(parents=True)
    shutil.copy(models.onnx, repo / "clf" / "1" / "model.onnx")
    target = tmp_path / "access.log"
    settings = ServeSettings(repository=repo, port=0, log_level="warning", access_log=str(target))
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    with ServerThread(settings) as server:
        server.wait_ready(timeout_s=30)
        for method, path, payload in [
            ("POST", "/v2/models/clf/infer", body),
            ("GET", "/v2/models/ghost", ""),
            ("GET", "/v2/health/live", ""),
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request(method, path, body=payload)
            conn.getresponse().read()
            conn.close()
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    # readiness polls may come first; the three requests are the last three lines, in order
    assert [(r["method"], r["path"], r["status"]) for r in lines[-3:]] == [
        ("POST", "/v2/models/clf/infer", 200),
        ("GET", "/v2/models/ghost", 404),
        ("GET", "/v2/health/live", 200),
    ]
    assert all(r["duration_ms"] >= 0 and r["client"].startswith("127.0.0.1:") and r["bytes_out"] > 0 for r in lines)
