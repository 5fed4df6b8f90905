"""Figures of one ``balora train`` run: loss and regularizer curves, t-SNE of representations."""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..experiment.results import as_float
from ._common import new_figure, require_dir, run_title, save

TERM_ORDER = ("consistency", "diversity", "svd")
_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")
_TRAIN_WRITES = "`balora train --output RUN` writes it"


def load_log_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """``RUN/log_history.json`` (else the ``log_history`` of RUN's newest ``trainer_state.json``)."""
    run = require_dir(run_dir, "run directory", "`balora train --output RUN`")
    path = run / "log_history.json"
    if not path.is_file():
        states = sorted(run.glob("checkpoint-*/trainer_state.json"),
                        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name[11:].isdigit() else -1)
        states = [run / "trainer_state.json", *reversed(states)]
        state = next((p for p in states if p.is_file()), None)
        if state is None:
            is_cmp = (run / "results.csv").is_file()
            hint = " (this is a comparison directory: use `balora plot bars`)" if is_cmp else ""
            raise DataError(f"{str(path)!r} does not exist; {_TRAIN_WRITES}{hint}.")
        path = state
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("log_history")
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise DataError(f"{path} must hold a JSON list of log entries (transformers' log_history).")
    return data


def regularizer_terms(history: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the regularizer terms logged as ``reg/<term>`` (or weighted/lambda), paper order first."""
    found: set[str] = set()
    for entry in history:
        for key in entry:
            if key.startswith("reg/"):
                name = key[4:]
                name = name[7:] if name.startswith("lambda_") else name.removesuffix("_weighted")
                found.add(name)
    return [t for t in TERM_ORDER if t in found] + sorted(found - set(TERM_ORDER))


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for entry in history:
        step, value = as_float(entry.get("step")), as_float(entry.get(key))
        if step is not None and value is not None:
            steps.append(step)
            values.append(value)
    return steps, values


def plot_curves(run_dir: str | Path, out_path: str | Path) -> Path:
    """Training loss, then one panel per regularizer term present (raw, weighted on a right axis)."""
    run = Path(run_dir)
    history = load_log_history(run)
    train = [e for e in history if "train_runtime" not in e and "eval_loss" not in e]
    loss_steps, losses = _series(train, "loss")
    if not losses:
        raise DataError(f"the log history of {run} has no training-loss entries with a step; the run may have "
                        "stopped before its first logging step.")
    terms = regularizer_terms(train)
    panels = 1 + len(terms)
    ncols = min(panels, 2) if panels <= 4 else 3
    nrows = math.ceil(panels / ncols)
    fig = new_figure(5.2 * ncols, 3.3 * nrows + 0.4)
    ax = fig.add_subplot(nrows, ncols, 1)
    ax.plot(loss_steps, losses, color="tab:blue", linewidth=1.5, label="training loss")
    eval_steps, eval_losses = _series(history, "eval_loss")
    if eval_losses:
        ax.plot(eval_steps, eval_losses, color="tab:orange", marker="o", markersize=4, label="eval loss")
    ax.set_title("loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    for i, term in enumerate(terms, start=2):
        _term_panel(fig.add_subplot(nrows, ncols, i), train, term)
    fig.suptitle(run_title(run), fontsize=11)
    fig.tight_layout()
    return save(fig, out_path)


def _term_panel(ax, train: Sequence[dict[str, Any]], term: str) -> None:
    handles = []
    raw_steps, raw = _series(train, f"reg/{term}")
    if raw:
        handles += ax.plot(raw_steps, raw, color="tab:green", linewidth=1.5, label="raw")
        ax.set_ylabel("raw", color="tab:green")
    w_steps, weighted = _series(train, f"reg/{term}_weighted")
    if weighted:
        wax = ax.twinx() if raw else ax
        handles += wax.plot(w_steps, weighted, color="tab:red", linestyle="--", linewidth=1.2, label="weighted (λ·raw)")
        wax.set_ylabel("weighted", color="tab:red")
    _, lambdas = _series(train, f"reg/lambda_{term}")
    title = term
    if lambdas:
        lo, hi = min(lambdas), max(lambdas)
        title += f"  (λ = {hi:g})" if math.isclose(lo, hi) else f"  (λ {lambdas[0]:g} → {lambdas[-1]:g})"
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "only λ was logged", ha="center", va="center", transform=ax.transAxes)


def representation_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of ``RUN/representations/step_XXXXXX.safetensors``, by step."""
    run = require_dir(run_dir, "run directory", "`balora train --output RUN`")
    folder = run / "representations"
    found = sorted((int(m.group(1)), p) for p in folder.glob("step_*.safetensors") if (m := _STEP_FILE.match(p.name)))
    if not found:
        raise DataError(f"no step_XXXXXX.safetensors files in {str(folder)!r}; `balora train` writes them there "
                        "when it records representations during training (--representation-checkpoints N).")
    return found


def load_representations(path: str | Path):
    """``(features (N, H) float32, labels (N,))`` numpy arrays from one representation file."""
    import numpy as np
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad headers and dtypes
        raise DataError(f"cannot read {path}: {exc}") from exc
    missing = [k for k in ("features", "labels") if k not in tensors]
    if missing:
        raise DataError(f"{path} lacks tensor(s) {', '.join(missing)}; "
                        "it must hold 'features' (N, H) and 'labels' (N,).")
    features, labels = np.asarray(tensors["features"], dtype=np.float32), np.asarray(tensors["labels"])
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise DataError(f"{path}: 'features' must be (N, H) and 'labels' (N,), "
                        f"got {features.shape} and {labels.shape}.")
    if not np.isfinite(features).all():
        raise DataError(f"{path}: 'features' holds NaN or inf values.")
    return features, labels


def subsample(labels, max_points: int, seed: int = 0):
    """Sorted indices of at most ``max_points`` rows, each label kept in proportion (at least one each)."""
    import numpy as np

    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    ideal = max_points * counts / n
    quota = np.floor(ideal).astype(int)
    if len(classes) <= max_points:
        quota = np.maximum(quota, 1)
    order = np.lexsort((rng.random(len(classes)), -(ideal - quota)))  # largest remainder, random ties
    while quota.sum() < max_points:
        for c in order:
            if quota.sum() < max_points and quota[c] < counts[c]:
                quota[c] += 1
    while quota.sum() > max_points:
        quota[np.argmax(quota)] -= 1
    picked = [rng.choice(np.flatnonzero(inverse == c), size=q, replace=False) for c, q in enumerate(quota) if q]
    return np.sort(np.concatenate(picked))


def embed_tsne(features, seed: int = 0):
    """A 2-D t-SNE embedding (PCA to 50 dims first; perplexity clipped below the point count)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    if n < 5:
        raise DataError(f"t-SNE needs at least 5 points, got {n}.")
    if features.shape[1] > 50 and n > 50:
        features = PCA(n_components=50, random_state=seed).fit_transform(features)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # For small sets OpenMP threads cost more than they save (and stall on a busy machine).
    with threadpool_limits(1 if n <= 200 else None, user_api="openmp"):
        return tsne.fit_transform(features)


def _pick(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    import numpy as np

    return [items[i] for i in sorted({int(round(i)) for i in np.linspace(0, len(items) - 1, limit)})]


def _label_names(run: Path) -> list[str]:
    """Class names a ``balora train`` run recorded in ``run_info.json`` (empty when absent)."""
    try:
        names = json.loads((run / "run_info.json").read_text()).get("label_names")
    except (OSError, ValueError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def plot_tsne(run_dirs: str | Path | Sequence[str | Path], out_path: str | Path, max_points: int = 500,
              seed: int = 0, max_checkpoints: int = 6) -> Path:
    """t-SNE of each run's representations (rows: runs, columns: checkpoints), coloured by label."""
    import numpy as np

    runs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    if not runs:
        raise DataError("plot_tsne needs at least one run directory.")
    if max_points < 5 or max_checkpoints < 1:
        raise DataError("max_points must be >= 5 and max_checkpoints >= 1.")
    table = [(run, _pick(representation_files(run), max_checkpoints)) for run in runs]
    panels = []
    for run, files in table:
        row = []
        for step, path in files:
            features, labels = load_representations(path)
            keep = subsample(labels, max_points, seed)
            row.append((step, embed_tsne(features[keep], seed), labels[keep]))
        panels.append((run, row))
    classes = np.unique(np.concatenate([p[2] for _, row in panels for p in row]))
    continuous = len(classes) > 20
    cmap = _label_colors(len(classes))
    ncols = max(len(row) for _, row in panels)
    titles = [run_title(run) for run, _ in panels]
    if len(set(titles)) < len(titles):  # same settings: tell the runs apart by their folders
        titles = [f"{run.resolve().name}: {title}" for (run, _), title in zip(panels, titles, strict=True)]
    fig = new_figure(2.7 * ncols + 0.3, 2.7 * len(panels) + 0.6)
    for r, (_, row) in enumerate(panels):
        for c, (step, points, labels) in enumerate(row):
            ax = fig.add_subplot(len(panels), ncols, r * ncols + c + 1)
            if continuous:
                ax.scatter(points[:, 0], points[:, 1], c=labels.astype(float), s=6, cmap="viridis")
            else:
                colors = [cmap[i] for i in np.searchsorted(classes, labels)]
                ax.scatter(points[:, 0], points[:, 1], c=colors, s=7, linewidths=0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"step {step}", fontsize=9)
            if c == 0:
                ax.set_ylabel(textwrap.fill(titles[r], 28), fontsize=8)
    if not continuous:
        from matplotlib.lines import Line2D

        names = _label_names(runs[0])
        handles = [Line2D([], [], marker="o", linestyle="", color=cmap[i],
                          label=names[int(k)] if 0 <= int(k) < len(names) else f"label {k}")
                   for i, k in enumerate(classes)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=8, frameon=False)
    fig.suptitle(f"t-SNE of representations over training (at most {max_points} points per panel)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if not continuous else 0, 1, 1))
    return save(fig, out_path)


def _label_colors(k: int) -> list:
    from matplotlib import colormaps

    name = "tab10" if k <= 10 else "tab20"
    return [colormaps[name](i % 20) for i in range(k)]
