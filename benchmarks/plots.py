"""PNG plots of a bench run (matplotlib, Agg backend: no display needed).

- latency distribution: latency (ms) against percentile on the usual HdrHistogram axis, where
  90, 99, 99.9, 99.99 % are equally spaced (x = 1 / (1 - p)), one line per run;
- throughput over time: sent, answered and approved per second, with p99 (ms) on a second axis.

Inputs are what the fleet report holds: a percentile table and a per-second series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

PERCENTILE_KEYS = ("percentile", "p", "pct", "quantile")
LATENCY_KEYS = ("latency_ms", "ms", "value_ms", "value", "latency")


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


def plot_latency(tables: dict[str, Any], path: Path, *, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, table in tables.items():
        points = [(p, ms) for p, ms in percentile_points(table) if p < 100.0]
        if points:
            ax.plot([_spread(p) for p, _ in points], [ms for _, ms in points], label=name, linewidth=1.6)
    ax.set_xscale("log")
    ticks = [0, 50, 90, 99, 99.9, 99.99, 99.999]
    ax.xaxis.set_major_locator(FixedLocator([_spread(t) for t in ticks]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 - 100 / x:g}%"))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from intended send (ms)")
    ax.set_title(f"Latency distribution {title}".strip())
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_throughput(series_by_run: dict[str, list[dict[str, Any]]], path: Path, *, title: str = "") -> Path:
    runs = [(name, s) for name, s in series_by_run.items() if s]
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 3.2 * len(runs)), dpi=110, squeeze=False)
    for ax, (name, series) in zip(axes[:, 0], runs):
        t = [row.get("t", i) for i, row in enumerate(series)]
        for key, style in (("sent", "-"), ("responses", "--"), ("approved", "-")):
            if any(key in row for row in series):
                ax.plot(t, [row.get(key, 0) for row in series], style, label=f"{key}/s", linewidth=1.4)
        ax.set_ylabel("per second")
        ax.set_title(f"{name}: throughput over time")
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
