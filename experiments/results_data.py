"""The committed result files of experiments/results/ (written by export_results.py), read for make_results.py.

A page section draws rows from one or more experiments (:class:`Source`): e.g. the noise section's
label_noise = 0 rows are the main comparison's cells. Each row keeps the experiment it came from, so that
its per-example predictions can be found for :func:`paired`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from balora.experiment.results import load_results
from balora.experiment.stats import PairedDifference, paired_bootstrap

METHOD_ORDER = ["lora", "pissa", "ba-lora", "dora", "dual-lora", "full"]
# metric -> the split whose per-example correctness averages to it (others: paired over seeds only)
PER_EXAMPLE = {"accuracy": "test", "exact_match": "test", "ood_accuracy": "ood"}


@dataclass
class Split:
    """One split's per-example predictions: ids and labels in order, and each cell's predictions."""

    ids: list[str]
    labels: list[str]
    by_cell: dict[str, list[str]]

    def correct(self, cell: str) -> np.ndarray:
        """1.0 where the cell predicted the label, else 0.0 (examples in ``ids`` order)."""
        return (np.asarray(self.by_cell[cell]) == np.asarray(self.labels)).astype(np.float64)


@dataclass
class Experiment:
    name: str
    rows: list[dict[str, Any]]
    splits: dict[str, Split] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)  #: per-epoch evaluations (``--epoch-eval``)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_experiment(results: Path, name: str) -> Experiment | None:
    """``results/NAME.csv`` with its curves, epochs and predictions; None when the experiment has no table."""
    table = results / f"{name}.csv"
    if not table.is_file():
        return None
    rows = [{**row, "experiment": name, "label": row["method"]} for row in load_results(table)]
    experiment = Experiment(name, rows)
    curves = results / "curves" / f"{name}.csv"
    if curves.is_file():
        experiment.curves = [{**{k: _number(v) for k, v in row.items()}, "cell": row["cell"], "experiment": name}
                             for row in _read(curves)]
    epochs = results / "epochs" / f"{name}.csv"
    if epochs.is_file():
        experiment.epochs = [{**{k: _number(v) for k, v in row.items()}, "cell": row["cell"], "experiment": name}
                             for row in _read(epochs)]
    predictions = results / "predictions" / f"{name}.csv"
    if predictions.is_file():
        raw = _read(predictions)
        cells = [c for c in (raw[0].keys() if raw else []) if c not in ("split", "id", "label")]
        for split in dict.fromkeys(r["split"] for r in raw):
            part = [r for r in raw if r["split"] == split]
            experiment.splits[split] = Split([r["id"] for r in part], [r["label"] for r in part],
                                             {c: [r[c] for r in part] for c in cells})
    return experiment


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Source:
    """Rows of one experiment for a section: ``where`` filters (column -> allowed values), ``label`` names the
    row's method on the page (a format string over the row).
    ``borrowed``: identical-configuration rows of another section's experiment (e.g. noise 0 = the main
    comparison); a section shows nothing when only its borrowed rows exist."""

    experiment: str
    where: dict[str, tuple] = field(default_factory=dict)
    label: str = "{method}"
    borrowed: bool = False


def gather(sources: list[Source], experiments: dict[str, Experiment | None],
           keys: list[str]) -> list[dict[str, Any]]:
    """The rows of ``sources`` in order; a (label, keys, seed) already taken by an earlier source is skipped.

    Empty when no source of the section's own (not borrowed) has a committed table.
    """
    if all(s.borrowed or experiments.get(s.experiment) is None for s in sources):
        return []
    rows, taken = [], set()
    for source in sources:
        experiment = experiments.get(source.experiment)
        if experiment is None:
            continue
        for row in experiment.rows:
            if any(row.get(k) not in allowed for k, allowed in source.where.items()):
                continue
            row = {**row, "label": source.label.format_map({k: "" if v is None else v for k, v in row.items()})}
            key = (row["label"], *(row.get(k) for k in keys), row["seed"])
            if key not in taken:
                taken.add(key)
                rows.append(row)
    return rows


def _order(label: str) -> tuple:
    """Known methods in their usual order; 'ba-lora (paper λ)' and the like right after their method; other
    labels by text with their numbers by value ('svd ×10' after 'svd ×2')."""
    base = label.split(" (")[0]
    natural = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label))
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), natural)


def sort_key(value: Any) -> tuple:
    """Numbers before text, numbers by value (rank 2 before rank 16)."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def groups(rows: list[dict[str, Any]], keys: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows by (label, *keys), methods in their usual order, seeds ascending within a group."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (_order(r["label"]), *(sort_key(r.get(k)) for k in keys), r["seed"])):
        out.setdefault((row["label"], *(row.get(k) for k in keys)), []).append(row)
    return out


def best_settings(rows: list[dict[str, Any]], setting: str, validation: str) -> dict[str, Any]:
    """Per label, the value of ``setting`` whose seed-0 row scores highest on ``validation`` (ties: the smaller
    value). Selection on seed 0 only: the grids run seed 0, more seeds run at the chosen value afterwards.
    Labels without a scored seed-0 row (e.g. the base model) are absent."""
    scored: dict[str, dict[Any, float]] = {}
    for row in rows:
        value, score = row.get(setting), row.get(validation)
        if row["seed"] == 0 and value is not None and isinstance(score, (int, float)):
            scored.setdefault(row["label"], {})[value] = float(score)
    return {label: max(sorted(by_value, key=sort_key), key=by_value.__getitem__)
            for label, by_value in scored.items()}


def at_best(rows: list[dict[str, Any]], setting: str, validation: str) -> list[dict[str, Any]]:
    """The rows of each label at its :func:`best_settings` value; labels with no choice keep all their rows."""
    best = best_settings(rows, setting, validation)
    return [r for r in rows if r["label"] not in best or r.get(setting) == best[r["label"]]]


def missing(sources: list[Source], experiments: dict[str, Experiment | None]) -> list[str]:
    """The experiments of ``sources`` that have no committed table."""
    return list(dict.fromkeys(s.experiment for s in sources if experiments.get(s.experiment) is None))


def paired(a_rows: list[dict[str, Any]], b_rows: list[dict[str, Any]], metric: str,
           experiments: dict[str, Experiment | None], higher_is_better: bool = True,
           resamples: int = 4000) -> PairedDifference | None:
    """a - b (sign flipped when lower is better, so > 0 means a is better), paired by seed.

    Per example (bootstrap over seeds and test examples) when both sides have the predictions of
    ``metric``'s split and were scored on the same examples; otherwise per seed (bootstrap over seeds).
    None when the two sides share no seed.
    """
    a_by, b_by = {r["seed"]: r for r in a_rows}, {r["seed"]: r for r in b_rows}
    seeds = sorted(set(a_by) & set(b_by))
    if not seeds:
        return None
    sign = 1.0 if higher_is_better else -1.0
    split = PER_EXAMPLE.get(metric)
    sides = [[a_by[s] for s in seeds], [b_by[s] for s in seeds]]
    found = [[_split_of(r, split, experiments) for r in side] for side in sides] if split else None
    if found and all(found[0] + found[1]) and len({tuple(s.labels) for s in found[0] + found[1]}) == 1:
        a = np.stack([s.correct(r["cell"]) for s, r in zip(found[0], sides[0], strict=True)])
        b = np.stack([s.correct(r["cell"]) for s, r in zip(found[1], sides[1], strict=True)])
    else:
        a = np.array([[float(r[metric])] for r in sides[0]])
        b = np.array([[float(r[metric])] for r in sides[1]])
    return paired_bootstrap(sign * a, sign * b, resamples=resamples)


def _split_of(row: dict[str, Any], split: str, experiments: dict[str, Experiment | None]) -> Split | None:
    experiment = experiments.get(row["experiment"])
    found = experiment.splits.get(split) if experiment else None
    return found if found is not None and row["cell"] in found.by_cell else None
