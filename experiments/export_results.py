"""Export `balora compare` output folders into the committed result files that docs/results.md is built from.

    python experiments/export_results.py runs/main-tweets                  # -> experiments/results/main-tweets*
    python experiments/export_results.py runs/a runs/b --name NAME         # several folders, one experiment
    python experiments/export_results.py runs/main-tweets --merge          # add cells to the committed tables

For experiment NAME (default: the folder's name) it writes, under experiments/results/ (``--out``):

- ``NAME.csv``: one row per finished cell: cell, method, seed, every setting of the cell's config.yaml (and
  ``learning_rate_used``: the method's default where the setting is empty), every metric of its
  metrics.json, ``runtime_s`` (the whole cell: load, training, evaluation), and from run_info.json the
  split sizes, optimizer steps and environment (``env_*``);
- ``curves/NAME.csv``: the training log per logging step (cell, step, epoch, loss, learning rate and every
  ``reg/*`` regularizer term);
- ``predictions/NAME.csv``: one row per test (and out-of-domain) example: split, id, label and each cell's
  prediction, for the paired statistics of :mod:`balora.experiment.stats`;
- ``epochs/NAME.csv`` (only when some cell ran with ``--epoch-eval``): one row per cell and epoch end: cell,
  epoch, step and the ``epoch_eval/*`` values without their prefix (``test_accuracy``, ``noisy_fit``,
  ``noisy_clean``, ``clean_train_accuracy``). They are not training-loss rows, so not in ``curves/``.

No model weight and no data row leaves the run folders; the files are small text tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
RUN_CONTROL = ("output", "resume", "overwrite")
SPLITS = ("test", "ood")  # the splits whose per-example predictions are kept


class ExportError(Exception):
    """A run folder that cannot be exported as asked (the message says why)."""


def finished_cells(runs: list[Path]) -> list[Path]:
    """Every cell folder with a metrics.json under ``runs`` (``RUN/cells/*``), ordered by name."""
    cells: dict[str, Path] = {}
    for run in runs:
        found = sorted(p.parent for p in (run / "cells").glob("*/metrics.json"))
        if not found:
            raise ExportError(f"{run} has no finished cell (no cells/*/metrics.json); is it a `balora compare` "
                              "output folder?")
        for cell in found:
            if cell.name in cells:
                raise ExportError(f"cell {cell.name} is in both {cells[cell.name].parent.parent} and {run}")
            cells[cell.name] = cell
    return [cells[name] for name in sorted(cells)]


def _read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _flat(value: Any) -> Any:
    if isinstance(value, list):
        return "|".join(map(str, value))
    return value


def run_row(cell: Path) -> dict[str, Any]:
    """The cell's settings, metrics, runtime and run facts as one flat row."""
    config = yaml.safe_load((cell / "config.yaml").read_text()) or {}
    metrics = json.loads((cell / "metrics.json").read_text())
    info = _read_json(cell / "run_info.json", {})
    row: dict[str, Any] = {"cell": cell.name, "method": config.get("method"), "seed": config.get("seed")}
    row.update({k: _flat(v) for k, v in config.items() if k not in (*RUN_CONTROL, "method", "seed")})
    if row.get("learning_rate") is None and row["method"] is not None:  # the method's default: record which
        from balora.methods import get_method

        row["learning_rate_used"] = get_method(row["method"]).default_learning_rate
    else:
        row["learning_rate_used"] = row.get("learning_rate")
    runtime = metrics.pop("train_runtime_s", None)
    row.update(metrics)
    row["runtime_s"] = runtime
    for key in ("train_rows", "validation_rows", "test_rows", "global_steps", "label_names", "balora_version"):
        if key in info:
            row[key] = _flat(info[key])
    for key, value in (info.get("environment") or {}).items():
        row[f"env_{key}"] = value
    return row


def curve_rows(cell: Path) -> list[dict[str, Any]]:
    """The training-loss entries of the cell's log_history.json (one per logging step)."""
    history = _read_json(cell / "log_history.json", [])
    return [{"cell": cell.name, **entry} for entry in history if "loss" in entry]


EPOCH_EVAL = "epoch_eval/"


def epoch_rows(cell: Path) -> list[dict[str, Any]]:
    """The cell's per-epoch evaluations (``--epoch-eval`` entries of log_history.json), prefix dropped."""
    history = _read_json(cell / "log_history.json", [])
    return [{"cell": cell.name, "epoch": entry.get("epoch"), "step": entry.get("step"),
             **{k.removeprefix(EPOCH_EVAL): v for k, v in entry.items() if k.startswith(EPOCH_EVAL)}}
            for entry in history if any(k.startswith(EPOCH_EVAL) for k in entry)]


def _value(value: Any) -> str:
    return "" if value is None else str(value)


def prediction_table(cells: list[Path]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the wide predictions table: split, id, label, one column per cell."""
    header = ["split", "id", "label", *(c.name for c in cells)]
    table: dict[tuple[str, int], list[str]] = {}
    for split in SPLITS:
        present = [c for c in cells if (c / f"predictions_{split}.jsonl").is_file()]
        if not present:
            continue
        if len(present) != len(cells):
            missing = sorted(c.name for c in cells if c not in present)
            raise ExportError(f"cells {', '.join(missing)} have no predictions_{split}.jsonl (run before balora "
                              "wrote per-example predictions?); re-run them or export the others alone.")
        labels: dict[int, str] | None = None
        for cell in present:
            rows = [json.loads(line) for line in (cell / f"predictions_{split}.jsonl").read_text().splitlines()
                    if line.strip()]
            mine = {r["id"]: _value(r["label"]) for r in rows}
            for r in rows:
                if "correct" in r and bool(r["correct"]) != (_value(r["prediction"]) == _value(r["label"])):
                    raise ExportError(f"{cell.name}, {split} example {r['id']}: 'correct' disagrees with prediction "
                                      "== label; this exporter keeps predictions only.")
            if labels is None:
                labels = mine
                for i in sorted(labels):
                    table[(split, i)] = [split, str(i), labels[i]]
            elif mine != labels:
                raise ExportError(f"{cell.name} was scored on other {split} examples than {present[0].name} (labels "
                                  "differ): the cells do not share a data split, so they cannot be paired.")
            predictions = {r["id"]: _value(r["prediction"]) for r in rows}
            for i in labels:
                table[(split, i)].append(predictions[i])
    return header, list(table.values())


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _value(v) for k, v in row.items()} for row in rows)


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _merged(committed: list[dict[str, Any]], new: list[dict[str, Any]], replaced: set[str]) -> list[dict[str, Any]]:
    """The committed rows of cells not in ``replaced``, then the new rows; ordered by cell (stable)."""
    rows = [r for r in committed if r["cell"] not in replaced] + new
    return sorted(rows, key=lambda r: r["cell"])


def _merged_predictions(path: Path, header: list[str], rows: list[list[str]],
                        replaced: set[str]) -> tuple[list[str], list[list[str]]]:
    """The committed wide predictions table with the new cells' columns added (or replaced).

    Both must cover the same (split, id, label) rows: cells scored on other examples cannot be paired.
    """
    if not path.is_file():
        return header, rows
    with path.open(newline="") as handle:
        committed = list(csv.reader(handle))
    old_header, old_rows = committed[0], committed[1:]
    if rows and [r[:3] for r in old_rows] != [r[:3] for r in rows]:
        raise ExportError(f"the new cells were scored on other examples than the committed ones in {path}: they "
                          "do not share a data split, so they cannot be merged into one experiment.")
    kept = [i for i, c in enumerate(old_header) if i >= 3 and c not in replaced]
    columns = {old_header[i]: [r[i] for r in old_rows] for i in kept}
    columns.update({c: [r[i] for r in rows] for i, c in enumerate(header) if i >= 3})
    cells = sorted(columns)
    base = [r[:3] for r in old_rows] if old_rows else [r[:3] for r in rows]
    return [*old_header[:3], *cells], [[*b, *(columns[c][n] for c in cells)] for n, b in enumerate(base)]


def export(runs: list[Path], name: str, out: Path = RESULTS, merge: bool = False) -> list[Path]:
    """Write ``out/NAME.csv``, ``out/curves/NAME.csv``, ``out/predictions/NAME.csv`` and, where there are
    per-epoch evaluations, ``out/epochs/NAME.csv``; returns the paths.

    ``merge``: keep the committed rows of cells that ``runs`` does not hold (e.g. new seeds added to an
    experiment whose earlier run folders are gone); a cell in both is taken from ``runs``.
    """
    cells = finished_cells(runs)
    replaced = {c.name for c in cells} if merge else None
    paths = {"runs": out / f"{name}.csv", "curves": out / "curves" / f"{name}.csv",
             "predictions": out / "predictions" / f"{name}.csv", "epochs": out / "epochs" / f"{name}.csv"}
    tables = {"runs": [run_row(c) for c in cells], "curves": [r for c in cells for r in curve_rows(c)],
              "epochs": [r for c in cells for r in epoch_rows(c)]}
    header, rows = prediction_table(cells)
    if replaced is not None:
        tables = {k: _merged(_read_rows(paths[k]), v, replaced) for k, v in tables.items()}
        header, rows = _merged_predictions(paths["predictions"], header, rows, replaced)
    written = [paths["runs"], paths["curves"]]
    write_csv(paths["runs"], tables["runs"])
    write_csv(paths["curves"], tables["curves"])
    if rows:
        paths["predictions"].parent.mkdir(parents=True, exist_ok=True)
        with paths["predictions"].open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        written.append(paths["predictions"])
    if tables["epochs"]:
        write_csv(paths["epochs"], tables["epochs"])
        written.append(paths["epochs"])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="`balora compare` output folders (RUN/cells/*)")
    parser.add_argument("--name", help="experiment name (default: the first folder's name)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default experiments/results)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the committed rows of cells the folders do not hold (new seeds of an experiment)")
    args = parser.parse_args(argv)
    try:
        written = export(args.runs, args.name or args.runs[0].resolve().name, args.out, args.merge)
    except (ExportError, OSError, ValueError, KeyError) as exc:
        print(f"export_results: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
