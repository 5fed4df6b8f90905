"""Label noise, class imbalance and splits for the robustness experiments (design §4).

All are exact and seeded: the same seed gives the same rows, on any machine (numpy ``default_rng``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DataError
from .nlu import check_columns, replace_column

if TYPE_CHECKING:
    import datasets


def _int_labels(dataset: datasets.Dataset, label_column: str) -> np.ndarray:
    check_columns(dataset, [label_column])
    values = list(dataset[label_column])
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise DataError(f"column {label_column!r} must hold integer class ids (run prepare_nlu first)")
    return np.asarray(values, dtype=np.int64)


def add_label_noise(
    dataset: datasets.Dataset, rate: float, num_labels: int, seed: int, label_column: str = "label"
) -> tuple[datasets.Dataset, list[int]]:
    """Symmetric label noise: exactly ``round(rate * N)`` rows, chosen uniformly without replacement, each
    get a label drawn uniformly from the ``num_labels - 1`` OTHER classes.

    Returns (noisy dataset, sorted indices of the changed rows). The column's feature (e.g. ClassLabel) is
    kept. ``rate`` must lie in [0, 1]; labels must be ids in [0, num_labels).
    """
    if not 0.0 <= rate <= 1.0 or math.isnan(rate):
        raise ConfigError(f"label noise rate must lie in [0, 1]; got {rate}")
    if num_labels < 2:
        raise ConfigError(f"label noise needs num_labels >= 2; got {num_labels}")
    labels = _int_labels(dataset, label_column)
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise DataError(f"labels in {label_column!r} must lie in [0, {num_labels}) for label noise")
    count = round(rate * len(labels))
    if count == 0:
        return dataset, []
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(labels), size=count, replace=False))
    offsets = rng.integers(1, num_labels, size=count)  # 1..C-1: never the original class
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + offsets) % num_labels
    feature = dataset.features[label_column]
    return replace_column(dataset, label_column, noisy.tolist(), feature), rows.tolist()


def imbalanced_counts(class_counts: dict[int, int], ratio: float, majority: int | None = None) -> dict[int, int]:
    """Rows each class keeps: the majority keeps all n_major, every other class min(n_c, ceil(n_major/ratio))."""
    if not ratio >= 1.0:
        raise ConfigError(f"imbalance ratio must be >= 1 (majority size / minority size); got {ratio}")
    if majority is None:  # the largest class; ties go to the smallest id
        majority = min(class_counts, key=lambda c: (-class_counts[c], c))
    if majority not in class_counts:
        raise DataError(f"majority class {majority} does not occur; classes present: {sorted(class_counts)}")
    cap = math.ceil(class_counts[majority] / ratio)
    return {c: n if c == majority else min(n, cap) for c, n in class_counts.items()}


def make_imbalanced(
    dataset: datasets.Dataset, ratio: float, seed: int, label_column: str = "label", majority: int | None = None
) -> datasets.Dataset:
    """Subsample to an imbalance ratio (rule in :func:`imbalanced_counts`).

    The majority class (default: the largest, ties to the smallest id) keeps all its rows; each other class
    keeps ``min(n_c, ceil(n_major / ratio))`` rows chosen uniformly at random (seeded). Row order is kept.
    """
    labels = _int_labels(dataset, label_column)
    classes, sizes = np.unique(labels, return_counts=True)
    keep_counts = imbalanced_counts(dict(zip(classes.tolist(), sizes.tolist(), strict=True)), ratio, majority)
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c in classes.tolist():
        rows = np.flatnonzero(labels == c)
        keep.append(rows if keep_counts[c] == len(rows) else rng.choice(rows, size=keep_counts[c], replace=False))
    return dataset.select(np.sort(np.concatenate(keep)).tolist())


def _apportion(sizes: Sequence[int], total: int, fraction: float, caps: Sequence[int]) -> list[int]:
    """Integers near ``fraction * size`` per class, at most ``caps``, summing to ``total`` (largest remainder)."""
    ideal = [fraction * s for s in sizes]
    counts = [min(math.floor(x), cap) for x, cap in zip(ideal, caps, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: (-(ideal[i] - math.floor(ideal[i])), i))
    while sum(counts) < total:
        progressed = False
        for i in order:
            if sum(counts) < total and counts[i] < caps[i]:
                counts[i] += 1
                progressed = True
        if not progressed:
            break
    return counts


def split(
    dataset: datasets.Dataset,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool = True,
    label_column: str = "label",
) -> datasets.DatasetDict:
    """DatasetDict with train/validation/test of ``round(f * N)`` rows for validation and test, the rest train.

    Stratified (per-class proportions kept, largest-remainder rounding) when ``stratify`` and the label
    column holds integer class ids; otherwise a seeded random split. A split of fraction 0 is empty.
    Rows keep their original order inside each split.
    """
    from datasets import DatasetDict

    for name, f in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ConfigError(f"{name} must lie in [0, 1); got {f}")
    n = dataset.num_rows
    n_val, n_test = round(validation_fraction * n), round(test_fraction * n)
    if n_val + n_test >= n:
        raise ConfigError(f"validation ({n_val}) + test ({n_test}) rows leave no training rows out of {n}")
    rng = np.random.default_rng(seed)
    labels: Any = None
    if stratify and label_column in dataset.column_names:
        values = list(dataset[label_column])
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            labels = np.asarray(values)
    if labels is None:
        order = rng.permutation(n)
        parts = {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    else:
        classes = np.unique(labels)
        groups = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
        sizes = [len(g) for g in groups]
        test_counts = _apportion(sizes, n_test, test_fraction, sizes)
        left = [s - t for s, t in zip(sizes, test_counts, strict=True)]
        val_counts = _apportion(sizes, n_val, validation_fraction, left)
        parts = {"test": [], "validation": [], "train": []}
        for g, t, v in zip(groups, test_counts, val_counts, strict=True):
            parts["test"].append(g[:t])
            parts["validation"].append(g[t : t + v])
            parts["train"].append(g[t + v :])
        parts = {k: np.concatenate(v) for k, v in parts.items()}
    return DatasetDict({k: dataset.select(np.sort(parts[k]).tolist()) for k in ("train", "validation", "test")})
