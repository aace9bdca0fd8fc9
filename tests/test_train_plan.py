"""``sluice train plan``: ring all-reduce arithmetic, the parsers and the command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sluice.cli.train_plan_command import plan
from sluice.errors import ConfigError
from sluice.train.plan import (
    default_layer_width,
    parse_bandwidth,
    parse_latency_us,
    parse_params,
    plan_communication,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "training-plan.md"
PARAMS_HELP = "expected a positive number such as 350M, 1.3B, 7e9 or 125k (suffixes K, M, B, T)"
BANDWIDTH_HELP = (
    "expected a rate with a unit such as 100Gbit, 25Gbps, 400Mbit (bits per second) or 10GB/s, 1GiB/s "
    "(bytes per second)"
)
LATENCY_HELP = "expected microseconds such as 5, 5us, 2.5µs or 0.01ms (0 or more)"


def _worked_example(layer_width: int | None = None):  # type: ignore[no-untyped-def]
    return plan_communication(350_000_000, 64, 12.5e9, latency_us=5, dtype_bytes=4, powersgd_rank=4,
                              localsgd_period=8, layer_width=layer_width)  # fmt: skip


def test_ring_allreduce_worked_example() -> None:
    # S = 350e6 × 4 = 1.4e9 B; B = 100 Gbit/s = 12.5e9 B/s; 2(N−1)/N = 126/64 = 1.96875
    # bandwidth: 1.96875 × 1.4e9 / 12.5e9 = 0.2205 s; latency: 2 × 63 × 5 µs = 630 µs
    p = _worked_example()
    assert p.gradient_bytes == 1_400_000_000
    assert p.ring_factor == 1.96875
    assert p.bandwidth_seconds == pytest.approx(0.2205, rel=1e-12)
    assert p.latency_term_seconds == pytest.approx(0.00063, rel=1e-12)
    assert p.allreduce_seconds == pytest.approx(0.22113, rel=1e-12)


def test_strategies_worked_example() -> None:
    costs = {c.strategy: c for c in _worked_example().strategies}
    assert list(costs) == ["ddp", "fp16", "powersgd", "localsgd"]
    assert costs["ddp"].seconds_per_step == pytest.approx(0.22113, rel=1e-12)
    assert costs["ddp"].speedup == 1.0
    # fp16: half the bytes, same latency: 0.11025 + 0.00063
    assert costs["fp16"].bytes_per_step == 700_000_000
    assert costs["fp16"].seconds_per_step == pytest.approx(0.11088, rel=1e-12)
    assert costs["fp16"].speedup == pytest.approx(0.22113 / 0.11088, rel=1e-12)
    # PowerSGD, assumed width 1536: 1536² / (4 × 2 × 1536) = 192× fewer bytes, two all-reduces:
    # 1.96875 × (1.4e9 / 192) / 12.5e9 = 0.0011484375 s + 2 × 630 µs
    psgd = costs["powersgd"]
    assert psgd.bytes_per_step == pytest.approx(1.4e9 / 192, rel=1e-12)
    assert psgd.bandwidth_seconds == pytest.approx(0.0011484375, rel=1e-12)
    assert psgd.latency_seconds == pytest.approx(0.00126, rel=1e-12)
    assert psgd.seconds_per_step == pytest.approx(0.0024084375, rel=1e-12)
    # local SGD: the full all-reduce every 8 steps: 0.22113 / 8
    assert costs["localsgd"].seconds_per_step == pytest.approx(0.02764125, rel=1e-12)
    assert costs["localsgd"].speedup == pytest.approx(8.0, rel=1e-12)


def test_powersgd_with_given_layer_width() -> None:
    p = _worked_example(layer_width=1024)
    assert p.powersgd_compression == 128.0
    assert not p.layer_width_assumed
    psgd = p.strategies[2]
    # 1.4e9 / 128 = 10,937,500 B; 1.96875 × 10,937,500 / 12.5e9 = 0.00172265625 s; + 0.00126 s
    assert psgd.bytes_per_step == 10_937_500
    assert psgd.seconds_per_step == pytest.approx(0.00298265625, rel=1e-12)


@pytest.mark.parametrize(
    ("params", "width"), [(125_000, 128), (350_000_000, 1536), (1_300_000_000, 2432), (7_000_000_000, 4224)]
)
def test_default_layer_width(params: int, width: int) -> None:
    # (128/12 · P)^(1/3) = 110.1, 1551.3, 2402.5, 4210.9 → nearest multiple of 64 (at least 64)
    assert default_layer_width(params) == width


def test_two_workers_and_zero_latency() -> None:
    p = plan_communication(1_000_000, 2, 1e9, latency_us=0, dtype_bytes=2)
    # 2(2−1)/2 = 1: each worker sends the whole 2 MB once: 2e6 / 1e9 = 2 ms
    assert p.allreduce_seconds == pytest.approx(0.002, rel=1e-12)
    assert p.latency_term_seconds == 0


def test_worked_example_numbers_are_in_the_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    for figure in ["1.96875", "0.2205 s", "630 µs", "0.22113 s", "0.11088 s", "1536", "192×", "0.0024084375 s",
                   "0.02764125 s", "0.00298265625 s", "91.8×"]:  # fmt: skip
        assert figure in text, figure


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("350M", 350_000_000),
        ("1.3B", 1_300_000_000),
        ("7e9", 7_000_000_000),
        ("125k", 125_000),
        ("1_000_000", 1_000_000),
        (" 2T ", 2_000_000_000_000),
        ("1.5m", 1_500_000),
        ("42", 42),
    ],
)
def test_parse_params(text: str, count: int) -> None:
    assert parse_params(text) == count


@pytest.mark.parametrize("text", ["", "abc", "0", "-5M", "5X", "1.2.3M", "M", "1__0"])
def test_parse_params_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_params(text)
    assert str(exc.value) == f"invalid parameter count {text!r}: {PARAMS_HELP}"


@pytest.mark.parametrize(
    ("text", "bytes_per_s"),
    [
        ("100Gbit", 12.5e9),
        ("25Gbps", 3.125e9),
        ("10GB/s", 10e9),
        ("400Mbit", 50e6),
        ("800Gb/s", 100e9),
        ("10 Gbit/s", 1.25e9),
        ("1GiB/s", 2.0**30),
        ("2.5GBps", 2.5e9),
    ],
)
def test_parse_bandwidth(text: str, bytes_per_s: float) -> None:
    assert parse_bandwidth(text) == bytes_per_s


@pytest.mark.parametrize("text", ["100", "100G", "fast", "0Gbit", "1kiB/s", "10 GHz", "-1Gbit"])
def test_parse_bandwidth_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_bandwidth(text)
    assert str(exc.value) == f"invalid bandwidth {text!r}: {BANDWIDTH_HELP}"


@pytest.mark.parametrize(
    ("text", "us"), [("5", 5.0), ("5us", 5.0), ("2.5µs", 2.5), ("0.01ms", 10.0), ("0", 0.0), ("1s", 1e6)]
)
def test_parse_latency(text: str, us: float) -> None:
    assert parse_latency_us(text) == us


@pytest.mark.parametrize("text", ["-1", "5ns", "x", ""])
def test_parse_latency_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_latency_us(text)
    assert str(exc.value) == f"invalid latency {text!r}: {LATENCY_HELP}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 1}, "`workers` must be at least 2 (one worker communicates nothing), found 1"),
        ({"dtype_bytes": 3}, "`dtype_bytes` must be 1, 2, 4 or 8, found 3"),
        ({"powersgd_rank": 0}, "`powersgd_rank` must be at least 1, found 0"),
        ({"localsgd_period": 0}, "`localsgd_period` must be at least 1, found 0"),
        ({"latency_us": -1.0}, "`latency_us` must be 0 or more, found -1"),
        ({"layer_width": 2, "powersgd_rank": 4}, "`layer_width` must be at least the PowerSGD rank 4, found 2"),
    ],
)
def test_plan_rejects(kwargs: dict[str, float], message: str) -> None:
    args: dict[str, float] = {"workers": 8, **kwargs}
    workers = int(args.pop("workers"))
    with pytest.raises(ConfigError) as exc:
        plan_communication(1_000_000, workers, 1e9, **args)  # type: ignore[arg-type]
    assert str(exc.value) == message
    assert exc.value.params == (message.split("`")[1],)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "1"], "error: --workers must be at least 2 (one worker communicates nothing), found 1"),
        (["--workers", "8", "--dtype-bytes", "3"], "error: --dtype-bytes must be 1, 2, 4 or 8, found 3"),
        (["--workers", "8", "--latency-us", "-1"], "error: invalid latency '-1': " + LATENCY_HELP),
        (
            ["--workers", "8", "--layer-width", "2", "--powersgd-rank", "4"],
            "error: --layer-width must be at least the PowerSGD rank 4, found 2",
        ),
    ],
)
def test_command_names_flags_where_the_api_names_parameters(args: list[str], message: str) -> None:
    result = CliRunner().invoke(_app(), ["plan", "--params", "1M", "--bandwidth", "10GB/s", *args])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == message


# -- the command ------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("plan")(plan)
    app.command("other")(lambda: None)  # two commands, so typer keeps "plan" as a sub-command
    return app


def test_command_prints_the_plan() -> None:
    result = CliRunner().invoke(
        _app(), ["plan", "--params", "350M", "--workers", "64", "--bandwidth", "100Gbit"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "220 ms + 630 µs = 221 ms per step" in out
    assert re.search(r"powersgd\s.*2\.41 ms\s.*91\.8×", out)
    assert "assumption from the parameter count" in out


def test_command_json() -> None:
    args = ["plan", "--params", "1.3B", "--workers", "8", "--bandwidth", "25Gbps", "--latency-us", "10",
            "--layer-width", "2048", "--json"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # 2·7/8 × 5.2e9 B / 3.125e9 B/s = 2.912 s; 2·7·10 µs = 140 µs
    assert data["allreduce_seconds"] == pytest.approx(2.912 + 0.00014, rel=1e-12)
    assert data["powersgd_compression"] == 256.0
    assert data["layer_width_assumed"] is False


def test_command_bad_value_exits_2() -> None:
    result = CliRunner().invoke(_app(), ["plan", "--params", "lots", "--workers", "8", "--bandwidth", "10GB/s"])
    assert result.exit_code == 2
    assert f"invalid parameter count 'lots': {PARAMS_HELP}" in " ".join(result.output.split())
