"""The cost model: cost per 1M, the price table, the capacity planner and ``sluice cost``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sluice.cli.main import app
from sluice.errors import ConfigError
from sluice.tune.cost import (
    Instance,
    PriceTable,
    Throughput,
    cost_per_million,
    load_prices,
    parse_deadline,
    parse_prices,
    parse_rows,
    plan_capacity,
)
from sluice.tune.profile import Measurement, Profile, Setup
from support import SRC_ROOT

ROWS_HELP = "expected a positive whole number such as 1000000, 1_000_000, 1e9, 2.5M or 1B (suffixes K, M, B)"
DEADLINE_HELP = "expected a duration such as 2h, 90m, 45s or 1h30m (units d, h, m, s, largest first)"


def _instance(name: str, vcpus: int, price: float, spot: float | None = None, gpus: int = 0) -> Instance:
    return Instance(
        name=name, provider="test", vcpus=vcpus, memory_gib=8, gpus=gpus, gpu="NVIDIA T4" if gpus else None,
        on_demand_usd_per_hour=price, spot_usd_per_hour=spot, source="test", date="2026-01",
    )  # fmt: skip


# -- cost per 1M -------------------------------------------------------------------------


def test_cost_per_million_exact() -> None:
    assert cost_per_million(3.6, 1000) == 1.0  # $3.60/h at 1,000 rows/s: 3.6M rows per $3.60
    assert cost_per_million(0.36, 100) == pytest.approx(1.0, rel=1e-15)
    assert cost_per_million(0.0, 10) == 0.0


@pytest.mark.parametrize(("price", "rate"), [(None, 100.0), (1.0, 0.0), (1.0, -5.0)])
def test_cost_per_million_none(price: float | None, rate: float) -> None:
    assert cost_per_million(price, rate) is None


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("1e9", 10**9),
        ("1_000_000", 10**6),
        ("2.5M", 2_500_000),
        ("1B", 10**9),
        ("1b", 10**9),
        ("10k", 10_000),
        (" 42 ", 42),
        ("1.5e3", 1500),
        ("1e+6", 10**6),
    ],
)
def test_parse_rows(text: str, rows: int) -> None:
    assert parse_rows(text) == rows
    assert isinstance(parse_rows(text), int)


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "1.5", "2.5Q", "1__0", "1e-3", "1 000", "M"])
def test_parse_rows_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rows(text)
    assert str(info.value) == f"invalid row count {text!r}: {ROWS_HELP}"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2h", 7200), ("90m", 5400), ("45s", 45), ("1h30m", 5400), ("1.5h", 5400), ("1d", 86400), ("1H 30M", 5400)],
)
def test_parse_deadline(text: str, seconds: float) -> None:
    assert parse_deadline(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "30m1h", "0s", "2 hours", "h", "-1h", "1h30"])
def test_parse_deadline_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_deadline(text)
    assert str(info.value) == f"invalid deadline {text!r}: {DEADLINE_HELP}"


# -- the price table ---------------------------------------------------------------------


def test_builtin_table_validates_and_cites_every_price() -> None:
    table = load_prices(environ={})
    assert 12 <= len(table.instances) <= 16
    assert {i.provider for i in table} == {"aws", "gcp", "azure"}
    for inst in table:
        assert inst.source.strip() and "approximate" in inst.source.lower(), inst.name
        assert len(inst.date) == 7 and inst.date[4] == "-", inst.name
        assert inst.on_demand_usd_per_hour > 0
        assert (inst.gpus > 0) == (inst.gpu is not None)
    for name in ("c7i.large", "c7i.xlarge", "c7i.4xlarge", "m7i.2xlarge", "g5.xlarge", "g6.xlarge", "p4d.24xlarge"):
        assert table.get(name).provider == "aws"
    for name in ("n2-standard-4", "c3-standard-8", "g2-standard-4", "a2-highgpu-1g"):
        assert table.get(name).provider == "gcp"
    assert table.get("Standard_D4s_v5").vcpus == 4
    assert table.get("standard_nc4as_t4_v3").gpu == "NVIDIA T4"  # names match case-insensitively


def test_builtin_table_ships_in_the_package() -> None:
    assert (SRC_ROOT / "sluice" / "tune" / "prices.yaml").is_file()


def test_unknown_instance_names_close_matches() -> None:
    table = load_prices(environ={})
    with pytest.raises(ConfigError) as info:
        table.get("c7i.xlage")
    assert str(info.value) == (
        "unknown instance 'c7i.xlage' in the built-in price table (sluice/tune/prices.yaml); "
        "did you mean c7i.xlarge, c7i.4xlarge, c7i.large? (add your own with `prices=FILE`)"
    )
    assert info.value.params == ("prices",)


def test_unknown_instance_without_close_match_lists_all() -> None:
    table = PriceTable((_instance("box-a", 2, 0.1), _instance("box-b", 4, 0.2)), "t.yaml")
    with pytest.raises(ConfigError, match=r"^unknown instance 'zzzzzz' in t.yaml; known instances: box-a, box-b "):
        table.get("zzzzzz")


USER_TABLE = """\
instances:
  - name: mybox
    provider: on-prem
    vcpus: {vcpus}
    memory_gib: 64
    on_demand_usd_per_hour: 0.5
    source: our finance team
    date: "2026-01"
"""


def test_user_table_from_flag_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(USER_TABLE.format(vcpus=32))
    for table in (load_prices(path, environ={}), load_prices(environ={"SLUICE_PRICES": str(path)})):
        assert [i.name for i in table] == ["mybox"]
        assert table.get("mybox").spot_usd_per_hour is None
        assert table.source == str(path)


def test_bad_user_table_names_file_entry_and_field(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(USER_TABLE.format(vcpus=0))
    with pytest.raises(ConfigError) as info:
        load_prices(path, environ={})
    assert str(info.value) == f"{path}: instances[0] (mybox): vcpus: Input should be greater than or equal to 1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("instances:\n  - name: x\n    provider: p\n    vcpus: 2\n    memory_gib: 1\n    on_demand_usd_per_hour: 1\n"
         "    date: '2026-01'\n", "instances[0] (x): source: Field required"),
        ("instances:\n  - {name: x, provider: p, vcpus: 2, memory_gib: 1, on_demand_usd_per_hour: 1, source: s, "
         "date: '2026-01', gpus: 1}\n", "instances[0] (x): Value error, gpu must name the GPU model when gpus > 0"),
        ("instances:\n  - {name: x, provider: p, vcpus: 2, memory_gib: 1, on_demand_usd_per_hour: 1, source: s, "
         "date: 'Jan 2026'}\n", "instances[0] (x): date: String should match pattern '^\\d{4}-\\d{2}$'"),
        ("instances:\n  - {name: x, provider: p, vcpus: 2, memory_gib: 1, on_demand_usd_per_hour: 1, source: s, "
         "date: '2026-01', cpus: 2}\n", "instances[0] (x): cpus: Extra inputs are not permitted"),
        ("instances: []\n", "instances: List should have at least 1 item after validation, not 0"),
        ("machines: []\n", "instances: Field required; machines: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_bad_table_messages(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_prices(text, "p.yaml")
    assert str(info.value) == f"p.yaml: {message}"


def test_table_rejects_duplicates_and_non_mappings() -> None:
    entry = "{name: X, provider: p, vcpus: 2, memory_gib: 1, on_demand_usd_per_hour: 1, source: s, date: '2026-01'}"
    with pytest.raises(ConfigError, match=r"^p.yaml: instance\(s\) listed more than once: X$"):
        parse_prices(f"instances:\n  - {entry}\n  - {entry.replace('X', 'x')}\n", "p.yaml")
    with pytest.raises(ConfigError, match=r"^p.yaml must hold a mapping with an 'instances' list, found list$"):
        parse_prices("- a\n", "p.yaml")
    with pytest.raises(ConfigError, match=r"^p.yaml is not valid YAML: "):
        parse_prices("instances: [\n", "p.yaml")


def test_missing_table_from_environment(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_prices(environ={"SLUICE_PRICES": str(missing)})
    assert str(info.value) == f"cannot read price table {missing} (from $SLUICE_PRICES): No such file or directory"


# -- the planner -------------------------------------------------------------------------


def test_plan_worked_example() -> None:
    # 500,000 rows/s on 2 cores → 1,000,000 rows/s on a 4-vCPU c7i.xlarge; 1e9 rows take 1,000 s
    # on one instance, well inside 2 h, so 1 instance, billed 1,000 s.
    xlarge = load_prices(environ={}).get("c7i.xlarge")
    assert xlarge.vcpus == 4
    plan = plan_capacity(Throughput(500_000, 2), parse_rows("1e9"), parse_deadline("2h"), [xlarge])
    (p,) = plan.plans
    assert p.rows_per_second_per_instance == 1_000_000
    assert p.instances_needed == 1
    assert p.wall_seconds == 1000
    assert p.on_demand_usd == pytest.approx(1000 / 3600 * xlarge.on_demand_usd_per_hour, rel=1e-12)
    assert xlarge.spot_usd_per_hour is not None
    assert p.spot_usd == pytest.approx(1000 / 3600 * xlarge.spot_usd_per_hour, rel=1e-12)
    assert plan.cheapest is p
    assert plan.assumption.startswith(
        "Throughput scales linearly with vCPUs: 500,000 rows/s measured on 2 cores is 250,000 rows/s per vCPU."
    )


def test_plan_deadline_needs_more_instances() -> None:
    # 1e9 rows at 1e6 rows/s each in 10 min: 1e9 / (1e6 × 600) = 1.67 → 2 instances, 500 s each;
    # per-second billing makes the total the same as one instance for 1,000 s: 1000/3600 × $3.60.
    box = _instance("box", 4, 3.6, spot=0.36)
    (p,) = plan_capacity(Throughput(500_000, 2), 10**9, 600, [box]).plans
    assert (p.instances_needed, p.wall_seconds) == (2, 500)
    assert p.on_demand_usd == pytest.approx(1.0, rel=1e-12)
    assert p.spot_usd == pytest.approx(0.1, rel=1e-12)


def test_plan_exact_fit_does_not_round_up() -> None:
    (p,) = plan_capacity(Throughput(1_000_000, 4), 7_200_000_000, 7200, [_instance("box", 4, 1.0)]).plans
    assert (p.instances_needed, p.wall_seconds, p.on_demand_usd) == (1, 7200, 2.0)


def test_plan_sorts_by_on_demand_cost_and_lists_unplanned_last() -> None:
    candidates = [
        _instance("gpu", 4, 0.5, gpus=1),
        _instance("dear", 4, 0.8),
        _instance("cheap", 8, 0.4),  # twice the vCPUs for half the price of "dear"
    ]
    plan = plan_capacity(Throughput(1000, 1), 36_000_000, 3600, candidates)
    assert [p.instance.name for p in plan.plans] == ["cheap", "dear", "gpu"]
    cheap, dear, gpu = plan.plans
    assert (cheap.rows_per_second_per_instance, cheap.instances_needed, cheap.wall_seconds) == (8000, 2, 2250)
    assert cheap.on_demand_usd == pytest.approx(2 * 2250 / 3600 * 0.4)
    assert (dear.instances_needed, dear.wall_seconds) == (3, 3000)
    assert plan.cheapest is cheap
    assert gpu.not_planned == "not planned: needs a GPU measurement"
    assert (gpu.rows_per_second_per_instance, gpu.instances_needed, gpu.on_demand_usd) == (None, None, None)
    assert plan.to_dict()["cheapest"] == "cheap"


def test_plan_cost_ties_go_to_the_faster_plan() -> None:
    # Same price per vCPU: under linear scaling both cost the same; the bigger one finishes first.
    small, big = _instance("a-small", 2, 0.1), _instance("b-big", 8, 0.4)
    plan = plan_capacity(Throughput(1000, 2), 3_600_000, 7200, [small, big])
    assert [p.instance.name for p in plan.plans] == ["b-big", "a-small"]
    assert [p.wall_seconds for p in plan.plans] == [900, 3600]
    assert plan.plans[0].on_demand_usd == pytest.approx(plan.plans[1].on_demand_usd)


def test_gpu_measurement_plans_gpu_instances_only() -> None:
    table = load_prices(environ={})
    candidates = table.select(["p4d.24xlarge", "g5.xlarge", "c7i.xlarge"])
    plan = plan_capacity(Throughput(300_000, 8, gpus=1), 10**9, 3600, candidates)
    by_name = {p.instance.name: p for p in plan.plans}
    assert by_name["g5.xlarge"].rows_per_second_per_instance == 300_000
    assert by_name["p4d.24xlarge"].rows_per_second_per_instance == 2_400_000  # 8 GPUs
    assert by_name["p4d.24xlarge"].spot_usd is None  # no spot figure in the table
    assert by_name["c7i.xlarge"].not_planned == "not planned: needs a CPU-only measurement"
    assert plan.plans[-1].instance.name == "c7i.xlarge"
    assert "assuming every GPU is as fast as the measured one" in plan.assumption


@pytest.mark.parametrize(
    ("measured", "rows", "deadline", "message"),
    [
        (Throughput(0, 2), 10, 60, "measured rows per second must be > 0, found 0 (rows_per_second)"),
        (Throughput(10, 0), 10, 60, "cores must be at least 1, found 0"),
        (Throughput(10, 2), 0, 60, "rows must be at least 1, found 0"),
        (Throughput(10, 2), 10, 0, "the deadline must be longer than 0 s, found 0"),
    ],
)
def test_plan_rejects_unusable_figures(measured: Throughput, rows: int, deadline: float, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_capacity(measured, rows, deadline, [_instance("box", 2, 1.0)])
    assert str(info.value) == message


# -- sluice cost -------------------------------------------------------------------------


def run_cost(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run ``sluice cost ARGS`` in-process on a wide terminal (the table does not wrap)."""
    environment = {"COLUMNS": "250", "SLUICE_PRICES": "", **(env or {})}
    return CliRunner().invoke(app, ["cost", *map(str, args)], env=environment)


def _profile(path: Path, rows_per_second: float = 500_000, cores: int = 2) -> Path:
    chosen = Measurement(Setup(4096, workers=2), "ok", rows_per_second=rows_per_second, latency_p99_ms=12.0)
    slower = Measurement(Setup(256, workers=2), "ok", rows_per_second=rows_per_second / 3)
    profile = Profile(
        model="demo@1", model_digest="abc", measurements=[slower, chosen], chosen=chosen, reason="fastest",
        hardware={"cpu": "test cpu", "cores": cores, "machine": "x86_64"},
    )  # fmt: skip
    path.write_text(json.dumps(profile.to_dict()))
    return path


def test_cli_profile_json(tmp_path: Path) -> None:
    tune = _profile(tmp_path / "tune.json")
    result = run_cost("--rows", "1e9", "--deadline", "2h", "--profile", tune, "--instance", "c7i.xlarge", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["rows"] == 10**9
    assert plan["deadline_seconds"] == 7200
    assert plan["measured"] == {
        "rows_per_second": 500_000,
        "cores": 2,
        "gpus": 0,
        "source": f"{tune}: batch 4096 × 2 worker(s) × 1 thread(s), the model alone, without reading and writing data",
    }
    assert plan["cheapest"] == "c7i.xlarge"
    assert plan["notes"] == []
    (row,) = plan["plans"]
    assert row["instance"] == "c7i.xlarge"
    assert (row["vcpus"], row["gpus"], row["planned"], row["not_planned"]) == (4, 0, True, None)
    assert row["rows_per_second_per_instance"] == 1_000_000
    assert row["instances_needed"] == 1
    assert row["wall_seconds"] == 1000
    assert row["on_demand_usd"] == pytest.approx(1000 / 3600 * row["on_demand_usd_per_hour"], rel=1e-12)
    assert row["spot_usd"] == pytest.approx(1000 / 3600 * row["spot_usd_per_hour"], rel=1e-12)
    assert row["on_demand_usd_per_million"] == pytest.approx(row["on_demand_usd_per_hour"] / 3600, rel=1e-12)


def test_cli_rate_and_cores_table() -> None:
    result = run_cost("--rows", "1e9", "--deadline", "2h", "--rows-per-second", "1500000", "--cores", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "1,000,000,000 rows within 2h00m; measured 1,500,000 rows/s on 2 cores (--rows-per-second)" in out
    assert "Scaling assumption: Throughput scales linearly with vCPUs: 1,500,000 rows/s measured on 2 cores" in out
    table = load_prices(environ={})
    cpu = [i for i in table if not i.gpus]
    plans = plan_capacity(Throughput(1_500_000, 2), 10**9, 7200, list(table)).plans
    cheapest = plans[0]
    assert cheapest.instance.name in out.split("cheapest:")[1]
    assert f"cheapest: 1 × {cheapest.instance.name} for " in out
    for inst in table:
        assert inst.name in out
    assert out.count("not planned: needs a GPU measurement") == len(table.instances) - len(cpu)
    # Rows appear cheapest first.
    positions = [out.index(f"│ {p.instance.name} ") for p in plans]
    assert positions == sorted(positions)
    assert "approximate list prices, check them for your region" in out
    assert result.stderr == ""


def test_cli_summary_without_cores_assumes_this_machine(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"rows": 10, "rows_per_second": 1234.5}))
    result = run_cost("--rows", "1M", "--deadline", "1h", "--summary", summary, "--instance", "c7i.large", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    cores = os.cpu_count() or 1
    assert plan["measured"]["cores"] == cores
    assert plan["measured"]["rows_per_second"] == 1234.5
    assert plan["notes"] == [
        f"assuming the throughput was measured on this machine's {cores} cores; pass --cores to say otherwise"
    ]
    assert plan["plans"][0]["rows_per_second_per_instance"] == pytest.approx(1234.5 * 2 / cores)


def test_cli_price_per_hour_prices_the_measured_machine() -> None:
    result = run_cost(
        "--rows", "36M", "--deadline", "1h", "--rows-per-second", "5000", "--cores", "4", "--price-per-hour", "2",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["prices"] == "--price-per-hour 2"
    (row,) = plan["plans"]
    assert (row["instance"], row["vcpus"], row["instances_needed"], row["wall_seconds"]) == (
        "measured machine",
        4,
        2,
        3600,
    )
    assert row["on_demand_usd"] == pytest.approx(4.0)
    assert row["spot_usd"] is None


def test_cli_price_per_hour_overrides_one_instance(tmp_path: Path) -> None:
    result = run_cost(
        "--rows", "1e9", "--deadline", "2h", "--profile", _profile(tmp_path / "tune.json"), "--instance", "c7i.xlarge",
        "--price-per-hour", "3.6", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["plans"]
    assert (row["instance"], row["on_demand_usd_per_hour"], row["spot_usd"]) == ("c7i.xlarge", 3.6, None)
    assert row["on_demand_usd"] == pytest.approx(1.0)


def test_cli_user_price_table_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(USER_TABLE.format(vcpus=32))
    result = run_cost("--rows", "1e9", "--deadline", "2h", "--rows-per-second", "1e5", "--cores", "2",
                      env={"SLUICE_PRICES": str(path)})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cheapest: 1 × mybox for 10m25s: $0.0868 on demand" in result.stdout
    assert f"prices: {path}\n" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "lots", "--deadline", "2h", "--rows-per-second", "1"], f"invalid row count 'lots': {ROWS_HELP}"),
        (["--rows", "1e9", "--deadline", "2", "--rows-per-second", "1"], f"invalid deadline '2': {DEADLINE_HELP}"),
        (
            ["--rows", "1e9", "--deadline", "2h"],
            "give the measured throughput with exactly one of --profile tune.json, --summary _summary.json "
            "or --rows-per-second N",
        ),
        (
            ["--rows", "1e9", "--deadline", "2h", "--rows-per-second", "1", "--summary", "s.json"],
            "give the measured throughput with exactly one of --profile tune.json, --summary _summary.json "
            "or --rows-per-second N (got --summary and --rows-per-second)",
        ),
        (
            ["--rows", "1e9", "--deadline", "2h", "--rows-per-second", "1", "--cores", "2", "--instance", "g5.xlarg"],
            "unknown instance 'g5.xlarg' in the built-in price table (sluice/tune/prices.yaml); did you mean",
        ),
        (
            ["--rows", "1", "--deadline", "2h", "--rows-per-second", "0", "--cores", "2"],
            "measured rows per second must be > 0, found 0.0 (--rows-per-second)",
        ),
        (
            ["--rows", "1", "--deadline", "2h", "--rows-per-second", "9", "--cores", "2", "--price-per-hour", "1",
             "--instance", "c7i.large", "--instance", "c7i.xlarge"],
            "--price-per-hour prices one machine: give at most one --instance with it",
        ),
        (
            ["--rows", "1", "--deadline", "2h", "--summary", "missing.json", "--cores", "2"],
            "cannot read missing.json: No such file or directory",
        ),
    ],
)  # fmt: skip
def test_cli_bad_input_exits_2_with_a_message(args: list[str], message: str) -> None:
    result = run_cost(*args)
    assert result.exit_code == 2, result.output
    assert f"error: {message}" in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_cli_bad_price_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(USER_TABLE.format(vcpus="four"))
    result = run_cost("--rows", "1", "--deadline", "2h", "--rows-per-second", "9", "--cores", "2", "--prices", path)
    assert result.exit_code == 2
    expected = f"error: {path}: instances[0] (mybox): vcpus: Input should be a valid integer, unable to parse string"
    assert expected in " ".join(result.stderr.split())


def test_cli_profile_problems(tmp_path: Path) -> None:
    empty = Profile(model="m", model_digest="d", measurements=[], chosen=None, reason="every set-up ran out of memory")
    no_choice = tmp_path / "none.json"
    no_choice.write_text(json.dumps(empty.to_dict()))
    not_profile = tmp_path / "other.json"
    not_profile.write_text('{"rows": 3}')
    for path, message in [
        (no_choice, f"{no_choice}: the profile has no chosen set-up (every set-up ran out of memory)"),
        (not_profile, f"{not_profile} is not a sluice tune profile (KeyError: 'measurements')"),
    ]:
        result = run_cost("--rows", "1", "--deadline", "1h", "--profile", path)
        assert result.exit_code == 2
        assert f"error: {message}" in " ".join(result.stderr.split())


def test_cli_help_describes_every_option() -> None:
    result = CliRunner().invoke(app, ["cost", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    options = "--rows --deadline --instance --profile --summary --rows-per-second --cores --gpus --prices"
    for option in [*options.split(), "--price-per-hour", "--json", "SLUICE_PRICES", "Scaling assumption"]:
        assert option in result.stdout


def test_command_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, sluice.cli.cost_command; "
        "print(sorted(m for m in ('pydantic', 'yaml', 'sluice.tune.cost', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
