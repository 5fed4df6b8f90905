"""``balora bench``: parse the options, call :func:`balora.bench.run_benchmark`, print a table or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import EXIT_FAILURE, EXIT_OK, add_config_option, fraction, positive_int

EPILOG = """examples:
  balora bench --model tiny --device cpu --json
  balora bench --model tiny --device cpu --dual-naive --breakdown --svd-init
  balora bench --model tiny --device cpu --methods lora lora-nf4 ba-lora ba-lora-nf4
  balora bench --model llama-1b --device cuda --dtype bfloat16 --json --output bench.json

Each method runs in a fresh process (on the CPU that is how its peak RSS is per method). Progress goes to
stderr; the table (or with --json one JSON list, one row per method) goes to stdout."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..bench import BENCH_METHODS, SHAPES
    from ..bench.runner import default_methods
    from ..methods import DEFAULT_PISSA_NITER

    parser = subparsers.add_parser(
        "bench", help="time and memory of each method's training step, as ratios to LoRA",
        description="Measure each method's real training step (BALoRATrainer) on one model shape and batch: "
                    "median step time, peak memory, tokens/s, adapter init time, ratios to LoRA.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    parser.add_argument("--model", default="tiny",
                        help=f"a shape ({', '.join(SHAPES)}) or a model directory (config only, random weights)")
    parser.add_argument("--methods", nargs="+", choices=BENCH_METHODS, default=None, metavar="METHOD",
                        help=f"methods to measure (default: {' '.join(default_methods())}); also dual-lora-naive, "
                             "lora-nf4 and ba-lora-nf4 (an NF4 base: QLoRA, QPiSSA; needs bitsandbytes)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="default: the shape's")
    parser.add_argument("--seq-len", type=positive_int, default=None, help="default: the shape's")
    parser.add_argument("--scored-fraction", type=fraction, default=0.5,
                        help="trailing fraction of each sequence with labels; the prompt part is masked")
    parser.add_argument("--rank", type=positive_int, default=16)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: the shape's (float32 for tiny, bfloat16 for llama-1b)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--steps", type=positive_int, default=None, help="timed steps (default 5 CPU, 10 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 3 GPU)")
    parser.add_argument("--breakdown", action="store_true",
                        help="for ba-lora: time the reference forward and each regularizer alone")
    parser.add_argument("--svd-init", action="store_true",
                        help="time PiSSA's init with the exact SVD and with the randomized pissa_niter_K")
    parser.add_argument("--svd-niter", type=int, default=DEFAULT_PISSA_NITER, help="K of pissa_niter_K")
    parser.add_argument("--dual-naive", action="store_true",
                        help="also run dual-lora-naive (dense ΔW kept for backward) beside dual-lora")
    parser.add_argument("--in-process", action="store_true",
                        help="run every method in this process (faster; CPU memory then uses a reset RSS peak)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads for the measurement (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON list, one row per method")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON rows to this file")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..bench import format_report, run_benchmark

    rows = run_benchmark(
        args.model, args.methods, batch_size=args.batch_size, seq_len=args.seq_len,
        scored_fraction=args.scored_fraction, rank=args.rank, dtype=args.dtype, device=args.device,
        steps=args.steps, warmup=args.warmup, breakdown=args.breakdown, svd_init=args.svd_init,
        svd_niter=args.svd_niter, dual_naive=args.dual_naive, isolate=not args.in_process, threads=args.threads,
        seed=args.seed,
    )
    text = json.dumps(rows, indent=2)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text if args.json else format_report(rows), flush=True)
    return EXIT_FAILURE if any("error" in row for row in rows) else EXIT_OK
