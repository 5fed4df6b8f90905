"""The weight-sweep section of docs/results.md (experiments/results_sweep.py) on a hand-made fixture: each
term's share of the loss, the predictions that differ from PiSSA's, and the smallest multiplier that acts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import export_results  # noqa: E402
import make_results  # noqa: E402

LABELS = [i % 3 for i in range(40)]
PAGE = "# Results\n\n<!-- BEGIN weight-sweep -->\n<!-- END weight-sweep -->\n\n" \
       "<!-- BEGIN weight-sweep-terms -->\n<!-- END weight-sweep-terms -->\n"


def _cell(root: Path, name: str, method: str, settings: dict, wrong: list[int], history: list[dict]) -> None:
    """A finished cell scored on LABELS, wrong exactly on the examples ``wrong``; last epoch's noisy fit 0.3."""
    cell = root / "cells" / name
    cell.mkdir(parents=True)
    config = {"model": "minilm", "dataset": "tweets", "method": method, "seed": 0, "output": str(cell),
              "label_noise": 0.4, "epochs": 2, "epoch_eval": True, "learning_rate": None, "data_seed": 0, **settings}
    (cell / "config.yaml").write_text(yaml.safe_dump(config))
    accuracy = 1 - len(wrong) / len(LABELS)
    (cell / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "train_runtime_s": 5.0}))
    fits = [{"epoch_eval/test_accuracy": accuracy, "epoch_eval/noisy_fit": fit, "epoch": epoch, "step": 4 * epoch}
            for epoch, fit in ((1.0, 0.5), (2.0, 0.3))]
    (cell / "log_history.json").write_text(json.dumps(history + fits))
    (cell / "predictions_test.jsonl").write_text("".join(
        json.dumps({"id": i, "label": y, "prediction": (y + 1) % 3 if i in wrong else y}) + "\n"
        for i, y in enumerate(LABELS)))


def _log(loss: float, **terms: tuple[float, float]) -> dict:
    """One logging row: loss, and per term (λ, weighted value)."""
    row = {"loss": loss, "step": 2, "epoch": 0.5}
    for term, (lam, weighted) in terms.items():
        row.update({f"reg/lambda_{term}": lam, f"reg/{term}_weighted": weighted, f"reg/{term}": weighted / lam
                    if lam else 0.0})
    return row


def test_sweep_shares_changed_predictions_and_where_each_term_acts(tmp_path):
    runs = tmp_path / "runs"
    # the reference: pissa, wrong on the first 10 of 40 (accuracy 0.75)
    _cell(runs / "noise-epochs-tweets", "pissa-label_noise0.4-seed0", "pissa", {}, list(range(10)),
          [{"loss": 1.0, "step": 2, "epoch": 0.5}])
    sweep = runs / "weight-sweep-consistency"
    # x1: the same predictions as pissa; x10: 2 predictions differ, same accuracy; x100: 20 more right
    _cell(sweep, "ba-lora-consistency_weight0.025-seed0", "ba-lora", {"consistency_weight": 0.025},
          list(range(10)), [_log(2.0, consistency=(0.025, 0.1)), _log(1.0, consistency=(0.025, 0.3))])
    _cell(sweep, "ba-lora-consistency_weight0.25-seed0", "ba-lora", {"consistency_weight": 0.25},
          [*range(9), 12], [_log(1.0, consistency=(0.25, 0.5))])
    _cell(sweep, "ba-lora-consistency_weight2.5-seed0", "ba-lora", {"consistency_weight": 2.5},
          [], [_log(4.0, consistency=(2.5, 3.0))])
    # diversity x1: λ off in the first row (not averaged), a negative weighted term after
    _cell(runs / "weight-sweep-diversity", "ba-lora-diversity_weight0.005-seed0", "ba-lora",
          {"diversity_weight": 0.005}, list(range(10)),
          [_log(1.0, diversity=(0.0, 0.0)), _log(2.0, diversity=(0.005, -0.02))])
    out = tmp_path / "results"
    for folder in sorted(runs.iterdir()):
        assert export_results.main([str(folder), "--out", str(out)]) == 0

    doc = tmp_path / "results.md"
    doc.write_text(PAGE)
    assert make_results.main(["--results", str(out), "--doc", str(doc), "--no-figures"]) == 0
    page = doc.read_text()
    terms = page.split("<!-- BEGIN weight-sweep-terms -->")[1]
    # shares: mean(0.1/2, 0.3/1) = 0.175; 0.5; 3/4 = 0.75; diversity only where λ > 0: -0.02/2 = -0.01
    assert "| none (= pissa) | 0 | – | – | – | 0.300 | 0.750 | 0 of 40 |" in terms
    assert "| consistency ×1 | 0 | +0.1750 | – | – | 0.300 | 0.750 | 0 of 40 |" in terms
    assert "| consistency ×10 | 0 | +0.5000 | – | – | 0.300 | 0.750 | 2 of 40 |" in terms
    assert "| consistency ×100 | 0 | +0.7500 | – | – | 0.300 | 1.000 | 10 of 40 |" in terms
    assert "| diversity ×1 | 0 | – | -0.0100 | – | 0.300 | 0.750 | 0 of 40 |" in terms
    line = next(x for x in terms.splitlines() if x.startswith("- consistency:"))
    assert line.startswith("- consistency: changes test predictions from ×10; moves the test accuracy "
                           "(interval excludes 0) from ×100 (+0.250 [")
    assert "- diversity: changes test predictions at none of ×1; moves the test accuracy (interval excludes 0) " \
           "at none of ×1." in terms
    assert "- svd: not run" in terms
    # the section's own table and paired differences against pissa
    section = page.split("<!-- BEGIN weight-sweep -->")[1].split("<!-- END weight-sweep -->")[0]
    assert "- consistency ×10 − none (= pissa): +0.000 [" in section
    assert make_results.main(["--results", str(out), "--doc", str(doc), "--check"]) == 0
