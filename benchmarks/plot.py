"""The PNG: W1 bars, W2 scaling curves (time and memory), W3 and W4 bars.

matplotlib with the Agg backend (no display needed); one colour per subject across all
panels: statestore in blues, LangGraph in oranges, the pickled blob in green, the floor
in black.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import Results
from .timing import Series

__all__ = ["COLOURS", "plot"]

COLOURS = {
    "statestore-sqlite": "#1f4e9c",
    "statestore-file": "#3b82d6",
    "statestore-postgresql": "#7fb3f0",
    "statestore-memory": "#b9c9de",
    "langgraph-sqlite": "#d9480f",
    "langgraph-postgresql": "#f59f00",
    "pickle-sqlite": "#2b8a3e",
    "floor": "#222222",
}


def _bars(axis: Any, groups: list[tuple[str, dict[str, float]]], title: str, label: str) -> None:
    """Grouped bars: one group per subject, one bar per (metric name, values by subject)."""
    names = [n for n in COLOURS if any(n in values for _, values in groups)]
    width = 0.8 / max(len(groups), 1)
    for k, (metric, values) in enumerate(groups):
        shown = [(i, n) for i, n in enumerate(names) if n in values]
        bars = axis.bar(
            [i + k * width for i, _ in shown],
            [values[n] for _, n in shown],
            width,
            color=[COLOURS[n] for _, n in shown],
            alpha=1.0 - 0.45 * k,
            label=metric,
        )
        axis.bar_label(bars, fmt="%.3g", fontsize=6, padding=1)
    axis.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(names))])
    axis.set_xticklabels([n.replace("-", "\n", 1) for n in names], fontsize=7)
    axis.set_title(title, fontsize=10)
    axis.set_ylabel(label)
    if len(groups) > 1:
        axis.legend(fontsize=7, title="darker: first", title_fontsize=6)


def _medians(series: Series, unit: float = 1.0) -> dict[str, float]:
    return {name: series.median(name) * unit for name, times in series.times.items() if times}


def _to_floor(series: Series) -> dict[str, float]:
    if not series.times.get("floor"):
        return {}
    return {name: series.ratio(name, "floor") for name, times in series.times.items() if times}


def _curves(axis: Any, results: Results, what: str) -> None:
    points = results.w2 or []
    for name, colour in COLOURS.items():
        xs: list[int] = []
        ys: list[float] = []
        for point in points:
            if what == "memory":
                if name in point.memory:
                    xs.append(point.count)
                    ys.append(point.memory[name].peak / 1e6)
            elif getattr(point, what).times.get(name):
                xs.append(point.count)
                ys.append(getattr(point, what).median(name))
        if xs:
            style = "--" if name == "floor" else "-"
            axis.plot(xs, ys, style, marker="o", markersize=3, color=colour, label=name)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("entities")
    axis.grid(True, which="both", linewidth=0.3)


def _three_times_loaded(axis: Any, results: Results) -> None:
    """The memory target as a curve: three times the size of the loaded states."""
    xs: list[int] = []
    ys: list[float] = []
    for point in results.w2 or []:
        sizes = [use.result for name, use in point.memory.items() if name.startswith("statestore")]
        if sizes:
            xs.append(point.count)
            ys.append(3 * max(sizes) / 1e6)
    if xs:
        axis.plot(xs, ys, ":", color="grey", label="3x the loaded states (target)")
        axis.legend(fontsize=7)


def plot(results: Results, path: Path) -> None:
    """Draw every measured workload into one PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(17, 10))
    if results.w1 is not None:
        w1 = results.w1
        _bars(
            axes[0][0],
            [("save", _to_floor(w1.series["save"])), ("load", _to_floor(w1.series["load"]))],
            f"W1: {w1.params['entities']:,} entities, median time / the floor's (log)",
            "x the floor",
        )
        axes[0][0].set_yscale("log")
        axes[0][0].axhline(1.3, color="grey", linewidth=0.6, linestyle=":")
        right = axes[0][0].get_xlim()[1]
        axes[0][0].annotate(
            "target 1.3x", (right, 1.3), fontsize=7, color="grey", va="bottom", ha="right"
        )
    else:
        axes[0][0].set_visible(False)
    for axis, what, title, label in (
        (axes[0][1], "save", "W2: one full save", "seconds"),
        (axes[0][2], "load", "W2: loading it", "seconds"),
        (axes[1][0], "memory", "W2: Python-heap peak while loading", "MB"),
    ):
        _curves(axis, results, what)
        axis.set_title(title, fontsize=10)
        axis.set_ylabel(label)
    if results.w2:
        axes[0][1].legend(fontsize=7)
        _three_times_loaded(axes[1][0], results)
    else:
        for axis in (axes[0][1], axes[0][2], axes[1][0]):
            axis.set_visible(False)
    if results.w3 is not None:
        w3 = results.w3
        _bars(
            axes[1][1],
            [
                ("sparse save", _medians(w3.series["sparse"], 1000)),
                ("full save", _medians(w3.series["full"], 1000)),
            ],
            f"W3: {w3.params['entities']:,} entities, {w3.params['fraction']:.0%} changed",
            "milliseconds (log)",
        )
        axes[1][1].set_yscale("log")
    else:
        axes[1][1].set_visible(False)
    if results.w4 is not None:
        w4 = results.w4
        _bars(
            axes[1][2],
            [("wall time", _medians(w4.series["save"]))],
            f"W4: {w4.params['runs']} runs from {w4.params['processes']} processes",
            "seconds",
        )
    else:
        axes[1][2].set_visible(False)
    meta = results.meta
    figure.suptitle(
        f"statestore benchmark ({meta.get('mode', '')}, {meta.get('date', '')}, "
        f"{meta.get('cpus', '?')} cores): lower is better",
        fontsize=12,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
