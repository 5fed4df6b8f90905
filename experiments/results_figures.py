"""The figures of docs/results.md, drawn from the committed tables only (make_results.py calls :func:`draw`)."""

from __future__ import annotations

from pathlib import Path

from results_data import groups
from results_sections import Section


def draw(rows: list[dict], curves: list[dict], section: Section, path: Path) -> Path:
    """Left: the section's metric per method (bar = mean, dots = seeds). Right: the training loss per logging
    step, mean over seeds, per method (from the exported curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = groups(rows, [])
    labels = [key[0] for key in grouped]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, members in enumerate(grouped.values()):
        values = [float(r[section.metric]) for r in members if isinstance(r.get(section.metric), (int, float))]
        if values:
            left.bar(i, sum(values) / len(values), color="#9ecae1")
            left.scatter([i] * len(values), values, color="#08519c", s=14, zorder=3)
    left.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    left.set_ylabel(f"test {section.metric}")
    low = min((float(r[section.metric]) for r in rows if isinstance(r.get(section.metric), (int, float))), default=0)
    left.set_ylim(max(0.0, low - 0.05), None)
    owner = {(r["experiment"], r["cell"]): r["label"] for r in rows}
    for label in labels:
        steps: dict[float, list[float]] = {}
        for c in curves:
            if owner.get((c["experiment"], c["cell"])) == label and isinstance(c.get("loss"), float):
                steps.setdefault(c["step"], []).append(c["loss"])
        if steps:
            xs = sorted(steps)
            right.plot(xs, [sum(steps[x]) / len(steps[x]) for x in xs], marker="o", ms=3, label=label)
    right.set_xlabel("optimizer step")
    right.set_ylabel("training loss (mean over seeds)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_epochs(rows: list[dict], entries: list[dict], section: Section, path: Path) -> Path:
    """One column per setting of ``section.keys`` (e.g. each noise rate), one row per ``section.epochs``
    column: its value at each epoch end, mean over seeds per method (dots: the seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(key[1:] for key in groups(rows, section.keys)))
    fig, axes = plt.subplots(len(section.epochs), len(settings), figsize=(4.5 * len(settings),
                             3.2 * len(section.epochs)), squeeze=False)
    for j, setting in enumerate(settings):
        for (label, *key), members in groups(rows, section.keys).items():
            if tuple(key) != setting:
                continue
            cells = {(r["experiment"], r["cell"]) for r in members}
            mine = [e for e in entries if (e["experiment"], e["cell"]) in cells]
            for i, (column, name) in enumerate(section.epochs):
                points: dict[float, list[float]] = {}
                for e in mine:
                    if isinstance(e.get(column), float) and isinstance(e.get("epoch"), float):
                        points.setdefault(e["epoch"], []).append(e[column])
                if not points:
                    continue
                xs = sorted(points)
                line, = axes[i][j].plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", ms=3,
                                        label=label)
                for x in xs:
                    axes[i][j].scatter([x] * len(points[x]), points[x], color=line.get_color(), s=6, alpha=0.4)
                axes[i][j].set_ylabel(name)
        for i in range(len(section.epochs)):
            where = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in zip(section.keys, setting, strict=True))
            axes[i][j].set_title(where, fontsize=9)
            axes[i][j].set_xlabel("epoch")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
