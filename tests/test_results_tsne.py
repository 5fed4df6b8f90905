"""experiments/export_tsne.py and results_tsne.py: saved representations -> committed coordinates -> the
page's neighbourhood table, against hand-computed neighbour votes."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import export_tsne  # noqa: E402
import results_tsne  # noqa: E402


def test_knn_recall_matches_hand_counted_votes():
    # class 0 at x = 0, 1, 2; class 1 at x = 10, 11 and one class-1 point at x = 1.5 among the zeros.
    points = np.array([[0.0, 0], [1, 0], [2, 0], [10, 0], [11, 0], [1.5, 0]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    # k = 2: point 0 -> (1, 5) = labels (0, 1): tie -> 0 (right); point 1 -> (5, 0) tie -> 0 (right);
    # point 2 -> (5, 1) tie -> 0 (right); point 3 -> (4, 2): tie -> 0 (wrong); point 4 -> (3, 2): tie (wrong);
    # point 5 -> (1, 2) = (0, 0) -> 0 (wrong). Class 0: 3 of 3; class 1: 0 of 3.
    assert results_tsne.knn_recall(points, labels, k=2) == {0: 1.0, 1: 0.0}
    # k = 1: 0->1 (0 ok), 1->5 (1, wrong), 2->5 (1, wrong), 3->4 (1 ok), 4->3 (1 ok), 5->1 or 2: 1 (dist .5) -> 0 wrong
    assert results_tsne.knn_recall(points, labels, k=1) == pytest.approx({0: 1 / 3, 1: 2 / 3})


def _fake_run(root: Path, n: int = 40) -> Path:
    """A compare folder with two methods' seed-0 cells, two checkpoints each, two well-separated classes."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    for method in ("lora", "ba-lora"):
        folder = root / "cells" / f"{method}-seed0" / "representations"
        folder.mkdir(parents=True)
        for step in (0, 10):
            features = torch.randn(n, 8, generator=generator) + 6.0 * labels[:, None].float() * (step > 0)
            save_file({"features": features, "labels": labels}, str(folder / f"step_{step:06d}.safetensors"))
    return root


def test_export_then_block_reads_separation_from_the_coordinates(tmp_path):
    run = _fake_run(tmp_path / "imbalance-tweets")
    path = export_tsne.export(run, seed=0, max_points=30, out=tmp_path / "results" / "tsne")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 30 and set(rows[0]) == set(export_tsne.HEADER)
    loaded = results_tsne.load(tmp_path / "results", "imbalance-tweets")
    table = results_tsne.panels(loaded)
    assert sorted(table) == [("ba-lora", 0), ("ba-lora", 10), ("lora", 0), ("lora", 10)]
    # at step 10 the classes are 6 standard deviations apart: the neighbours are (almost) all of one class
    for method in ("lora", "ba-lora"):
        assert min(results_tsne.knn_recall(*table[method, 10]).values()) >= 0.9
    text = results_tsne.block(loaded, ["neg", "pos"], "figures/x.png", "missing")
    assert "| neg recall | pos recall | balanced |" in text and "figures/x.png" in text
    assert results_tsne.block(None, [], None, "not run yet") == "_t-SNE coordinates not run yet._"


def test_export_names_the_missing_representations(tmp_path, capsys):
    (tmp_path / "run" / "cells" / "lora-seed0").mkdir(parents=True)
    assert export_tsne.main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 1
    assert "representation_checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
