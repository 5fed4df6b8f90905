"""Measure PiSSA's randomized SVD: captured top-r mass per layer and init time, per (niter, oversample).

    OMP_NUM_THREADS=1 python scripts/measure_pissa_init.py --output docs/bench/pissa-init.json

On MiniLM (packaged, real weights) and the bench ``tiny`` shape (random weights), r = 16, all linear
layers. For each candidate (niter, oversample): :func:`balora.pissa_init.captured_mass_by_layer` over
``--seeds`` seeds (min and median over layers and seeds, and the per-layer minimum over seeds) and the
init time of ``get_peft_model(init_lora_weights=True)`` + :func:`balora.pissa_init.apply_pissa_init`,
against "today": peft's own ``get_peft_model(init_lora_weights="pissa_niter_4")``. Times are the fastest
of ``--reps`` interleaved repetitions on one thread (the machine is shared: the fastest is the least
disturbed). scripts/make_benchmarks.py turns the JSON into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

CANDIDATES = [(4, 0), (4, 8), (4, 16), (4, 24), (4, 32), (5, 24), (6, 16), (8, 0)]


def _models() -> dict[str, tuple[torch.nn.Module, str]]:
    from balora.bench.shapes import build_model, model_config
    from balora.models import load_model

    minilm, _ = load_model("minilm", "classification", num_labels=3)
    tiny = build_model(model_config("tiny"), "float32", "cpu", 0)
    return {"minilm": (minilm, "SEQ_CLS"), "tiny": (tiny, "CAUSAL_LM")}


def _config(task_type: str, rank: int, init: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear", task_type=task_type,
                      init_lora_weights=init)


def _fastest(fn: Any, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(name: str, base: torch.nn.Module, task_type: str, rank: int, seeds: int, reps: int) -> dict[str, Any]:
    from peft import get_peft_model

    from balora.pissa_init import apply_pissa_init, captured_mass_by_layer

    probe = get_peft_model(copy.deepcopy(base), _config(task_type, rank, True))
    candidates = []
    per_layer: dict[str, dict[str, float]] = {}
    for niter, over in CANDIDATES:
        masses = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            layer_mass = captured_mass_by_layer(probe, niter=niter, oversample=over)
            masses.append(layer_mass)
            for layer, value in layer_mass.items():
                key = f"{niter}/{over}"
                seen = per_layer.setdefault(layer, {})
                seen[key] = round(min(value, seen.get(key, 1.0)), 5)
        values = [v for m in masses for v in m.values()]
        candidates.append({"niter": niter, "oversample": over, "q": rank + over, "mass_min": round(min(values), 5),
                           "mass_median": round(statistics.median(values), 5)})

    def today() -> None:
        get_peft_model(copy.deepcopy(base), _config(task_type, rank, f"pissa_niter_{CANDIDATES[0][0]}"))

    def ours(niter: int, over: int) -> Any:
        def run() -> None:
            apply_pissa_init(get_peft_model(copy.deepcopy(base), _config(task_type, rank, True)), niter=niter,
                             oversample=over)
        return run

    copy_s = min(_fastest(lambda: copy.deepcopy(base), reps))  # every timed call copies the model first
    times: dict[str, list[float]] = {"today": []}
    for _ in range(reps):  # interleaved, so a busy moment hits every candidate alike
        times["today"] += _fastest(today, 1)
        for c in candidates:
            times.setdefault(f"{c['niter']}/{c['oversample']}", []).extend(
                _fastest(ours(c["niter"], c["oversample"]), 1))
    today_s = min(times["today"]) - copy_s
    for c in candidates:
        run = times[f"{c['niter']}/{c['oversample']}"]
        c["init_s"] = round(min(run) - copy_s, 4)
        c["init_s_median"] = round(statistics.median(run) - copy_s, 4)
        c["time_vs_today"] = round(c["init_s"] / today_s, 3)
    shapes = sorted({tuple(m.get_base_layer().weight.shape) for m in probe.modules() if hasattr(m, "lora_A")
                     and "default" in getattr(m, "lora_A", {})})
    return {"model": name, "layers": len(per_layer), "shapes": [list(s) for s in shapes],
            "today_peft_pissa_niter_4_s": round(today_s, 4), "candidates": candidates, "per_layer_min": per_layer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import peft
    import transformers

    transformers.logging.set_verbosity_error()
    from balora.bench.worker import device_name
    from balora.pissa_init import DEFAULT_NITER, DEFAULT_OVERSAMPLE

    result: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 python scripts/measure_pissa_init.py --output docs/bench/pissa-init.json",
        "rank": args.rank, "seeds": args.seeds, "reps": args.reps, "threads": 1,
        "default": {"niter": DEFAULT_NITER, "oversample": DEFAULT_OVERSAMPLE},
        "device_name": device_name("cpu"), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "python": platform.python_version(), "models": {},
    }
    for name, (base, task_type) in _models().items():
        result["models"][name] = measure(name, base, task_type, args.rank, args.seeds, args.reps)
        print(json.dumps({k: v for k, v in result["models"][name].items() if k != "per_layer_min"}, indent=1),
              flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
