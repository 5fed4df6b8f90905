"""Time the NLG step's fused loss kernel on ONE chunk of rows, this tree against an earlier commit's.

Not a test. One chunk of r rows x V logits (the CPU's 65 x 32,000), hidden size h: the student's and the
teacher's logits built from the head's inputs, then the kernel's CE + KL (T = 2) + top-20 entropy with
their gradient (BA-LoRA's step), or the CE alone (every other method's); and the head matmuls alone for
scale. Time: median thread CPU time over repeats, one torch thread. The earlier kernel is loaded from
``git show COMMIT:src/balora/row_terms.py`` (where it lived up to commit e849ad0).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/measure_head_chunk.py [--commit e849ad0] [--reps 25] \
        [--output docs/bench/head-chunk.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from git_module import module_at

from balora import head_loss


def _old_kernel(commit: str):
    return module_at(commit, "src/balora/row_terms.py")._fused_chunk


def _ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default="e849ad0")
    parser.add_argument("--rows", type=int, default=65)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--output", help="also write the numbers as JSON here (docs/bench/head-chunk.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    old = _old_kernel(args.commit)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden, generator=g) / args.hidden ** 0.5
    hidden = torch.randn(args.rows, args.hidden, generator=g)
    teacher = hidden + 0.1 * torch.randn(args.rows, args.hidden, generator=g)
    y = torch.randint(0, args.vocab, (args.rows,), generator=g)
    scales = [torch.tensor(1 / 256), torch.tensor(0.05 / 256), torch.tensor(-0.01 / 256)]
    cases = {
        "ce+kl+entropy": (lambda: old(hidden @ weight.T, y, teacher @ weight.T, 2.0, 20, scales, True),
                          lambda: head_loss._fused_chunk((hidden * 0.5) @ weight.T, y, (teacher * 0.5) @ weight.T,
                                                         2.0, 20, scales, True, True),
                          lambda: (hidden @ weight.T, teacher @ weight.T)),
        "ce alone": (lambda: old(hidden @ weight.T, y, None, 2.0, 0, scales, True),
                     lambda: head_loss._fused_chunk(hidden @ weight.T, y, None, 2.0, 0, scales, True, False),
                     lambda: hidden @ weight.T),
    }
    print(f"one chunk {args.rows} x {args.vocab}, h {args.hidden}, 1 thread, median of {args.reps} (thread CPU ms)")
    results = []
    for name, (before, now, matmuls) in cases.items():
        a, b = before(), now()
        row = {"case": name, "before_ms": round(_ms(before, args.reps), 3), "now_ms": round(_ms(now, args.reps), 3),
               "matmuls_ms": round(_ms(matmuls, args.reps), 3),
               "relative_grad_diff": (a[3] - b[3]).abs().max().item() / a[3].abs().max().item()}
        results.append(row)
        print(f"  {name:<14} {args.commit}: {row['before_ms']:6.2f}  this tree: {row['now_ms']:6.2f}  head matmuls "
              f"alone: {row['matmuls_ms']:6.2f}  (relative gradient difference {row['relative_grad_diff']:.1e})")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"command": "OMP_NUM_THREADS=1 .venv/bin/python experiments/measure_head_chunk.py "
                                  f"--reps {args.reps} --output {args.output}",
                       "commit": args.commit, "rows": args.rows, "vocab": args.vocab, "hidden": args.hidden,
                       "reps": args.reps, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
