"""The NLG experiment's reference point: the base SmolLM2-135M, no adapter, on the same 60 test problems.

Rebuilds the test split of experiments/nlg-gsm.yaml exactly as ``balora train`` makes it (same data seed and
fractions), writes it to runs/nlg-gsm/test.jsonl, and scores the base model with the same evaluation as the
trained cells (held-out loss on the response tokens, exact match over the first ``generate_size``):

    python experiments/nlg_base.py     # -> runs/nlg-gsm/base.json (+ base.generations.jsonl)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "nlg-gsm.yaml"
COMPARE_ONLY = ("methods", "seeds", "grid", "metric")


def main() -> int:
    from balora.experiment.data import load_experiment_data
    from balora.experiment.settings import TrainSettings

    config = yaml.safe_load(CONFIG.read_text())
    out = ROOT / config["output"]
    settings = TrainSettings.from_dict({k: v for k, v in config.items() if k not in COMPARE_ONLY})
    test = load_experiment_data(settings).test
    out.mkdir(parents=True, exist_ok=True)
    test.to_json(out / "test.jsonl", lines=True)
    command = ["balora", "eval", "--model", settings.model, "--dataset", str(out / "test.jsonl"),
               "--generate-size", str(settings.generate_size), "--max-new-tokens", str(settings.max_new_tokens),
               "--max-length", str(settings.max_length), "--eval-batch-size", str(settings.eval_batch_size),
               "--output", str(out / "base.json")]
    print(" ".join(command))
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
