"""Tuning on real models and data: measurements, `sluice tune`, and `--batch-size auto`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import Models
from sluice.errors import ConfigError, DataError
from sluice.models import load_model
from sluice.tune.api import load_sample, parse_bytes, thread_setups
from sluice.tune.measure import ModelBench
from sluice.tune.profile import Profile, Setup
from support import FEATURES, invoke, make_table, write_module, write_table

FAILING_MODULE = """
import numpy as np

def predict(x):
    if len(x) > 8:
        raise ValueError("batches over 8 rows are refused")
    return x.sum(axis=1)
"""


@pytest.fixture
def sample(models: Models) -> dict[str, np.ndarray]:
    x = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    return {"X": x}


def test_parse_bytes() -> None:
    assert parse_bytes("2GiB") == 2 << 30
    assert parse_bytes("512MB") == 512_000_000
    assert parse_bytes("1.5k") == 1536
    assert parse_bytes("1e9") == 1_000_000_000
    assert parse_bytes(4096) == 4096
    with pytest.raises(ConfigError, match=r"memory size '2 parsecs' is not understood: use e\.g\. 2GiB"):
        parse_bytes("2 parsecs")


def test_thread_setups_put_the_engine_default_first(models: Models) -> None:
    onnx = load_model(str(models.onnx))
    assert thread_setups(onnx, cores=2) == ((2, 1), (1, 2))
    assert thread_setups(onnx, cores=8) == ((8, 1), (1, 8), (4, 2))
    assert thread_setups(onnx, cores=1) == ((1, 1),)


def test_load_sample_binds_the_first_rows_and_skips_bad_ones(models: Models, tmp_path: Path) -> None:
    table = make_table(40)
    write_table(table, tmp_path / "in.csv")
    text = (tmp_path / "in.csv").read_text().splitlines()
    text[3] = text[3].replace(text[3].split(",")[2], "oops")  # row 2, f0 is not a number
    (tmp_path / "in.csv").write_text("\n".join(text) + "\n")
    model = load_model(str(models.onnx))
    x = load_sample(model, str(tmp_path / "in.csv"), rows=10, features=FEATURES)["X"]
    expected = np.column_stack([table.column(f).to_numpy() for f in FEATURES])
    assert x.shape == (10, 4)
    np.testing.assert_array_equal(x, expected[[0, 1, 3, 4, 5, 6, 7, 8, 9, 10]])


def test_load_sample_with_no_usable_row_is_a_data_error(models: Models, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,f0,f1,f2,f3\n1,,,,\n")
    model = load_model(str(models.onnx))
    with pytest.raises(DataError, match=r"in\.csv holds no row the model can take, so there is nothing to tune on"):
        load_sample(model, str(tmp_path / "in.csv"), features=FEATURES)


def test_measurement_of_a_real_model(models: Models, sample: dict[str, np.ndarray]) -> None:
    bench = ModelBench(load_model(str(models.onnx)).source, sample, min_seconds=0.01)
    m = bench(Setup(512, 2, 1))
    assert m.status == "ok"
    assert m.setup == Setup(512, 2, 1)
    assert m.rows_per_second > 0
    assert m.batches >= 6  # at least min_calls per worker
    assert m.latency_p50_ms is not None and m.latency_p99_ms is not None
    assert m.latency_p50_ms <= m.latency_p99_ms
    assert m.peak_memory_bytes is not None and m.peak_memory_bytes >= 0


def test_batches_repeat_a_short_sample(models: Models, sample: dict[str, np.ndarray]) -> None:
    bench = ModelBench(load_model(str(models.onnx)).source, sample)
    first, second = bench.batches(512, 2)
    assert first["X"].shape == (512, 4)
    np.testing.assert_array_equal(first["X"][300:], sample["X"][:212])
    np.testing.assert_array_equal(second["X"][0], sample["X"][512 % 300])


def test_a_set_up_over_the_memory_limit_is_not_run(models: Models, sample: dict[str, np.ndarray]) -> None:
    bench = ModelBench(load_model(str(models.onnx)).source, sample, memory_limit_bytes=1000)
    m = bench(Setup(1024, 1, 1))
    assert (m.status, m.note) == ("over_memory", "inputs alone need 16,384 bytes")


def test_failures_and_time_caps_are_recorded_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "picky_model", FAILING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("picky_model:predict")
    sample = {"input": np.ones((20, 3))}
    bench = ModelBench(model.source, sample, min_seconds=0.01)
    assert bench(Setup(8, 1, 1)).status == "ok"
    failed = bench(Setup(16, 1, 1))
    assert failed.status == "error"
    assert "batches over 8 rows are refused" in failed.note
    slow = ModelBench(model.source, sample, max_batch_seconds=0.0)
    timed_out = slow(Setup(4, 1, 1))
    assert timed_out.status == "timeout"
    assert timed_out.note.startswith("one batch took ")


@pytest.mark.slow
def test_sluice_tune_end_to_end(models: Models, tmp_path: Path) -> None:
    write_table(make_table(2000), tmp_path / "sample.parquet")
    out = tmp_path / "tune.json"
    result = invoke(
        "tune", "-m", models.onnx, "-i", tmp_path / "sample.parquet", "--key-column", "id",
        "--max-batch-size", "4096", "--price-per-hour", "0.5", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"sluice tune: {models.onnx.name}, 2,000 sample rows" in result.stdout
    assert "choice: highest throughput measured" in result.stdout
    profile = Profile.from_dict(json.loads(out.read_text()))
    assert profile.chosen is not None
    assert profile.price_per_hour == 0.5
    ok = [m for m in profile.measurements if m.ok]
    assert profile.chosen.rows_per_second == max(m.rows_per_second for m in ok)
    assert {m.setup.batch_size for m in profile.measurements} <= {2**k for k in range(13)}
    assert len({m.setup for m in profile.measurements}) == len(profile.measurements)
    assert profile.sample_rows == 2000


def test_sluice_tune_latency_budget_nobody_meets(models: Models, tmp_path: Path) -> None:
    write_table(make_table(300), tmp_path / "sample.parquet")
    result = invoke(
        "tune", "-m", models.onnx, "-i", tmp_path / "sample.parquet", "--key-column", "id",
        "--max-latency-ms", "0.0000001", "--max-batch-size", "64",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "choice: no set-up met the budgets: the lowest p99 was" in " ".join(result.stdout.split())


def test_sluice_tune_rejects_two_prices(models: Models, tmp_path: Path) -> None:
    write_table(make_table(30), tmp_path / "sample.parquet")
    result = invoke(
        "tune", "-m", models.onnx, "-i", tmp_path / "sample.parquet",
        "--price-per-hour", "1", "--instance", "c7i.large",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--price-per-hour and --instance both set a price: pass one of them" in result.stderr
    assert "Traceback" not in result.output


def test_batch_size_auto_tunes_once_then_uses_the_cache(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_CACHE_DIR", str(tmp_path / "cache"))
    write_table(make_table(3000), tmp_path / "in" / "a.parquet")
    common = ["predict", "-m", models.onnx, "-i", tmp_path / "in", "--key-column", "id", "-q"]
    spec = tmp_path / "job.yaml"
    spec.write_text("tune_min_rows: 1000\n")
    first = invoke(*common, "-o", tmp_path / "out1", "--spec", spec)
    assert first.exit_code == 0, first.output
    s1 = json.loads((tmp_path / "out1" / "_summary.json").read_text())
    assert s1["batch_size_source"] == "tuned"
    assert s1["tuning_seconds"] > 0
    assert s1["batch_size"] >= 1024  # the engine's per-batch cost rules out smaller auto sizes
    second = invoke(*common, "-o", tmp_path / "out2", "--spec", spec)
    assert second.exit_code == 0, second.output
    s2 = json.loads((tmp_path / "out2" / "_summary.json").read_text())
    assert (s2["batch_size_source"], s2["tuning_seconds"], s2["batch_size"]) == ("cache", 0.0, s1["batch_size"])
    assert s2["rows"] == 3000
    cached = json.loads((tmp_path / "cache" / "batch-sizes.json").read_text())
    assert [v["batch_size"] for v in cached.values()] == [s1["batch_size"]]


def test_small_inputs_and_explicit_sizes_skip_tuning(models: Models, tmp_path: Path) -> None:
    write_table(make_table(50), tmp_path / "in.parquet")
    base = ["predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "--key-column", "id", "-q"]
    assert invoke(*base, "-o", tmp_path / "a").exit_code == 0
    small = json.loads((tmp_path / "a" / "_summary.json").read_text())
    assert (small["batch_size"], small["batch_size_source"], small["tuning_seconds"]) == (4096, "default", 0.0)
    assert invoke(*base, "-o", tmp_path / "b", "--batch-size", "7").exit_code == 0
    given = json.loads((tmp_path / "b" / "_summary.json").read_text())
    assert (given["batch_size"], given["batch_size_source"]) == (7, "option")
