"""Figures of a ``balora compare`` study: a metric against a grid setting, and per-method bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..experiment.results import (
    Summary,
    as_float,
    load_results,
    require_column,
    require_metric,
    summarize,
    varying_settings,
)
from ._common import color_map, method_order, new_figure, save

AXIS_LABELS = {
    "label_noise": "label noise rate", "rank": "LoRA rank r", "imbalance_ratio": "imbalance ratio",
    "accuracy": "accuracy", "matthews_correlation": "Matthews correlation", "pass@1": "pass@1",
}

Results = Sequence[Mapping[str, Any]] | str | Path


def _rows(results: Results) -> list[Mapping[str, Any]]:
    rows = load_results(results) if isinstance(results, (str, Path)) else list(results)
    if not rows:
        raise DataError("there are no result rows to plot (no cell of the comparison has finished).")
    require_column(rows, "method")
    return rows


def sort_key(value: Any) -> tuple:
    """Order numbers numerically, then text, then missing values (for mixed columns)."""
    if isinstance(value, tuple):
        return tuple(sort_key(v) for v in value)
    number = as_float(value)
    if number is not None:
        return (0, number, "")
    return (2, 0.0, "") if value is None else (1, 0.0, str(value))


def _label(name: str) -> str:
    return AXIS_LABELS.get(name, name.replace("_", " "))


def _seeds_note(stats: Sequence[Summary]) -> str:
    counts = sorted({s.n for s in stats})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± std over seeds (n = {n})"


def _settings_text(names: Sequence[str], values: Sequence[Any], sep: str = ", ") -> str:
    return sep.join(f"{name}={value}" for name, value in zip(names, values, strict=True))


def plot_metric_vs(results: Results, x: str, metric: str, out_path: str | Path, log2: bool = False) -> Path:
    """``metric`` (mean ± std over seeds) against the numeric setting ``x``, one line per method.

    ``results`` is a list of rows or a comparison directory; other settings that vary split the lines.
    """
    rows = _rows(results)
    require_column(rows, x)
    require_metric(rows, metric)
    bad = sorted({str(r.get(x)) for r in rows if as_float(r.get(x)) is None})
    if bad:
        raise DataError(f"column {x!r} must be numeric to plot against it; found {', '.join(bad)}.")
    if log2 and any(as_float(r[x]) <= 0 for r in rows):
        raise DataError(f"column {x!r} has values <= 0, which a log2 axis cannot show.")
    others = varying_settings(rows, exclude=("method", x))
    stats = summarize(rows, metric, by=["method", *others, x])
    lines: dict[tuple, list[tuple[float, Summary]]] = {}
    for key, summary in stats.items():
        lines.setdefault(key[:-1], []).append((as_float(key[-1]), summary))
    names = {key: key[0] if not others else f"{key[0]} ({_settings_text(others, key[1:])})" for key in lines}
    colors = color_map(names[key] for key in sorted(lines, key=sort_key))

    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    markers, dashes = "osD^vP*X", ("-", "--", ":", "-.")
    combos = sorted({key[1:] for key in lines}, key=sort_key)  # colour: method; marker and dashes: the rest
    for key in sorted(lines, key=sort_key):
        i = combos.index(key[1:])
        points = sorted(lines[key], key=lambda p: p[0])
        xs = [p[0] for p in points]
        means = [p[1].mean for p in points]
        stds = [p[1].std for p in points]
        color = colors[names[key]]
        ax.errorbar(xs, means, yerr=stds, label=names[key], color=color, marker=markers[i % len(markers)],
                    linestyle=dashes[i % len(dashes)], markersize=5, capsize=3, linewidth=1.5)
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        ax.fill_between(xs, low, high, color=color, alpha=0.12, linewidth=0)
    ticks = sorted({as_float(r[x]) for r in rows})
    if log2:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(_label(x) + (" (log2 scale)" if log2 else ""))
    ax.set_ylabel(_label(metric))
    ax.set_title(f"{_label(metric)} vs {_label(x)}\n{_seeds_note(list(stats.values()))}", fontsize=11)
    ax.grid(True, alpha=0.3)
    _legend(ax, len(lines))
    return save(fig, out_path)


def plot_bars(results: Results, metric: str, out_path: str | Path, by: Sequence[str] | None = None) -> Path:
    """``metric`` mean ± std over seeds per method, grouped by ``by`` (default: the settings that vary)."""
    rows = _rows(results)
    require_metric(rows, metric)
    # methods are the bars' colours, never a group: ``--by method`` means "one bar per method"
    by = [b for b in (varying_settings(rows, exclude=("method",)) if by is None else by) if b != "method"]
    for name in by:
        require_column(rows, name)
    stats = summarize(rows, metric, by=["method", *by])
    methods = sorted(dict.fromkeys(key[0] for key in stats), key=method_order)
    groups = sorted(dict.fromkeys(key[1:] for key in stats), key=sort_key)
    colors = color_map(methods)
    total = len(methods) * len(groups)
    width = 0.8 / len(methods)

    fig = new_figure(min(16.0, max(5.5, 0.45 * total + 2.5)), 4.4)
    ax = fig.add_subplot(1, 1, 1)
    for m, method in enumerate(methods):
        positions, means, stds = [], [], []
        for g, group in enumerate(groups):
            summary = stats.get((method, *group))
            if summary is not None:
                positions.append(g + (m - (len(methods) - 1) / 2) * width if by else m)
                means.append(summary.mean)
                stds.append(summary.std)
        bars = ax.bar(positions, means, width=width if by else 0.6, yerr=stds, capsize=3,
                      color=colors[method], label=method, edgecolor="black", linewidth=0.5)
        if total <= 16:
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in means], fontsize=7, padding=2,
                         rotation=90 if total > 8 else 0)
    if by:
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([_settings_text(by, group, sep="\n") for group in groups], fontsize=8)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods)
    ax.margins(y=0.15)
    ax.set_ylabel(_label(metric))
    ax.set_xlabel("method" if not by else ", ".join(_label(b) for b in by))
    ax.set_title(f"{_label(metric)} per method\n{_seeds_note(list(stats.values()))}", fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return save(fig, out_path)


def _legend(ax, entries: int) -> None:
    if entries > 6:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize=8, loc="best")
