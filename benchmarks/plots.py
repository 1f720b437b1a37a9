"""PNG plots of a bench run (matplotlib, Agg backend: no display needed).

- latency distribution: latency (ms) against percentile on the usual HdrHistogram axis, where
  90, 99, 99.9, 99.99 % are equally spaced (x = 1 / (1 - p)), one line per run, each labelled
  with its offered rate; the latency target a horizontal line labelled with its value;
- throughput over time: sent, answered and approved per second, with p99 (ms) on a second axis;
  the offered rate, the throughput target and the ceiling as labelled horizontal lines. Only
  whole seconds of traffic are drawn: the last, partial second (and the drain after the run)
  would show as a fall that never happened.

Both say under the chart what "ceiling" is (`CEILING_NOTE`): the rate of the same fleet against
benchmarks/responder.py, which answers every request at once without a switch — the most
this fleet can drive on this machine, so the switch's rate is read against it.

Inputs are what the fleet report holds: a percentile table and a per-second series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

PERCENTILE_KEYS = ("percentile", "p", "pct", "quantile")
LATENCY_KEYS = ("latency_ms", "ms", "value_ms", "value", "latency")
CEILING_NOTE = ("ceiling: the same fleet, closed loop, against benchmarks/responder.py, a bare responder that "
                "answers at once without a switch: the most this fleet can drive on this machine")


@dataclass(frozen=True)
class TargetLine:
    """A target drawn as a horizontal line, e.g. TargetLine(20.0, "target: e2e_half p99 <= 20 ms")."""

    value: float
    label: str


def run_label(name: str, offered_per_s: float | None) -> str:
    """A run's legend entry: its name and the rate it was offered."""
    if offered_per_s is None:
        return name
    what = "closed loop, achieved" if name == "ceiling" else "offered"
    return f"{name} ({what} {offered_per_s:,.0f}/s)"


def whole_seconds(series: list[dict[str, Any]], duration_s: float | None = None) -> list[dict[str, Any]]:
    """The rows of a per-second series that cover a whole second of traffic: `t + 1 <=
    duration_s` (the last partial second and the drain after it go); without a duration, all
    but the last row."""
    if duration_s is None:
        return series[:-1]
    return [row for i, row in enumerate(series) if row.get("t", i) + 1 <= duration_s + 1e-9]


def _targets(ax: Any, targets: Iterable[TargetLine], *, color: str = "tab:red") -> None:
    for target in targets:
        ax.axhline(target.value, color=color, linestyle="--", linewidth=1.0, label=target.label)


def percentile_points(table: Any) -> list[tuple[float, float]]:
    """(percentile in %, latency ms) pairs, sorted, from the table shapes a report may hold:
    a list of dicts, a list of pairs, or a dict percentile → ms. A quantile ≤ 1 is scaled
    to %."""
    if isinstance(table, dict):
        items: Iterable[Any] = [(k, v) for k, v in table.items()]
    else:
        items = table or []
    points = []
    for item in items:
        if isinstance(item, dict):
            p = next(item[k] for k in PERCENTILE_KEYS if k in item)
            ms = next(item[k] for k in LATENCY_KEYS if k in item)
        else:
            p, ms = item[0], item[1]
        p = float(str(p).lstrip("p")) if isinstance(p, str) else float(p)
        points.append((p, float(ms)))
    if points and max(p for p, _ in points) <= 1.0:
        points = [(p * 100, ms) for p, ms in points]
    return sorted(points)


def _spread(p: float) -> float:
    return 1.0 / max(1e-7, 1.0 - p / 100.0)


def latency_figure(tables: dict[str, Any], *, title: str = "", offered_per_s: dict[str, float] | None = None,
                   targets: Iterable[TargetLine] = ()) -> Any:
    """The latency chart as a matplotlib Figure (plot_latency saves it)."""
    offered = offered_per_s or {}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, table in tables.items():
        points = [(p, ms) for p, ms in percentile_points(table) if p < 100.0]
        if points:
            ax.plot([_spread(p) for p, _ in points], [ms for _, ms in points], label=run_label(name, offered.get(name)),
                    linewidth=1.6)
    _targets(ax, targets)
    ax.set_xscale("log")
    ticks = [0, 50, 90, 99, 99.9, 99.99, 99.999]
    ax.xaxis.set_major_locator(FixedLocator([_spread(t) for t in ticks]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 - 100 / x:g}%"))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from intended send (ms)")
    ax.set_title(f"Latency distribution {title}".strip())
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if "ceiling" in tables:
        _caption(fig, CEILING_NOTE)
    else:
        fig.tight_layout()
    return fig


def _caption(fig: Any, text: str) -> None:
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.text(0.5, 0.015, text, ha="center", va="bottom", fontsize=7.5, wrap=True)


def plot_latency(tables: dict[str, Any], path: Path, *, title: str = "", offered_per_s: dict[str, float] | None = None,
                 targets: Iterable[TargetLine] = ()) -> Path:
    fig = latency_figure(tables, title=title, offered_per_s=offered_per_s, targets=targets)
    fig.savefig(path)
    plt.close(fig)
    return path


def throughput_figure(series_by_run: dict[str, list[dict[str, Any]]], *, title: str = "",
                      offered_per_s: dict[str, float] | None = None, durations_s: dict[str, float] | None = None,
                      targets: dict[str, Iterable[TargetLine]] | None = None,
                      ceiling_per_s: float | None = None) -> Any:
    """The throughput chart as a matplotlib Figure (plot_throughput saves it): one panel per
    run, whole seconds only (`whole_seconds`), with the run's offered rate, its targets and the
    ceiling as labelled horizontal lines."""
    offered, durations, by_run = offered_per_s or {}, durations_s or {}, targets or {}
    runs = [(name, whole_seconds(s, durations.get(name))) for name, s in series_by_run.items() if s]
    runs = [(name, s) for name, s in runs if s]
    fig, axes = plt.subplots(max(1, len(runs)), 1, figsize=(8, 3.2 * max(1, len(runs)) + 0.4), dpi=110,
                             squeeze=False)
    for ax, (name, series) in zip(axes[:, 0], runs):
        t = [row.get("t", i) for i, row in enumerate(series)]
        for key, style in (("sent", "-"), ("responses", "--"), ("approved", "-")):
            if any(key in row for row in series):
                ax.plot(t, [row.get(key, 0) for row in series], style, label=f"{key}/s", linewidth=1.4)
        if offered.get(name) is not None:
            ax.axhline(offered[name], color="tab:gray", linestyle="-.", linewidth=1.0,
                       label=f"offered {offered[name]:,.0f}/s")
        _targets(ax, by_run.get(name, ()))
        if ceiling_per_s:
            ax.axhline(ceiling_per_s, color="tab:purple", linestyle=":", linewidth=1.0,
                       label=f"ceiling {ceiling_per_s:,.0f}/s")
        ax.set_ylabel("per second")
        ax.set_title(f"{run_label(name, offered.get(name))}: throughput over time (whole seconds)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        if any(row.get("p99_ms") is not None for row in series):
            ax2 = ax.twinx()
            ax2.plot(t, [row.get("p99_ms") or 0 for row in series], ":", color="tab:red", label="p99 ms")
            ax2.set_ylabel("p99 (ms)")
            ax2.set_ylim(bottom=0)
            handles = ax.get_legend_handles_labels()
            extra = ax2.get_legend_handles_labels()
            ax.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower right", fontsize=8)
        else:
            ax.legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since start")
    if title:
        fig.suptitle(title)
    if ceiling_per_s:
        _caption(fig, CEILING_NOTE)
    else:
        fig.tight_layout()
    return fig


def plot_throughput(series_by_run: dict[str, list[dict[str, Any]]], path: Path, *, title: str = "",
                    **kw: Any) -> Path:
    """Save `throughput_figure(series_by_run, title=title, **kw)` as a PNG."""
    fig = throughput_figure(series_by_run, title=title, **kw)
    fig.savefig(path)
    plt.close(fig)
    return path
