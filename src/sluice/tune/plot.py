"""Plots of a tuning profile: throughput and p99 batch latency against batch size, per thread set-up.

``.html`` writes a self-contained page with inline SVG built here (no dependency, no script);
``.png`` draws the same two charts with matplotlib (the ``plot`` extra: ``make install-plot``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError, MissingDependency
from sluice.tune.profile import Measurement, Profile

__all__ = ["check_plot", "write_plot"]

Threads = tuple[int, int]
COLORS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000") * 4
RED = "#c0392b"
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 900, 320, 80, 210, 34, 52  # RIGHT holds the legend
MIDDLE, END = ' text-anchor="middle"', ' text-anchor="end"'
STYLE = f"""body{{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:960px}}
h1{{font-size:20px;margin:0 0 6px}}p{{margin:4px 0}}svg{{display:block;margin:14px 0}}
svg text{{font:12px system-ui,sans-serif;fill:#333;paint-order:stroke;stroke:#fff;stroke-width:3px}}
svg text.title{{font-size:14px;font-weight:600}}
.frame{{fill:none;stroke:#999}}.grid{{stroke:#e4e4e4}}.tick{{stroke:#666}}.series{{fill:none;stroke-width:2}}
.chosen{{fill:none;stroke:#000;stroke-width:2}}line.budget{{stroke:{RED};stroke-dasharray:6 4;stroke-width:1.5}}
svg text.budget,svg text.failed{{fill:{RED}}}svg text.failed{{font-size:16px}}
table{{border-collapse:collapse;font-size:13px;margin-top:8px}}th,td{{padding:3px 8px;text-align:right}}
th{{border-bottom:1px solid #888}}td.l,th.l{{text-align:left}}tr.chosen{{background:#fff3c4;font-weight:600}}
tr.failed td{{color:{RED}}}"""


def _number(v: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


@dataclass(frozen=True)
class Chart:
    """One of the two stacked charts: which figure of a measurement it plots, and how."""

    title: str
    y_label: str
    value: Callable[[Measurement], float | None]
    log_y: bool
    shows_budget: bool
    tick: Callable[[float], str]


CHARTS = (
    Chart("Throughput", "rows per second", lambda m: m.rows_per_second, False, False, _number),
    Chart("p99 batch latency", "p99 latency (ms, log scale)", lambda m: m.latency_p99_ms, True, True, "{:g}".format),
)


def check_plot(path: Path) -> None:
    """Raise now what :func:`write_plot` would raise for ``path`` before drawing: a wrong suffix, no matplotlib.

    Call it before measuring, so a plot that cannot be written fails in a second, not after the tuning.
    """
    suffix = path.suffix.lower()
    if suffix == ".png":
        _matplotlib()
    elif suffix != ".html":
        raise ConfigError(f"cannot write a plot to {path}: the file name must end in .html or .png")


def write_plot(profile: Profile, path: Path) -> None:
    """Draw ``profile`` to ``path``: ``.html`` (inline SVG, no dependency) or ``.png`` (needs matplotlib)."""
    check_plot(path)
    if path.suffix.lower() == ".html":
        path.write_text(render_html(profile), encoding="utf-8")
    else:
        _write_png(profile, path)


# -- data shared by both formats ------------------------------------------------------------------


def series(profile: Profile) -> dict[Threads, list[Measurement]]:
    """Measurements that ran, by (workers, intra-op threads) in the order first visited, by batch size."""
    out: dict[Threads, list[Measurement]] = {}
    for m in profile.measurements:
        out.setdefault((m.setup.workers, m.setup.intra_op_threads), []).extend([m] if m.ok else [])
    return {k: sorted(v, key=lambda m: m.setup.batch_size) for k, v in out.items()}


def threads_label(threads: Threads) -> str:
    workers, intra = threads
    return f"{workers} worker{'s' * (workers != 1)} × {intra} thread{'s' * (intra != 1)}"


def _points(ms: list[Measurement], chart: Chart) -> list[tuple[int, float]]:
    values = [(m.setup.batch_size, chart.value(m)) for m in ms]
    return [(b, v) for b, v in values if v is not None and (v > 0 or not chart.log_y)]


def _chosen_point(profile: Profile, chart: Chart) -> tuple[int, float] | None:
    return next(iter(_points([profile.chosen], chart)), None) if profile.chosen else None


def _batch_label(batch: float) -> str:
    b = round(batch)
    return f"{b >> 20}M" if b >= 1 << 20 else f"{b >> 10}k" if b >= 1 << 10 else str(b)


# -- scales and ticks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps a value in [lo, hi] to a pixel in [start, end], linearly or logarithmically."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool

    def __call__(self, v: float) -> float:
        f = math.log(v / self.lo) / math.log(self.hi / self.lo) if self.log else (v - self.lo) / (self.hi - self.lo)
        return round(self.start + f * (self.end - self.start), 1)


def _x_ticks(profile: Profile) -> list[int]:
    """Every power of two from the smallest batch size measured to the largest."""
    batches = [m.setup.batch_size for m in profile.measurements] or [1]
    return [1 << p for p in range(min(batches).bit_length() - 1, max(batches).bit_length())]


def _y_ticks(profile: Profile, chart: Chart) -> list[float]:
    """About five round linear ticks from 0, or decades (with 2 and 5 when few), covering the chart's values."""
    values = [v for ms in series(profile).values() for _, v in _points(ms, chart)]
    values += [profile.max_latency_ms] if chart.shows_budget and profile.max_latency_ms else []
    if not chart.log_y:
        top = max([*values, 1e-9]) * 1.05
        unit = 10 ** math.floor(math.log10(top / 5))
        step = next(m * unit for m in (1, 2, 5, 10) if m * unit >= top / 5)
        return [i * step for i in range(math.ceil(top / step) + 1)]
    lo, hi = math.floor(math.log10(min(values, default=1.0))), math.ceil(math.log10(max(values, default=1.0)) + 1e-9)
    steps = (1, 2, 5) if hi - lo <= 3 else (1,)
    return [s * 10.0**d for d in range(lo, hi + 1) for s in steps if s == 1 or d < hi]


# -- SVG ------------------------------------------------------------------------------------------


def _text(x: float, y: float, text: str, attrs: str = "") -> str:
    return f'<text x="{x}" y="{y}"{attrs}>{escape(text)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, attrs: str) -> str:
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" {attrs}/>'


def _axes(chart: Chart, x: Scale, y: Scale, x_ticks: list[int], y_ticks: list[float]) -> list[str]:
    bottom, right, mid = HEIGHT - BOTTOM, WIDTH - RIGHT, (TOP + HEIGHT - BOTTOM) / 2
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" class="frame"/>']
    for v in y_ticks:
        out += [_line(LEFT, y(v), right, y(v), 'class="grid"'), _text(LEFT - 6, y(v) + 4, chart.tick(v), END)]
    for i, b in enumerate(x_ticks):
        out.append(_line(x(b), bottom, x(b), bottom + 5, 'class="tick"'))
        if len(x_ticks) <= 12 or i % 2 == 0:  # every other label when they would crowd
            out.append(_text(x(b), bottom + 18, _batch_label(b), MIDDLE))
    return [
        *out,
        _text((LEFT + right) / 2, HEIGHT - 10, "batch size (rows per call, log₂ scale)", MIDDLE),
        _text(18, mid, chart.y_label, f'{MIDDLE} transform="rotate(-90 18 {mid})"'),
        _text(LEFT, TOP - 12, chart.title, ' class="title"'),
    ]


def _marks(profile: Profile, chart: Chart, x: Scale, y: Scale) -> list[str]:
    out: list[str] = []
    for color, (threads, ms) in zip(COLORS, series(profile).items(), strict=False):
        pts = _points(ms, chart)
        points = " ".join(f"{x(b)},{y(v)}" for b, v in pts)
        out.append(f'<polyline class="series" data-threads="{threads[0]}x{threads[1]}" stroke="{color}" ')
        out[-1] += f'points="{points}"/>'
        for b, v in pts:
            tip = escape(f"{threads_label(threads)}, batch {b}: {chart.tick(round(v, 3))}")
            out.append(f'<circle cx="{x(b)}" cy="{y(v)}" r="3.5" fill="{color}"><title>{tip}</title></circle>')
    if point := _chosen_point(profile, chart):
        cx, cy = x(point[0]), y(point[1])
        label = _text(cx + 12, cy - 10, "chosen") if cx < WIDTH - RIGHT - 60 else _text(cx - 12, cy - 10, "chosen", END)
        out += [f'<circle class="chosen" cx="{cx}" cy="{cy}" r="9"/>', label]
    for m in profile.measurements:
        if not m.ok:
            tip = escape(f"{m.setup.describe()}: {m.status}" + (f" ({m.note})" if m.note else ""))
            where = f'x="{x(m.setup.batch_size)}" y="{HEIGHT - BOTTOM + 5}"'
            out.append(f'<text class="failed" {where}{MIDDLE}>×<title>{tip}</title></text>')
    return out


def _budget(profile: Profile, chart: Chart, y: Scale) -> list[str]:
    if not chart.shows_budget or profile.max_latency_ms is None:
        return []
    by, label = y(profile.max_latency_ms), f"budget {profile.max_latency_ms:g} ms"
    return [_line(LEFT, by, WIDTH - RIGHT, by, 'class="budget"'), _text(LEFT + 6, by - 5, label, ' class="budget"')]


def _legend(profile: Profile, chart: Chart) -> list[str]:
    lx, ly, out = WIDTH - RIGHT + 16, TOP + 10, []
    colored = zip(COLORS, series(profile), strict=False)
    entries = [(threads_label(t), f'stroke="{c}" stroke-width="2"') for c, t in colored]
    if chart.shows_budget and profile.max_latency_ms is not None:
        entries.append((f"latency budget ({profile.max_latency_ms:g} ms)", 'class="budget"'))
    for label, attrs in entries:
        out += [_line(lx, ly, lx + 24, ly, attrs), _text(lx + 30, ly + 4, label)]
        ly += 20
    out += [f'<circle class="chosen" cx="{lx + 12}" cy="{ly}" r="7"/>', _text(lx + 30, ly + 4, "chosen set-up")]
    if any(not m.ok for m in profile.measurements):
        out += [_text(lx + 12, ly + 25, "×", f' class="failed"{MIDDLE}'), _text(lx + 30, ly + 24, "failed (hover)")]
    return out


def render_svg(profile: Profile, chart: Chart) -> str:
    """One chart of ``profile`` as an ``<svg>`` element (styled by the page's CSS)."""
    x_ticks, y_ticks = _x_ticks(profile), _y_ticks(profile, chart)
    x = Scale(x_ticks[0] / 1.5, x_ticks[-1] * 1.5, LEFT, WIDTH - RIGHT, log=True)
    y = Scale(y_ticks[0], y_ticks[-1], HEIGHT - BOTTOM, TOP, log=chart.log_y)
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">'
    body = _axes(chart, x, y, x_ticks, y_ticks) + _budget(profile, chart, y) + _marks(profile, chart, x, y)
    return "\n".join([head, f"<title>{escape(chart.title)}</title>", *body, *_legend(profile, chart), "</svg>"])


# -- HTML page ------------------------------------------------------------------------------------


def _summary(profile: Profile) -> str:
    c = profile.chosen
    chosen = f"{c.setup.describe()}: {_number(c.rows_per_second)} rows/s" if c else "nothing"
    chosen += f", p99 {c.latency_p99_ms:.2f} ms" if c and c.latency_p99_ms is not None else ""
    budgets = [f"p99 ≤ {profile.max_latency_ms:g} ms"] if profile.max_latency_ms is not None else []
    if profile.memory_limit_bytes is not None:
        budgets.append(f"memory ≤ {profile.memory_limit_bytes / (1 << 20):,.0f} MiB")
    hw = profile.hardware
    facts = (
        f"{len(profile.measurements)} measurements on {profile.sample_rows:,} sample rows in "
        f"{profile.tuning_seconds:.1f} s · budgets: {', '.join(budgets) or 'none'} · "
        f"{hw.get('cpu', '?')}, {hw.get('cores', '?')} cores"
    )
    return f"<p><b>Chosen:</b> {escape(chosen)}</p>\n<p>{escape(profile.reason)}</p>\n<p>{escape(facts)}</p>"


def _cells(i: int, m: Measurement) -> list[object]:
    mib = "" if m.peak_memory_bytes is None else f"{m.peak_memory_bytes / (1 << 20):,.1f}"
    p50, p99 = (f"{v:.3f}" if v is not None else "" for v in (m.latency_p50_ms, m.latency_p99_ms))
    s = m.setup
    return [i, s.batch_size, s.workers, s.intra_op_threads, m.status, f"{m.rows_per_second:,.0f}", p50, p99, mib]


def _table(profile: Profile) -> str:
    heads = ["#", "batch", "workers", "threads", "status", "rows/s", "p50 ms", "p99 ms", "peak MiB", "batches"]
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in heads) + '<th class="l">note</th></tr>']
    for i, m in enumerate(profile.measurements, 1):
        cls = ' class="chosen"' if m == profile.chosen else "" if m.ok else ' class="failed"'
        tds = "".join(f"<td>{escape(str(v))}</td>" for v in [*_cells(i, m), m.batches])
        rows.append(f'<tr{cls}>{tds}<td class="l">{escape(m.note)}</td></tr>')
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def render_html(profile: Profile) -> str:
    """A self-contained page: summary, the two charts as inline SVG, and every measurement."""
    title = escape(f"Tuning profile: {profile.model}")
    head = f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>'
    charts = [render_svg(profile, c) for c in CHARTS]
    body = f"<style>\n{STYLE}\n</style>\n</head>\n<body>\n<h1>{title}</h1>"
    table = ["<h2>Measurements (in the order measured)</h2>", _table(profile), "</body>\n</html>\n"]
    return "\n".join([head, body, _summary(profile), *charts, *table])


# -- PNG ------------------------------------------------------------------------------------------


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's ``figure`` and ``ticker`` modules, or MissingDependency."""
    try:  # the parent first, so a blocked or missing matplotlib fails even if a submodule is cached
        importlib.import_module("matplotlib")
        return importlib.import_module("matplotlib.figure"), importlib.import_module("matplotlib.ticker")
    except ImportError as exc:
        raise MissingDependency("matplotlib", "plot", "Writing a PNG plot") from exc


def _write_png(profile: Profile, path: Path) -> None:
    figure, ticker = _matplotlib()
    fig = figure.Figure(figsize=(9, 8), layout="constrained")  # no pyplot: no global state, no GUI backend
    axes = fig.subplots(2, 1, sharex=True)
    for ax, chart in zip(axes, CHARTS, strict=True):
        _draw_axes(ax, profile, chart, ticker)
    axes[-1].set_xlabel("batch size (rows per call, log₂ scale)")
    fig.suptitle(f"Tuning profile: {profile.model}")
    fig.savefig(path, dpi=110)


def _draw_axes(ax: Any, profile: Profile, chart: Chart, ticker: Any) -> None:
    for color, (threads, ms) in zip(COLORS, series(profile).items(), strict=False):
        pts = _points(ms, chart)
        ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", ms=4, color=color, label=threads_label(threads))
    if point := _chosen_point(profile, chart):
        ax.plot(*point, "o", ms=14, mfc="none", mec="black", mew=2, label="chosen set-up")
    if chart.shows_budget and profile.max_latency_ms is not None:
        ax.axhline(profile.max_latency_ms, ls="--", color=RED, label=f"latency budget ({profile.max_latency_ms:g} ms)")
    if failed := [m.setup.batch_size for m in profile.measurements if not m.ok]:
        on_axis = ax.get_xaxis_transform()  # x in data, y in axes units: 0 is the x axis
        ax.plot(failed, [0] * len(failed), "x", color=RED, ms=9, mew=2, clip_on=False, transform=on_axis)
        ax.plot([], [], "x", color=RED, mew=2, label="failed")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log" if chart.log_y else "linear")
    x_ticks, y_ticks = _x_ticks(profile), _y_ticks(profile, chart)  # the same ticks as the SVG's
    every = 1 if len(x_ticks) <= 12 else 2
    ax.set_xticks(x_ticks, [_batch_label(b) if i % every == 0 else "" for i, b in enumerate(x_ticks)])
    ax.set_yticks(y_ticks, [chart.tick(v) for v in y_ticks])
    ax.set_ylim(y_ticks[0], y_ticks[-1])
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(ticker.NullLocator())
    ax.set_title(chart.title, loc="left")
    ax.set_ylabel(chart.y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
