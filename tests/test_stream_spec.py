"""`sluice stream --spec FILE`: the stream's fields in YAML (or JSON), flags over them, as `sluice predict --spec`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sluice.errors import ConfigError
from sluice.stream import StreamSpec
from stream_support import batch_table, land_files, manifest, run_stream_process, sink_table


def _spec_file(tmp_path: Path, models: Any, **extra: Any) -> Path:
    path = tmp_path / "stream.yaml"
    lines = [
        f"model: {models.onnx}",
        f"source: {tmp_path / 'in'}",
        f"sink: {tmp_path / 'out'}",
        "key_column: id",
        "batch_size: 40",
        "max_group: 1",
        "once: true",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_spec_file_runs_the_stream(tmp_path: Path, models: Any) -> None:
    land_files(tmp_path / "in", 2, 60)
    done = run_stream_process("--spec", _spec_file(tmp_path, models), "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert (figures["records"], figures["groups"]) == (120, 4)  # a group per micro-batch: 40 and 20 of each file
    assert sink_table(tmp_path / "out").equals(batch_table(models.onnx, tmp_path / "in", tmp_path / "batch"))
    assert manifest(tmp_path / "out")["fingerprint"]["key_column"] == "id"


def test_flags_override_the_file(tmp_path: Path, models: Any) -> None:
    land_files(tmp_path / "in", 1, 30)
    other = tmp_path / "elsewhere"
    done = run_stream_process("--spec", _spec_file(tmp_path, models), "--sink", other, "--sink-format", "jsonl", "-q")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in other.glob("part-*")] == ["part-00000.jsonl"]
    spec = StreamSpec.from_file(_spec_file(tmp_path, models), sink=str(other), batch_size=None)
    assert (spec.sink, spec.batch_size, spec.once, spec.key_column) == (str(other), 40, True, "id")


def test_a_bad_field_in_the_file_is_named(tmp_path: Path, models: Any) -> None:
    path = _spec_file(tmp_path, models, batch_sise=3, max_group=0)  # the later max_group wins, as in YAML
    message = (
        f"{path}: max_group: Input should be greater than or equal to 1; batch_sise: Extra inputs are not permitted"
    )
    with pytest.raises(ConfigError) as caught:
        StreamSpec.from_file(path)
    assert str(caught.value) == message
    done = run_stream_process("--spec", path)
    assert (done.returncode, done.stderr.strip()) == (2, f"error: {message}")


def test_without_a_file_the_three_endpoints_are_needed(tmp_path: Path, models: Any) -> None:
    done = run_stream_process("--model", models.onnx)
    needed = "error: --source, --sink required (or give them in a --spec file)"
    assert (done.returncode, done.stderr.strip()) == (2, needed)
