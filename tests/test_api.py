"""The Python API (``sluice.load_model``, ``predict_batches``, ``predict``) and import-time behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sluice
from sluice.errors import BindError, ConfigError, ErrorFractionExceeded, SluiceError
from support import FEATURES, SRC_ROOT, invoke, make_table, onnx_predict, write_table

CLI = "from sluice.cli.main import main; main()"


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC_ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_load_model_signature(models) -> None:
    model = sluice.load_model(str(models.onnx))
    assert isinstance(model, sluice.Model)
    [spec] = model.signature.inputs
    assert (spec.name, spec.dtype, spec.shape) == ("X", np.dtype("float32"), (-1, 4))
    assert [(s.name, s.dtype.name, s.shape) for s in model.signature.outputs] == [
        ("label", "int64", (-1,)),
        ("probabilities", "float32", (-1, 2)),
    ]
    assert model.signature.to_dict() == {
        "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "dtype": "int64", "shape": [-1]},
            {"name": "probabilities", "dtype": "float32", "shape": [-1, 2]},
        ],
    }


def test_predict_batches_on_a_table(models) -> None:
    table = make_table(23)
    model = sluice.load_model(str(models.onnx))
    batches = list(sluice.predict_batches(model, table, batch_size=10, features=FEATURES))
    assert [b.num_rows for b in batches] == [10, 10, 3]
    assert all(b.schema.names == ["label", "probabilities"] for b in batches)
    got = pa.Table.from_batches(batches)
    want = onnx_predict(models.onnx, table)
    assert got.column("label").to_pylist() == want["label"].tolist()
    np.testing.assert_array_equal(np.array(got.column("probabilities").to_pylist(), np.float32), want["probabilities"])


def test_predict_batches_on_a_record_batch_and_an_iterable(models) -> None:
    table = make_table(7).select(FEATURES)
    model = sluice.load_model(str(models.onnx))
    [batch] = table.to_batches()
    from_batch = list(sluice.predict_batches(model, batch, batch_size=3))
    assert [b.num_rows for b in from_batch] == [3, 3, 1]
    from_iter = list(sluice.predict_batches(model, iter([batch.slice(0, 2), batch.slice(2)])))
    assert [b.num_rows for b in from_iter] == [2, 5]
    labels = onnx_predict(models.onnx, table)["label"].tolist()
    assert pa.Table.from_batches(from_batch).column("label").to_pylist() == labels
    assert pa.Table.from_batches(from_iter).column("label").to_pylist() == labels


def test_predict_batches_names_the_bad_row(models) -> None:
    table = make_table(4)
    f1 = table.column("f1").to_numpy().copy()
    f1[2] = np.nan
    table = table.set_column(3, "f1", pa.array(f1))
    model = sluice.load_model(str(models.onnx))
    with pytest.raises(BindError) as info:
        list(sluice.predict_batches(model, table, features=FEATURES))
    assert str(info.value) == "row 2, field 'f1': value is NaN and the model does not accept NaN (allow_nan: false)"


def test_predict_returns_run_summary(tmp_path: Path, models) -> None:
    table = make_table(12)
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    summary = sluice.predict(str(models.onnx), str(tmp_path / "in.parquet"), str(out), key_column="id", batch_size=5)
    assert isinstance(summary, sluice.RunSummary)
    assert (summary.rows, summary.rows_failed, summary.batch_size, summary.shards) == (12, 0, 5, 1)
    assert summary.error_fraction == 0.0
    assert summary.to_dict() == json.loads((out / "_summary.json").read_text())
    part = pq.read_table(out / "part-00000.parquet")
    assert part.column("label").to_pylist() == onnx_predict(models.onnx, table)["label"].tolist()


def test_predict_raises_with_the_summary_when_too_many_fail(tmp_path: Path, models) -> None:
    table = make_table(4)
    f0 = table.column("f0").to_numpy().copy()
    f0[0] = np.nan
    write_table(table.set_column(2, "f0", pa.array(f0)), tmp_path / "in.parquet")
    with pytest.raises(ErrorFractionExceeded) as info:
        sluice.predict(str(models.onnx), str(tmp_path / "in.parquet"), str(tmp_path / "out"), key_column="id")
    assert info.value.exit_code == 3
    assert isinstance(info.value.summary, sluice.RunSummary)
    assert (info.value.summary.rows, info.value.summary.rows_failed) == (3, 1)


def test_predict_rejects_unknown_options(tmp_path: Path, models) -> None:
    with pytest.raises(ConfigError) as info:
        sluice.predict(str(models.onnx), str(tmp_path), str(tmp_path / "out"), batchsize=3)
    assert str(info.value) == "invalid job: batchsize: Extra inputs are not permitted"


def test_job_spec_from_file(tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"model": "m.onnx", "input": "in", "output": "out", "batch_size": 7}))
    job = sluice.JobSpec.from_file(spec, output="elsewhere")
    assert (job.model, job.output, job.batch_size, job.output_format) == ("m.onnx", "elsewhere", 7, "parquet")


def test_public_names_match_all() -> None:
    assert sluice.__all__ == sorted(sluice.__all__)
    for name in sluice.__all__:
        assert getattr(sluice, name) is not None
    with pytest.raises(AttributeError):
        _ = sluice.not_a_name  # type: ignore[attr-defined]


def test_every_error_is_a_sluice_error_with_an_exit_code() -> None:
    from sluice import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, SluiceError)
        assert cls.exit_code in (1, 2, 3, 4, 130)  # 4: the output is being written by another run


def test_import_is_cheap() -> None:
    code = (
        "import sys, sluice\n"
        "heavy = ['onnxruntime', 'torch', 'pyspark', 'ray', 'sklearn', 'skops']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_loads_no_engine() -> None:
    code = (
        "import sys\n"
        "from sluice.cli.main import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    heavy = ['onnxruntime', 'torch', 'pyspark', 'ray', 'sklearn']\n"
        "    print('loaded', sorted(m for m in heavy if m in sys.modules), 'exit', exc.code, file=sys.stderr)\n"
    )
    result = _python(code, "--help")
    assert "loaded [] exit 0" in result.stderr
    for command in ("predict", "demo", "models"):
        assert command in result.stdout


def test_help_in_a_real_process() -> None:
    result = _python(CLI, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("predict", "demo", "models"):
        assert command in result.stdout
    result = _python(CLI, "predict", "--help")
    assert result.returncode == 0, result.stderr
    assert "--key-column" in result.stdout


def test_demo_end_to_end(tmp_path: Path) -> None:
    result = invoke("demo", "--dir", tmp_path, "--rows", "300", "--files", "2", "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo-output"
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    ids = pq.read_table(out / "part-00000.parquet").column("id").to_pylist()
    ids += pq.read_table(out / "part-00001.parquet").column("id").to_pylist()
    assert ids == list(range(300))
    assert (out / "_SUCCESS").exists()
    assert (tmp_path / "models" / "demo" / "1" / "model.onnx").is_file()
    again = invoke("demo", "--dir", tmp_path, "--rows", "300", "--files", "2", "-q")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "_summary.json").read_text())["rows"] == 300
