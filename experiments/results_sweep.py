"""Where the regularizers act (section d′ of docs/results.md): what each weight of the sweep does to the model.

The sweep trains BA-LoRA with one term on (or all three) at 1, 10 and 100 times the 'official' weights (and in
between where a term starts to act: :data:`MULTIPLIERS`), in
the noise-epochs setting at label noise 0.4; the reference is PiSSA there (no term, the same seed, hence the
same data split and order). Per sweep row :func:`sweep_block` reports

- each term's share of the loss: λ_i · term_i / loss, averaged over the logging steps where λ_i > 0 (the
  diversity and SVD terms are off for the first fifth of training); a negative share lowers the loss;
- the final noisy fit (the last ``--epoch-eval`` row) and the test accuracy;
- how many test predictions differ from PiSSA's with the same seed (0: the term changed nothing the test
  split can see);

and per term the smallest multiplier that changes any test prediction, and the smallest whose paired
accuracy interval against PiSSA excludes 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from results_data import Experiment, Source, paired

from balora.training.weights import TERMS, make_schedule

#: the multipliers of the official weight each group was run at (consistency and svd finer where they start to act)
MULTIPLIERS = {"consistency": (1, 2, 3, 5, 10, 100), "diversity": (1, 10, 100), "svd": (1, 10, 30, 100),
               "all three": (1, 10, 100)}
REFERENCE = "none (= pissa)"
ALL = "all three"
NOISE = 0.4
BASE_WEIGHTS = {t: getattr(make_schedule("official", "nlu"), t) for t in TERMS}  # λ at ×1


def _weight(term: str, multiplier: int) -> float:
    return float(f"{BASE_WEIGHTS[term] * multiplier:g}")  # 0.005 × 10 read back from a CSV as 0.05


def label(group: str, multiplier: int) -> str:
    return f"{group} ×{multiplier}"


def sweep_sources() -> list[Source]:
    """PiSSA and BA-LoRA (all three ×1) from noise-epochs-tweets at noise 0.4, the rest from the sweep's runs."""
    sources = [Source("noise-epochs-tweets", where={"method": ("pissa",), "label_noise": (NOISE,)},
                      label=REFERENCE, borrowed=True)]
    for term in TERMS:
        sources += [Source(f"weight-sweep-{term}", where={f"{term}_weight": (_weight(term, m),)},
                           label=label(term, m)) for m in MULTIPLIERS[term]]
    sources.append(Source("noise-epochs-tweets", where={"method": ("ba-lora",), "label_noise": (NOISE,)},
                          label=label(ALL, 1), borrowed=True))
    sources += [Source(f"weight-sweep-all-x{m}", label=label(ALL, m)) for m in MULTIPLIERS[ALL][1:]]
    return sources


def sweep_pairs() -> list[tuple[str, str]]:
    return [(label(group, m), REFERENCE) for group in (*TERMS, ALL) for m in MULTIPLIERS[group]]


def _shares(curves: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per term: mean of λ·term / loss over the logging steps where λ > 0 (None: never on)."""
    out: dict[str, float | None] = {}
    for term in TERMS:
        ratios = [row[f"reg/{term}_weighted"] / row["loss"] for row in curves
                  if isinstance(row.get(f"reg/lambda_{term}"), float) and row[f"reg/lambda_{term}"] > 0
                  and isinstance(row.get("loss"), float) and row["loss"] != 0]
        out[term] = float(np.mean(ratios)) if ratios else None
    return out


def _changed(row: dict[str, Any], reference: dict[str, Any] | None, experiments: dict) -> int | None:
    """How many test predictions of ``row`` differ from ``reference``'s (None: no comparable predictions)."""
    if reference is None:
        return None
    splits = [experiments[r["experiment"]].splits.get("test") for r in (row, reference)]
    if any(s is None for s in splits) or splits[0].labels != splits[1].labels:
        return None
    a, b = splits[0].by_cell.get(row["cell"]), splits[1].by_cell.get(reference["cell"])
    if a is None or b is None:
        return None
    return int(sum(x != y for x, y in zip(a, b, strict=True)))


def _final_fit(row: dict[str, Any], experiments: dict[str, Experiment | None]) -> float | None:
    experiment = experiments.get(row["experiment"])
    logged = [e for e in (experiment.epochs if experiment else []) if e["cell"] == row["cell"]]
    logged = [e for e in logged if isinstance(e.get("epoch"), float)]
    return max(logged, key=lambda e: e["epoch"]).get("noisy_fit") if logged else None


def _text(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def sweep_block(rows: list[dict[str, Any]], experiments: dict[str, Experiment | None]) -> str:
    """The per-row table (one row per label and seed) and, per term, the smallest multiplier that acts."""
    if not rows:
        return "_no sweep runs committed_"
    references = {r["seed"]: r for r in rows if r["label"] == REFERENCE}
    order = [REFERENCE, *(label(g, m) for g in (*TERMS, ALL) for m in MULTIPLIERS[g])]
    header = ["run", "seed", *(f"{t} share of the loss" for t in TERMS), "final noisy fit", "test acc",
              "test predictions ≠ pissa's"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    changed: dict[str, int] = {}
    for row in sorted((r for r in rows if r["label"] in order), key=lambda r: (order.index(r["label"]), r["seed"])):
        experiment = experiments.get(row["experiment"])
        shares = _shares([c for c in (experiment.curves if experiment else []) if c["cell"] == row["cell"]])
        moved = _changed(row, references.get(row["seed"]), experiments)
        if moved is not None:
            changed[row["label"]] = max(moved, changed.get(row["label"], 0))
        total = len(experiments[row["experiment"]].splits["test"].ids) if moved is not None else None
        lines.append("| " + " | ".join([row["label"], str(row["seed"]), *(_text(shares[t], "+.4f") for t in TERMS),
                                        _text(_final_fit(row, experiments)), _text(row.get("accuracy")),
                                        "–" if moved is None else f"{moved} of {total}"]) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(_acting(g, rows, changed, experiments) for g in (*TERMS, ALL))


def _acting(group: str, rows: list[dict[str, Any]], changed: dict[str, int], experiments: dict) -> str:
    """'- TERM: changes test predictions from ×M; moves the accuracy (interval excludes 0) from ×M' (or never)."""
    run = [m for m in MULTIPLIERS[group] if any(r["label"] == label(group, m) for r in rows)]
    if not run:
        return f"- {group}: not run"
    first_change = next((m for m in run if changed.get(label(group, m))), None)
    first_move = None
    for m in run:
        d = paired([r for r in rows if r["label"] == label(group, m)], [r for r in rows if r["label"] == REFERENCE],
                   "accuracy", experiments)
        if d is not None and (d.low > 0 or d.high < 0):
            first_move = (m, d)
            break
    tried = ", ".join(f"×{m}" for m in run)
    change = f"from ×{first_change}" if first_change else f"at none of {tried}"
    move = (f"from ×{first_move[0]} ({first_move[1].interval()})" if first_move else f"at none of {tried}")
    return f"- {group}: changes test predictions {change}; moves the test accuracy (interval excludes 0) {move}."
