"""The t-SNE block of docs/results.md (section c), from ``experiments/results/tsne/<experiment>.csv`` alone.

That file (written by ``experiments/export_tsne.py``) holds each checkpoint's 2-D embedding of the
validation representations the classifier head reads. The page shows them as a figure (rows: methods,
columns: checkpoints) and, so that the figure's reading is a number and not an impression, how well the
classes separate in the plane: the leave-one-out k-nearest-neighbour recall of each class (k = 10, the
majority label among a point's ten nearest other points), and its mean over classes (balanced).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

NEIGHBOURS = 10
TSNE_EXPERIMENT = "imbalance-tweets"  #: the experiment whose representations are embedded (section c)
FIGURE = "imbalance-tsne.png"


def load(results: Path, name: str) -> list[dict] | None:
    """The rows of ``tsne/<name>.csv`` (numbers parsed), or None when the file is not committed."""
    path = results / "tsne" / f"{name}.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        return [{**r, "seed": int(r["seed"]), "step": int(r["step"]), "label": int(r["label"]),
                 "x": float(r["x"]), "y": float(r["y"])} for r in csv.DictReader(handle)]


def panels(rows: list[dict]) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(method, step) -> (points (N, 2), labels (N,)), in file order."""
    out: dict[tuple[str, int], tuple[list, list]] = {}
    for r in rows:
        points, labels = out.setdefault((r["method"], r["step"]), ([], []))
        points.append((r["x"], r["y"]))
        labels.append(r["label"])
    return {key: (np.asarray(p, dtype=np.float64), np.asarray(lab)) for key, (p, lab) in out.items()}


def knn_recall(points: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS) -> dict[int, float]:
    """Per class: the fraction of its points whose k nearest OTHER points (Euclidean) mostly share its label.

    Ties between labels go to the smallest label id (deterministic). points (N, 2), labels (N,).
    """
    k = min(k, len(points) - 1)
    distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    classes = np.unique(labels)
    votes = np.stack([(labels[nearest] == c).sum(1) for c in classes], axis=1)  # (N, classes)
    predicted = classes[votes.argmax(1)]
    return {int(c): float((predicted[labels == c] == c).mean()) for c in classes}


def block(rows: list[dict] | None, label_names: list[str], figure: str | None, missing: str) -> str:
    """The generated text: what was embedded, the neighbourhood table and the figure link."""
    if not rows:
        return f"_t-SNE coordinates {missing}._"
    table = panels(rows)
    classes = sorted({r["label"] for r in rows})
    names = [label_names[c] if c < len(label_names) else f"label {c}" for c in classes]
    seeds = sorted({r["seed"] for r in rows})
    sizes = sorted({len(p) for p, _ in table.values()})
    lines = [f"t-SNE of the pooled representation the classifier head reads, on {'/'.join(map(str, sizes))} "
             f"validation rows (labels in proportion), seed {', '.join(map(str, seeds))}, at each saved "
             f"checkpoint. Class separation in the plane: leave-one-out {NEIGHBOURS}-nearest-neighbour recall "
             "per class and its mean (balanced):", "",
             "| method | step | " + " | ".join(f"{n} recall" for n in names) + " | balanced |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for (method, step), (points, labels) in table.items():
        recall = knn_recall(points, labels)
        values = [recall.get(c, float("nan")) for c in classes]
        lines.append(f"| {method} | {step} | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {np.nanmean(values):.3f} |")
    if figure:
        lines += ["", f"![t-SNE of the representations per method and checkpoint]({figure})"]
    return "\n".join(lines)


def draw(rows: list[dict], label_names: list[str], path: Path) -> Path:
    """Rows: methods; columns: checkpoints; points coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    table = panels(rows)
    methods = list(dict.fromkeys(m for m, _ in table))
    steps = sorted({s for _, s in table})
    classes = sorted({r["label"] for r in rows})
    colors = {c: plt.get_cmap("tab10")(i) for i, c in enumerate(classes)}
    fig, axes = plt.subplots(len(methods), len(steps), figsize=(2.6 * len(steps) + 0.4, 2.6 * len(methods) + 0.6),
                             squeeze=False)
    for i, method in enumerate(methods):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (method, step) in table:
                points, labels = table[method, step]
                ax.scatter(points[:, 0], points[:, 1], c=[colors[c] for c in labels], s=6, linewidths=0)
            ax.set_title(f"step {step}", fontsize=9)
            if j == 0:
                ax.set_ylabel(method, fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[c],
                      label=label_names[c] if c < len(label_names) else f"label {c}") for c in classes]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _label_names(experiments: dict) -> list[str]:
    """The class names the experiment's runs recorded (``label_names`` "a|b|c"), else none."""
    experiment = experiments.get(TSNE_EXPERIMENT)
    names = experiment.rows[0].get("label_names") if experiment and experiment.rows else None
    return str(names).split("|") if names else []


def tsne_block(results: Path, experiments: dict, with_figure: bool, missing: str) -> str:
    """make_results.py's ``imbalance-tsne`` block."""
    return block(load(results, TSNE_EXPERIMENT), _label_names(experiments),
                 f"figures/{FIGURE}" if with_figure else None, missing)


def tsne_figure(results: Path, experiments: dict, figures: Path) -> Path | None:
    """Draw docs/figures/imbalance-tsne.png when the coordinates are committed."""
    rows = load(results, TSNE_EXPERIMENT)
    return draw(rows, _label_names(experiments), figures / FIGURE) if rows else None
