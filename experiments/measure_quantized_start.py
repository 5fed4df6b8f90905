"""How far a quantized base's step-0 model is from the full-precision original (design §9).

For each packaged model, method (lora: Q(W); ba-lora: QPiSSA, Q(W_res) + s·B0·A0) and quantization, the
step-0 adapted model is compared with the full-precision model on the same fixed inputs: the relative
error ||Δh|| / ||h|| of the last hidden states (over real tokens), max |Δlogit| and the mean KL(p_fp || p_q)
per position (per example for MiniLM, whose classifier head is freshly initialised: its logits are small,
so the hidden-state error is the informative number there). Writes
docs/bench/quantized-start.json; design §9 quotes it.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/measure_quantized_start.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import balora
from balora.models import load_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Low-rank adapters train a small update on top of frozen weights.",
    "What is the capital of France? The capital of France is Paris.",
    "def add(a, b):\n    return a + b",
]


def measure(name: str, task: str, method: str, kind: str, rank: int) -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_model(name, task, **({"num_labels": 2} if task == "classification" else {}))
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        reference, hidden = out.logits.float(), out.hidden_states[-1].float()
    torch.manual_seed(0)
    fresh, _ = load_model(name, task, **({"num_labels": 2} if task == "classification" else {}))
    fresh.load_state_dict(model.state_dict())  # the same classifier head
    adapted = balora.adapt(fresh, method=method, r=rank, quantize=kind)
    with torch.no_grad():
        out = adapted(**batch, output_hidden_states=True)
        step0, hidden0 = out.logits.float(), out.hidden_states[-1].float()
    per_example = task == "classification"
    mask = torch.ones(step0.shape[0], dtype=torch.bool) if per_example else batch["attention_mask"].bool()
    kl = F.kl_div(step0.log_softmax(-1)[mask], reference.log_softmax(-1)[mask], log_target=True,
                  reduction="none").sum(-1)
    tokens = batch["attention_mask"].bool()
    relative = ((hidden0 - hidden)[tokens].norm() / hidden[tokens].norm()).item()
    return {"model": name, "method": method, "quantize": kind, "rank": rank,
            "rel_err_last_hidden": float(f"{relative:.3g}"),
            "max_abs_dlogit": round((step0 - reference)[mask].abs().max().item(), 5),
            "mean_kl": float(f"{kl.mean().item():.3g}"), "max_kl": float(f"{kl.max().item():.3g}")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench/quantized-start.json")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args(argv)
    rows = []
    for name, task in (("minilm", "classification"), ("smollm2-135m", "causal-lm")):
        for kind in ("nf4", "int8"):
            for method in ("lora", "ba-lora"):
                rows.append(measure(name, task, method, kind, args.rank))
                print(json.dumps(rows[-1]), file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python experiments/measure_quantized_start.py",
                                          "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
