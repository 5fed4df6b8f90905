"""Reading ``balora compare`` results and summarizing a metric over seeds (tables and figures both use it)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import DataError
from .schema import options
from .settings import TrainSettings

IDENTITY_COLUMNS = ("cell", "method", "seed")
_METRIC_NAMES = {
    "accuracy", "f1", "matthews_correlation", "pearson", "spearman", "spearmanr", "pearsonr",
    "exact_match", "loss", "runtime_s", "combined_score", "mcc", "precision", "recall",
}
_SPLIT_PREFIXES = ("eval_", "val_", "ood_", "test_", "train_", "predict_")
_METRIC_SUFFIXES = ("accuracy", "_f1", "_loss", "correlation", "_pearson", "_spearman", "spearmanr",
                    "exact_match", "_runtime", "_per_second", "_mcc", "_score")

Rows = Sequence[Mapping[str, Any]]


class Summary(NamedTuple):
    """A metric over the seeds of one group: mean, sample standard deviation (0 for one value), count."""

    mean: float
    std: float
    n: int


def load_results(cmp_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``CMP/results.csv`` (else ``CMP/results.json``); ``cmp_dir`` may also be either file.

    CSV cells are converted to int or float where they read as numbers; empty cells become None.
    """
    path = Path(cmp_dir)
    if path.is_dir():
        candidates = [path / "results.csv", path / "results.json"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            hint = (" (this is a training run directory: use `balora plot curves` or `balora plot tsne`)"
                    if (path / "log_history.json").is_file() else "")
            raise DataError(f"no results.csv or results.json in {str(path)!r}; `balora compare` writes them "
                            f"into its output directory{hint}.")
        path = found
    elif not path.is_file():
        raise DataError(f"comparison directory {str(path)!r} does not exist; `balora compare` writes it.")
    rows = _read_json(path) if path.suffix.lower() == ".json" else _read_csv(path)
    if not rows:
        raise DataError(f"{path} has no rows yet (no cell of the comparison has finished).")
    return rows


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="") as handle:
            return [{key: _parse_cell(value) for key, value in row.items() if key is not None}
                    for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(f"{path} must hold a JSON list of row objects, as `balora compare` writes it.")
    return data


def _parse_cell(text: str | None) -> Any:
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def as_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, text, NaN or inf)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def columns(rows: Rows) -> list[str]:
    """Every column of ``rows`` in first-appearance order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def is_metric_column(name: str) -> bool:
    """Whether a results column holds a measurement rather than a setting (by its name)."""
    low = name.lower()
    base = next((low[len(p):] for p in _SPLIT_PREFIXES if low.startswith(p)), low)
    return base in _METRIC_NAMES or base.startswith("pass@") or low.endswith(_METRIC_SUFFIXES)


def metric_columns(rows: Rows) -> list[str]:
    """The metric columns of ``rows``."""
    return [c for c in columns(rows) if c not in IDENTITY_COLUMNS and is_metric_column(c)]


def varying_settings(rows: Rows, exclude: Sequence[str] = ()) -> list[str]:
    """Setting columns (``balora train`` options, not identity) that take more than one value in ``rows``.

    A column is a setting only if it names a training option: metrics that vary from run to run
    (``precision_class_0``, ``val_f1_macro``, ...) never split the groups.
    """
    settings = {opt.name for opt in options(TrainSettings)}
    out = []
    for name in columns(rows):
        if name in IDENTITY_COLUMNS or name in exclude or name not in settings:
            continue
        if len({repr(row.get(name)) for row in rows}) > 1:
            out.append(name)
    return out


def require_metric(rows: Rows, metric: str) -> None:
    """A DataError naming the metrics there are when no row has a number for ``metric``."""
    if any(as_float(row.get(metric)) is not None for row in rows):
        return
    present = metric_columns(rows)
    listed = ", ".join(present) if present else "none"
    if metric in columns(rows):
        raise DataError(f"metric {metric!r} has no numeric value in any row; metrics with values: {listed}.")
    raise DataError(f"the results have no {metric!r} column; choose one with --metric: {listed}.")


def require_column(rows: Rows, name: str) -> None:
    """A DataError when no row has column ``name`` (a grid setting appears only when it varies)."""
    if name not in columns(rows):
        raise DataError(f"the results have no {name!r} column; it appears when the `balora compare` grid "
                        f"varies {name} (columns present: {', '.join(columns(rows))}).")


def summarize(rows: Rows, metric: str, by: str | Sequence[str] = "method") -> dict[Any, Summary]:
    """Mean, sample std and count of ``metric`` for each group of rows sharing the ``by`` columns.

    Keys are the group's value when ``by`` is one column name, else tuples in ``by``'s order; groups
    keep their first-appearance order. Rows without a finite number for ``metric`` are left out.

    >>> rows = [{"method": "lora", "accuracy": v} for v in (0.7, 0.8, 0.9)]
    >>> s = summarize(rows, "accuracy", by="method")["lora"]
    >>> round(s.mean, 6), round(s.std, 6), s.n
    (0.8, 0.1, 3)
    """
    single = isinstance(by, str)
    keys = [by] if single else list(by)
    for name in keys:
        require_column(rows, name)
    require_metric(rows, metric)
    groups: dict[Any, list[float]] = {}
    for row in rows:
        value = as_float(row.get(metric))
        if value is None:
            continue
        key = row.get(keys[0]) if single else tuple(row.get(k) for k in keys)
        groups.setdefault(key, []).append(value)
    return {key: _summary(values) for key, values in groups.items()}


def _summary(values: list[float]) -> Summary:
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Summary(mean, std, n)
