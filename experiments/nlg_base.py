"""An NLG experiment's reference point: the base model, no adapter, on the experiment's own test problems.

Rebuilds the test split of an NLG config (default experiments/nlg-gsm.yaml) exactly as ``balora train`` makes
it (same data seed and fractions), writes it to OUTPUT/test.jsonl, and scores the base model with the same
evaluation as the trained cells (held-out loss on the response tokens, exact match over the first
``generate_size``, the data set's answer type):

    python experiments/nlg_base.py                                  # -> runs/nlg-gsm/base.json
    python experiments/nlg_base.py experiments/nlg-chain-sum.yaml   # -> runs/nlg-chain-sum/base.json
(and OUTPUT/base.generations.jsonl: what the model wrote), then exports the scores as the committed table
experiments/results/<experiment>-base.csv (one row, method ``base``; ``--export-only`` re-exports an
existing base.json without scoring again).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "nlg-gsm.yaml"
COMPARE_ONLY = ("methods", "seeds", "grid", "metric")
RESULTS = ROOT / "experiments" / "results"


def export_base(scores: Path, config: dict, results: Path = RESULTS) -> Path:
    """base.json -> results/<experiment>-base.csv: the base model's row (seed 0: greedy decoding, no training)."""
    name = Path(config["output"]).name
    row = {"cell": "base", "method": "base", "seed": 0, "model": config["model"], "dataset": config["dataset"],
           **json.loads(scores.read_text())}
    path = results / f"{name}-base.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row), lineterminator="\n")
        writer.writeheader()
        writer.writerow(row)
    return path


def main(argv: list[str] | None = None) -> int:
    from balora.experiment.data import answer_type, load_experiment_data
    from balora.experiment.settings import TrainSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, default=CONFIG, help="the experiment's YAML config")
    parser.add_argument("--export-only", action="store_true", help="export an existing OUTPUT/base.json only")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    out = ROOT / config["output"]
    if args.export_only:
        print(f"wrote {export_base(out / 'base.json', config)}")
        return 0
    settings = TrainSettings.from_dict({k: v for k, v in config.items() if k not in COMPARE_ONLY})
    test = load_experiment_data(settings).test
    out.mkdir(parents=True, exist_ok=True)
    test.to_json(out / "test.jsonl", lines=True)
    command = ["balora", "eval", "--model", settings.model, "--dataset", str(out / "test.jsonl"),
               "--generate-size", str(settings.generate_size), "--max-new-tokens", str(settings.max_new_tokens),
               "--max-length", str(settings.max_length), "--eval-batch-size", str(settings.eval_batch_size),
               "--answer-type", answer_type(settings),
               "--output", str(out / "base.json")]
    print(" ".join(command))
    code = subprocess.run(command, check=False).returncode
    if code == 0:
        print(f"wrote {export_base(out / 'base.json', config)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
