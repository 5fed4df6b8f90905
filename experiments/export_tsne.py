"""Export the 2-D t-SNE coordinates of `balora compare` cells' representations into a committed table.

    python experiments/export_tsne.py runs/imbalance-tweets            # seed 0 of every method
    python experiments/export_tsne.py runs/imbalance-tweets --seed 1 --max-points 300

The hidden representations (``cells/<method>-seed<S>/representations/step_*.safetensors``, (N, H) float32
per checkpoint) are far too large to commit and hold nothing a reader needs beyond the figure; their
t-SNE embedding is small: ``experiments/results/tsne/<experiment>.csv`` gets one row per point (cell,
method, seed, step, point, label, x, y), with the points subsampled per label in proportion and embedded
by the same code as ``balora plot tsne`` (:func:`balora.plots.embed_tsne`, seeded). make_results.py draws
the figure and the neighbourhood table of docs/results.md from that file alone.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from balora.errors import DataError
from balora.plots import load_representations, subsample
from balora.plots.run import embed_tsne, representation_files

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results" / "tsne"
HEADER = ["cell", "method", "seed", "step", "point", "label", "x", "y"]


def cells_of(run: Path, seed: int) -> list[Path]:
    """The cells of seed ``seed`` under ``run`` that saved representations, by name."""
    found = sorted(p for p in (run / "cells").glob(f"*-seed{seed}") if (p / "representations").is_dir())
    if not found:
        raise DataError(f"{run} has no cells/*-seed{seed}/representations/; run `balora compare` with "
                        "representation_checkpoints > 0 (an NLU task) first.")
    return found


def tsne_rows(cell: Path, seed: int, max_points: int) -> list[list]:
    """One row per embedded point of every checkpoint of ``cell``; the same points at every checkpoint."""
    method = cell.name.removesuffix(f"-seed{seed}")
    rows: list[list] = []
    for step, path in representation_files(cell):
        features, labels = load_representations(path)
        keep = subsample(labels, max_points, seed)
        points = embed_tsne(features[keep], seed)
        rows += [[cell.name, method, seed, step, int(i), int(labels[i]), f"{x:.4f}", f"{y:.4f}"]
                 for i, (x, y) in zip(keep, points, strict=True)]
    return rows


def export(run: Path, seed: int, max_points: int, out: Path = OUT) -> Path:
    """Write ``out/<run name>.csv`` atomically (a temporary file renamed into place)."""
    rows = [row for cell in cells_of(run, seed) for row in tsne_rows(cell, seed, max_points)]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{run.resolve().name}.csv"
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a `balora compare` output folder")
    parser.add_argument("--seed", type=int, default=0, help="the seed whose cells are embedded (also t-SNE's)")
    parser.add_argument("--max-points", type=int, default=500, help="points per checkpoint, labels in proportion")
    parser.add_argument("--out", type=Path, default=OUT, help="where <experiment>.csv goes")
    args = parser.parse_args(argv)
    if args.max_points < 5:
        print("export_tsne: --max-points must be >= 5", file=sys.stderr)
        return 2
    try:
        path = export(args.run, args.seed, args.max_points, args.out)
    except DataError as exc:
        print(f"export_tsne: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
