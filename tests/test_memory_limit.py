"""``--memory-limit``: the batch size from the peak memory per record measured on the first rows.

The test model writes 1 MiB of scratch memory per record, so the probe's figures and the
batch they allow are known; the fitting rule itself is checked on exact figures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sluice.errors import ConfigError
from sluice.tune.memory import MARGIN, Probe, fit_batch
from support import invoke, make_table, read_output, write_module, write_table

MIB = 1 << 20

ALLOC_MODULE = """
import numpy as np


def predict(x):
    scratch = np.ones((x.shape[0], 131072))  # 1 MiB a record, every page written
    return x.sum(axis=1) + scratch[:, 0] - 1.0
"""


REFUSING_MODULE = """
def predict(x):
    raise ValueError("no record is welcome")
"""


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_module(tmp_path / "work", "alloc_mib_rows", ALLOC_MODULE)
    write_module(tmp_path / "work", "refusing_rows", REFUSING_MODULE)
    monkeypatch.chdir(tmp_path / "work")
    write_table(make_table(300), tmp_path / "in.parquet")
    return tmp_path


def _predict(work: Path, out: str, *extra: str) -> tuple[int, str, Path]:
    result = invoke(
        "predict", "-m", "alloc_mib_rows:predict", "-i", work / "in.parquet", "-o", work / out,
        "--key-column", "id", "--workers", "1", "--json", "-q", *extra,
    )  # fmt: skip
    return result.exit_code, result.output, work / out


def _summary(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "_summary.json").read_text())
    return data


# -- the fitting rule, on exact figures --------------------------------------------------------


def test_fit_takes_the_line_through_the_two_largest_probes() -> None:
    probes = [Probe(8, 8 * MIB + 100_000), Probe(32, 32 * MIB + 100_000), Probe(2, 50 * MIB)]
    fit = fit_batch(probes, 64 * MIB, input_row_bytes=32, where="host")
    # slope 1 MiB from 8 -> 32 rows, 100,000 bytes per call; (0.8 × 64 MiB - 100,000) // (1 MiB + 32)
    assert (fit.per_row_bytes, fit.fixed_bytes) == (MIB + 32, 100_000)
    assert fit.batch_size == int((64 * MIB * (1 - MARGIN) - 100_000) // (MIB + 32)) == 51
    assert fit.describe() == (
        "1.0 MiB per record + 97.7 KiB per call measured on host; the memory limit 64.0 MiB less its 20% "
        "margin holds 51 records"
    )


def test_fit_charges_the_whole_peak_to_the_rows_when_the_probes_do_not_grow() -> None:
    fit = fit_batch([Probe(8, 4096), Probe(32, 4096)], 1 * MIB, input_row_bytes=0, where="cuda:0")
    assert (fit.per_row_bytes, fit.fixed_bytes, fit.batch_size) == (128, 0, 6553)


def test_fit_refuses_a_limit_below_one_record_naming_the_figures() -> None:
    with pytest.raises(ConfigError) as caught:
        fit_batch([Probe(8, 8 * MIB), Probe(32, 32 * MIB)], MIB, input_row_bytes=0, where="cuda:0")
    assert str(caught.value) == (
        "`memory_limit` 1.0 MiB cannot hold one record: measured on cuda:0, 32 records took 32.0 MiB "
        "(1.0 MiB per record with its inputs + 0 B per call), over the 819.2 KiB the limit leaves after its "
        "20% margin; raise the limit"
    )
    assert caught.value.params == ("memory_limit",)


def test_the_probe_grows_fourfold_and_stops_at_half_the_usable_limit(work: Path) -> None:
    from sluice.models import load_model
    from sluice.tune.memory import memory_bound

    model = load_model("alloc_mib_rows:predict")
    sample = {"input": np.ones((50, 4))}
    fit = memory_bound(model, sample, 64 * MIB, 4096)
    assert [p.rows for p in fit.probes] == [8, 32]  # 32 MiB is over half of 0.8 × 64 MiB
    assert fit.where == "host"
    fit = memory_bound(model, sample, 1 << 30, 100)
    assert [p.rows for p in fit.probes] == [8, 32, 100]  # up to the batch size asked for
    assert 0.95 * MIB <= fit.per_row_bytes <= 1.05 * MIB


# -- sluice predict --memory-limit ------------------------------------------------------------


def test_the_limit_bounds_the_batch_and_the_outputs_are_those_of_an_unbounded_run(work: Path) -> None:
    code, output, out = _predict(work, "bounded", "--batch-size", "100", "--memory-limit", "64MiB")
    assert code == 0, output
    summary = _summary(out)
    per_row = int(str(summary["memory_per_row_bytes"]))
    assert 0.95 * MIB <= per_row <= 1.05 * MIB  # 1 MiB of scratch and the record's 32 bytes of input
    batch = int(str(summary["batch_size"]))
    assert 40 <= batch < 100
    assert batch * per_row <= 64 * MIB * (1 - MARGIN)
    assert summary["batch_size_source"] == "memory"
    assert summary["memory_limit_bytes"] == 64 * MIB
    assert (summary["rows"], summary["rows_failed"], summary["final_batch_size"]) == (300, 0, batch)
    reason = str(summary["batch_size_reason"])
    assert reason.startswith("bounded by memory: ")
    assert reason.endswith(f"holds {batch} records (unbounded: the `batch_size` option, 100)")
    assert json.loads(output) == summary  # --json prints what _summary.json holds

    code, output, plain = _predict(work, "plain", "--batch-size", "100")
    assert code == 0, output
    assert read_output(out / "part-00000.parquet").equals(read_output(plain / "part-00000.parquet"))
    summary = _summary(plain)
    assert (summary["batch_size"], summary["batch_size_source"], summary["memory_limit_bytes"]) == (100, "option", None)
    assert summary["batch_size_reason"] == "the `batch_size` option"


def test_a_batch_within_the_limit_is_kept(work: Path) -> None:
    code, output, out = _predict(work, "out", "--batch-size", "10", "--memory-limit", "1GiB")
    assert code == 0, output
    summary = _summary(out)
    assert (summary["batch_size"], summary["batch_size_source"], summary["rows"]) == (10, "option", 300)
    assert str(summary["batch_size_reason"]).startswith("the `batch_size` option; within the memory limit: ")


def test_auto_takes_the_default_down_to_the_limit(work: Path) -> None:
    code, output, out = _predict(work, "out", "--memory-limit", "32MiB")
    assert code == 0, output
    summary = _summary(out)
    assert summary["batch_size_source"] == "memory"
    assert 20 <= int(str(summary["batch_size"])) <= 25  # 0.8 × 32 MiB at 1 MiB a record
    assert str(summary["batch_size_reason"]).endswith(
        "(unbounded: the default: input under 262,144 rows, not worth tuning, 4,096)"
    )


def test_the_python_api_takes_the_limit(work: Path) -> None:
    import sluice

    summary = sluice.predict(
        "alloc_mib_rows:predict", str(work / "in.parquet"), str(work / "api"), memory_limit="48MiB", workers=1
    )
    assert summary.batch_size_source == "memory"
    assert summary.memory_limit_bytes == 48 * MIB
    assert summary.rows == 300


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("0", "error: invalid job: memory_limit: must be more than 0 bytes, e.g. 2GiB or 512MiB; found 0"),
        (
            "banana",
            "error: invalid job: memory_limit: memory size 'banana' is not understood: use e.g. 2GiB, 512MiB, "
            "8GB or a byte count",
        ),
    ],
)
def test_bad_limits_are_usage_errors(work: Path, limit: str, message: str) -> None:
    code, output, out = _predict(work, "out", "--memory-limit", limit)
    assert code == 2
    assert output.strip() == message
    assert not out.exists()


def test_a_limit_below_one_record_is_a_usage_error_naming_the_figures(work: Path) -> None:
    code, output, out = _predict(work, "out", "--memory-limit", "1MiB")
    assert code == 2
    assert output.startswith("error: --memory-limit 1.0 MiB cannot hold one record: measured on host, ")
    assert "over the 819.2 KiB the limit leaves after its 20% margin; raise the limit" in output
    assert not (out / "_SUCCESS").exists()


def test_a_model_failing_on_the_first_records_says_the_probe_could_not_measure(work: Path) -> None:
    result = invoke(
        "predict", "-m", "refusing_rows:predict", "-i", work / "in.parquet", "-o", work / "out",
        "--key-column", "id", "--memory-limit", "1GiB", "-q",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: measuring the memory per record for --memory-limit: the model failed on the input's first 8 "
        "records: refusing_rows:predict raised ValueError: no record is welcome"
    )


# -- sluice tune --memory-limit ---------------------------------------------------------------


def test_tune_searches_only_batch_sizes_under_the_limit(work: Path) -> None:
    result = invoke(
        "tune", "-m", "alloc_mib_rows:predict", "-i", work / "in.parquet", "--key-column", "id",
        "--memory-limit", "64MiB", "--sample-rows", "300", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    profile = json.loads(result.output)
    per_row = profile["memory_per_row_bytes"]
    assert 0.95 * MIB <= per_row <= 1.05 * MIB
    # the bound is the limit less its margin, less the measured memory per call, over the
    # memory per record: up to 1 MiB a call (the interpreter's own scratch) moves it by one
    searched = re.search(r"; batch sizes searched up to (\d+): .* holds (\d+) records$", profile["reason"])
    assert searched is not None, profile["reason"]
    bound = int(searched[1])
    assert int(searched[2]) == bound
    assert int((64 * MIB * (1 - MARGIN) - MIB) // per_row) <= bound <= int(64 * MIB * (1 - MARGIN) // per_row)
    assert {m["setup"]["batch_size"] for m in profile["measurements"]} <= set(range(1, bound + 1))
    assert profile["memory_limit_bytes"] == 64 * MIB


BYSTANDER = """
import sys, time
held = bytearray(256 << 20)
held[::4096] = b"x" * len(held[::4096])  # every page written: 256 MiB resident
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[str]]:
    """A child process of this one that holds 256 MiB and has nothing to do with the model."""
    proc = subprocess.Popen([sys.executable, "-c", BYSTANDER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_tune_charges_the_models_workers_not_every_child_of_the_process(
    work: Path, bystander: subprocess.Popen[str]
) -> None:
    result = invoke(
        "tune", "-m", "alloc_mib_rows:predict", "-i", work / "in.parquet", "--key-column", "id",
        "--memory-limit", "64MiB", "--sample-rows", "300", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    profile = json.loads(result.output)
    peaks = [m["peak_memory_bytes"] for m in profile["measurements"] if m["status"] == "ok"]
    assert peaks and max(peaks) < 256 * MIB, peaks
    assert profile["chosen"] is not None, profile["reason"]
    assert not profile["reason"].startswith("no set-up met the budgets"), profile["reason"]


def test_tune_refuses_a_zero_limit(work: Path) -> None:
    result = invoke("tune", "-m", "alloc_mib_rows:predict", "-i", work / "in.parquet", "--memory-limit", "0")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --memory-limit must be more than 0 bytes, found 0"
