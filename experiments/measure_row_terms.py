"""Peak memory and time of the NLG step's loss terms on the scored rows: before vs after issue 13.

Not a test. Each variant runs in a fresh process (one CPU thread, default allocator) on the same inputs:
hidden rows H (M, h) with gradient, a frozen head W (V, h), the reference's hidden rows, the next-token
ids. One "step" is forward + backward of CE + KL + top-K entropy + SVD term (all four at once, as in a
BA-LoRA step), plus the reference's head at the scored rows where a variant needs the reference logits.
Time: median CPU time of the thread per step (robust to other load). Peak: the process's RSS peak over
the timed steps minus its RSS after the imports, so it includes the inputs (W: V h floats).

  old         Z = H W^T; F.cross_entropy; kl_rows / topk_entropy_rows / svd_ratio as of commit a7886a8
  rows        Z = H W^T; one fused chunked CE+KL+entropy pass; SVD through the head (cached factor)
  rows-svdz   as rows, but the SVD term on Z (the fallback for a trained head)
  head        no Z at all: CE+KL+entropy rebuilt from H chunk by chunk; SVD through the head

    OMP_NUM_THREADS=1 .venv/bin/python experiments/measure_row_terms.py [--m 512 --v 32000 --h 256]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

OLD_COMMIT = "a7886a8"
VARIANTS = ("old", "rows", "rows-svdz", "head")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _reset_peak() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _old_module():
    from git_module import module_at

    return module_at(OLD_COMMIT, "src/balora/regularizers.py")


def child(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from balora import regularizers as R
    from balora.row_terms import head_row_term_sums, row_term_sums

    torch.set_num_threads(1)
    old = _old_module() if args.variant == "old" else None
    base = _rss()
    g = torch.Generator().manual_seed(0)
    m, v, h = args.m, args.v, args.h
    weight = torch.randn(v, h, generator=g) / h**0.5
    hidden = torch.randn(m, h, generator=g).requires_grad_(True)
    ref_hidden = hidden.detach() + 0.1 * torch.randn(m, h, generator=g)
    targets = torch.randint(0, v, (m,), generator=g)
    t0 = time.process_time()
    factor = None if args.variant == "old" else R.head_gram_factor(weight)
    factor_ms = (time.process_time() - t0) * 1e3
    rows = R.rows_per_chunk(args.chunk, v, hidden.device) if args.variant != "old" else "old default"

    def step() -> None:
        if args.variant != "head":  # the reference forward's head at the scored rows
            with torch.no_grad():
                ref_logits = ref_hidden @ weight.T
        if args.variant == "old":
            z = hidden @ weight.T
            loss = (F.cross_entropy(z, targets) + old.kl_rows(z, ref_logits) - old.topk_entropy_rows(z, 20)
                    - old.svd_ratio(z, 10))
        elif args.variant == "head":
            ce, kl, ent = head_row_term_sums(hidden, weight, None, rows, targets=targets, teacher_hidden=ref_hidden,
                                             temperature=2.0, top_k=20)
            loss = (ce + 4 * kl - ent) / m - R.svd_ratio_through_head(hidden, k=10, factor=factor)
        else:
            z = hidden @ weight.T
            ce, kl, ent = row_term_sums(z, rows, targets=targets, teacher=ref_logits, temperature=2.0, top_k=20)
            svd = R.svd_ratio(z, 10) if args.variant == "rows-svdz" else R.svd_ratio_through_head(
                hidden, k=10, factor=factor)
            loss = (ce + 4 * kl - ent) / m - svd
        loss.backward()
        hidden.grad = None

    step()  # warm-up
    _reset_peak()
    times = []
    for _ in range(args.repeats):
        t0 = time.process_time()  # CPU time of the one thread: robust to other processes on the machine
        step()
        times.append((time.process_time() - t0) * 1e3)
    return {"variant": args.variant, "ms": statistics.median(times), "peak_mib": (_peak() - base) / 2**20,
            "factor_ms_once": factor_ms, "chunk_rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=512)
    parser.add_argument("--v", type=int, default=32000)
    parser.add_argument("--h", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=None, help="rows per chunk (default: the element budget)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", choices=VARIANTS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"M={args.m} V={args.v} h={args.h} float32, CPU, 1 thread; median CPU time of {args.repeats} steps")
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--m", str(args.m), "--v", str(args.v),
               "--h", str(args.h), "--repeats", str(args.repeats)]
        cmd += ["--chunk", str(args.chunk)] if args.chunk else []
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        print(f"{variant:10s} {result['ms']:8.1f} ms  peak {result['peak_mib']:7.1f} MiB  "
              f"(chunk {result['chunk_rows']} rows; head factor once: {result['factor_ms_once']:.0f} ms)")


if __name__ == "__main__":
    main()
