"""``write_plot``: the HTML page's SVG charts and table, the PNG's dependency, the accepted extensions."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sluice.errors import ConfigError, MissingDependency
from sluice.tune.plot import write_plot
from sluice.tune.profile import Measurement, Profile, Setup

SVG = "{http://www.w3.org/2000/svg}"


def ok(batch: int, workers: int, threads: int, rows_per_second: float, p99_ms: float) -> Measurement:
    return Measurement(Setup(batch, workers, threads), "ok", rows_per_second, p99_ms / 2, p99_ms, 1 << 20, batches=100)


CHOSEN = ok(512, 2, 1, 1.3e6, 0.9)
MEASUREMENTS = [
    ok(64, 2, 1, 1.0e6, 0.2),
    ok(256, 2, 1, 1.2e6, 0.5),
    ok(1024, 2, 1, 1.35e6, 2.6),
    Measurement(Setup(4096, 2, 1), "oom", note="bad_alloc"),
    CHOSEN,
    ok(512, 1, 2, 0.8e6, 0.8),
    ok(1024, 1, 2, 0.9e6, 1.5),
]


def profile(max_latency_ms: float | None = 2.0) -> Profile:
    return Profile(
        model="mlp.onnx",
        model_digest="0" * 16,
        measurements=MEASUREMENTS,
        chosen=CHOSEN,
        reason="bound by latency",
        max_latency_ms=max_latency_ms,
        sample_rows=65536,
        hardware={"cpu": "test", "cores": 2, "machine": "x86_64"},
    )


def charts(path: Path) -> list[ET.Element]:
    """The page's SVG charts, parsed as XML (which also checks they are well-formed)."""
    return [ET.fromstring(svg) for svg in re.findall(r"<svg .*?</svg>", path.read_text(), re.DOTALL)]


def written(tmp_path: Path, p: Profile, name: str = "tune.html") -> Path:
    path = tmp_path / name
    write_plot(p, path)
    return path


def test_html_draws_one_series_per_thread_setup_in_each_chart(tmp_path: Path) -> None:
    svgs = charts(written(tmp_path, profile()))
    assert [svg.findtext(f"{SVG}title") for svg in svgs] == ["Throughput", "p99 batch latency"]
    for svg in svgs:
        lines = {p.get("data-threads"): p.get("points", "").split() for p in svg.iter(f"{SVG}polyline")}
        assert {k: len(v) for k, v in lines.items()} == {"2x1": 4, "1x2": 2}  # the failed set-up is no point


def test_html_marks_the_chosen_point_on_its_series(tmp_path: Path) -> None:
    page = written(tmp_path, profile())
    for svg in charts(page):
        circles = list(svg.iter(f"{SVG}circle"))
        rings = [(c.get("cx"), c.get("cy")) for c in circles if c.get("class") == "chosen" and c.get("r") == "9"]
        tips = {c.findtext(f"{SVG}title", "").split(":")[0]: (c.get("cx"), c.get("cy")) for c in circles}
        assert rings == [tips["2 workers × 1 thread, batch 512"]]
    assert '<tr class="chosen"><td>5</td><td>512</td><td>2</td><td>1</td>' in page.read_text()


def test_html_draws_the_budget_line_only_when_a_budget_is_set(tmp_path: Path) -> None:
    throughput, latency = charts(written(tmp_path, profile(2.0)))
    budget = [line for line in latency.iter(f"{SVG}line") if line.get("class") == "budget"]
    assert len(budget) == 2  # the line across the chart and its legend entry
    assert budget[0].get("y1") == budget[0].get("y2")
    assert "budget 2 ms" in [t.text for t in latency.iter(f"{SVG}text")]
    assert not [line for line in throughput.iter(f"{SVG}line") if line.get("class") == "budget"]
    page = written(tmp_path, profile(None), "no-budget.html").read_text()
    assert 'class="budget"' not in page and "budgets: none" in page


def test_html_marks_failed_setups_on_the_axis(tmp_path: Path) -> None:
    for svg in charts(written(tmp_path, profile())):
        failed = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "failed" and t.find(f"{SVG}title") is not None]
        assert [t.findtext(f"{SVG}title") for t in failed] == [
            "batch 4096 × 2 worker(s) × 1 thread(s): oom (bad_alloc)"
        ]


def test_html_tables_every_measurement_in_order(tmp_path: Path) -> None:
    page = written(tmp_path, profile()).read_text()
    rows = re.findall(r"<tr( class=\"\w+\")?>(.*?)</tr>", page)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for _, row in rows[1:]]
    assert len(cells) == len(MEASUREMENTS)
    assert [int(c[1]) for c in cells] == [m.setup.batch_size for m in MEASUREMENTS]
    assert cells[4][:6] == ["5", "512", "2", "1", "ok", "1,300,000"]
    assert [cls for cls, _ in rows[1:]] == ["", "", "", ' class="failed"', ' class="chosen"', "", ""]
    assert cells[3][4] == "oom" and cells[3][-1] == "bad_alloc"
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_html_draws_a_profile_where_nothing_ran(tmp_path: Path) -> None:
    failed = Profile("m", "0", [Measurement(Setup(64), "error", note="boom")], None, "no set-up ran successfully")
    svgs = charts(written(tmp_path, failed))
    assert len(svgs) == 2
    assert "<b>Chosen:</b> nothing" in (tmp_path / "tune.html").read_text()


def test_png_without_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        MissingDependency,
        match=r"Writing a PNG plot needs .*make install-plot \(or \.venv/bin/pip install -e '\.\[plot\]'\)",
    ) as exc:
        write_plot(profile(), tmp_path / "tune.png")
    assert exc.value.package == "matplotlib" and exc.value.extra == "plot"
    assert not (tmp_path / "tune.png").exists()


def test_png_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = written(tmp_path, profile(), "tune.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_extension_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "tune.svg"
    with pytest.raises(ConfigError) as exc:
        write_plot(profile(), path)
    assert str(exc.value) == f"cannot write a plot to {path}: the file name must end in .html or .png"
    assert not path.exists()
