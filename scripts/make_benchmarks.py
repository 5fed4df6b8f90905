"""Regenerate the numbers of docs/benchmarks.md from the committed JSON in docs/bench/ (never typed in).

    python scripts/make_benchmarks.py            # rewrite the generated blocks (make bench-docs)
    python scripts/make_benchmarks.py --check    # exit 1 when the page is not what the JSON gives

docs/benchmarks.md is hand-written prose with generated blocks between ``<!-- BEGIN name -->`` and
``<!-- END name -->``; only the blocks are rewritten. The JSON and the commands that write it:

- ``docs/bench/tiny-cpu.json``: :data:`TINY_COMMAND` (``balora bench`` rows);
- ``docs/bench/tiny-cpu-nf4.json``: :data:`NF4_COMMAND` (the quantized rows beside their float32 ones);
- ``docs/bench/head-chunk.json``: ``experiments/measure_head_chunk.py`` (the loss kernel on one chunk);
- ``docs/bench/pissa-init.json``: ``scripts/measure_pissa_init.py``;
- ``docs/bench/gpu-check/``: the folder ``make gpu-check`` writes on a GPU machine (absent: "not measured").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from balora.bench import check_goals, format_report
from balora.pissa_init import DEFAULT_NITER, DEFAULT_OVERSAMPLE

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
DATA = ROOT / "docs" / "bench"
TINY_COMMAND = ("nice balora bench --model tiny --device cpu --threads 1 --dual-naive --breakdown --svd-init "
                "--json --output docs/bench/tiny-cpu.json")
BLOCK = re.compile(r"(<!-- BEGIN (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.S)


def _load(relative: str) -> Any:
    path = DATA / relative
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(relative: str) -> str:
    return f"_Not measured yet: `docs/bench/{relative}` is missing._\n"


def _fence(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


def _x(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _goal_table(rows: list[dict[str, Any]], device: str) -> str:
    lines = ["| method | what | goal (× LoRA) | measured | result |", "|---|---|---|---|---|"]
    for g in check_goals(rows, device):
        verdict = {True: "pass", False: "**fail**", None: "not measured"}[g["passed"]]
        lines.append(f"| {g['method']} | {g['what']} | {g['goal']} | {_x(g['value'])} | {verdict} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the tiny CPU run


#: A 1-thread run on the 2-core machine competes for a core once the 1-minute load average passes this.
BUSY_LOAD = 1.5


def _loads(rows: list[dict[str, Any]]) -> list[float]:
    return [r["load_average_1m"] for r in rows if r.get("load_average_1m") is not None]


def tiny_setup(rows: list[dict[str, Any]]) -> str:
    r = next(r for r in rows if "error" not in r)
    versions = ", ".join(f"{k} {r[k]}" for k in ("torch", "transformers", "peft") if r.get(k))
    loads = _loads(rows)
    text = (f"Machine: `{r['device_name']}`, {r['threads']} torch thread(s), {versions}; 1-minute load average "
            f"{min(loads):.1f}–{max(loads):.1f} as the methods started (each row's `load_average_1m`).\n\n")
    if max(loads) >= BUSY_LOAD:
        text += (f"**This run's step times are not a measurement of the methods.** Other jobs kept the load "
                 f"average at {min(loads):.1f}–{max(loads):.1f} on 2 cores for the whole run, so each worker got a "
                 "varying share of a core and the time ratios below mostly show that contention (PiSSA's step is "
                 "LoRA's plus nothing, yet it reads as a different ratio). Peak memory does not depend on the load: "
                 "the memory ratios hold. Rerun the command on a quiet machine for times.\n\n")
    return text + _fence(TINY_COMMAND, "bash")


def tiny_report(rows: list[dict[str, Any]]) -> str:
    return _fence(format_report(rows))


def tiny_goals(rows: list[dict[str, Any]]) -> str:
    return _goal_table(rows, "cpu")


def tiny_lora_row(rows: list[dict[str, Any]]) -> str:
    lora = next(r for r in rows if r["method"] == "lora")
    return _fence(json.dumps({k: v for k, v in lora.items() if k != "svd_init"}, indent=2), "json")


def _tensors(r: dict[str, Any], before: str = "; ") -> str:
    """'; tensors only 1.14× (143 MiB)' where the row counted its tensors, else ''."""
    if r.get("tensor_memory_ratio_vs_lora") is None:
        return ""
    return f"{before}tensors only {_x(r['tensor_memory_ratio_vs_lora'])} ({r['tensor_peak_mib']:.0f} MiB)"


def tiny_findings(rows: list[dict[str, Any]]) -> str:
    by = {r["method"]: r for r in rows if "error" not in r}
    out = []
    if max(_loads(rows)) >= BUSY_LOAD:
        out.append("- _The times below come from the contended run above: read the memory figures only._")
    if "ba-lora" in by:
        b = by["ba-lora"]
        line = (f"- **BA-LoRA: {_x(b['time_ratio_vs_lora'])} LoRA's step time and {_x(b['memory_ratio_vs_lora'])} "
                f"its peak memory** ({b['step_ms']:.0f} ms, {b['peak_mib']:.0f} MiB{_tensors(b)}).")
        parts = b.get("breakdown") or {}
        if "over_lora_ms" in parts:
            pieces = [(k, label) for k, label in (("reference_forward_ms", "the reference forward"),
                                                  ("gather_ms", "gathering the scored rows"),
                                                  ("regularizers_ms", "the three regularizers")) if parts.get(k)]
            split = ", ".join(f"{label} {parts[k]:.0f} ms ({parts[k] / parts['lora_step_ms']:.2f}× a LoRA step)"
                              for k, label in pieces)
            line += (f" Its extra {parts['over_lora_ms']:.0f} ms over LoRA: {split}; "
                     f"{parts['unexplained_ms']:.0f} ms left unexplained (PiSSA vs LoRA, noise).")
        if parts.get("over_lora_mib") is not None:
            line += f" Memory: {parts['over_lora_mib']:+.0f} MiB over LoRA's {parts['lora_peak_mib']:.0f} MiB."
        out.append(line)
    if "dual-lora" in by:
        d = by["dual-lora"]
        line = (f"- **Dual LoRA: {_x(d['time_ratio_vs_lora'])} time, {_x(d['memory_ratio_vs_lora'])} memory**"
                f"{_tensors(d, ', ')}.")
        naive = by.get("dual-lora-naive")
        if naive:
            line += (f" Against the naive formula in the same run: {d['step_ms'] / naive['step_ms']:.2f}× the time "
                     f"and {d['peak_mib'] / naive['peak_mib']:.2f}× the memory.")
        out.append(line)
    if "pissa" in by:
        p = by["pissa"]
        out.append(f"- **PiSSA: {_x(p['time_ratio_vs_lora'])} time, {_x(p['memory_ratio_vs_lora'])} memory**"
                   f"{_tensors(p, ', ')} (the same step as LoRA; only the initialisation differs).")
    if "lora-stock" in by and "lora" in by:
        s, lora = by["lora-stock"], by["lora"]
        out.append(f"- **balora's LoRA against the usual setup** (stock peft + stock `Trainer`, `lora-stock`): "
                   f"{lora['step_ms'] / s['step_ms']:.2f}× its step time ({lora['step_ms']:.0f} vs {s['step_ms']:.0f} "
                   f"ms) and {lora['peak_mib'] / s['peak_mib']:.2f}× its peak memory ({lora['peak_mib']:.0f} vs "
                   f"{s['peak_mib']:.0f} MiB).")
    for name, label in (("dora", "DoRA"), ("full", "Full fine-tuning")):
        if name in by:
            r = by[name]
            out.append(f"- {label}: {_x(r['time_ratio_vs_lora'])} time, {_x(r['memory_ratio_vs_lora'])} memory "
                       f"({r['trainable_params']:,} trainable parameters).")
    svd = next((r["svd_init"] for r in rows if r.get("svd_init")), None)
    if svd:
        out.append(f"- PiSSA initialisation of the whole model: exact SVD {svd['exact_s']:.2f} s, randomized "
                   f"(`pissa_niter={svd['niter']}`) {svd['randomized_s']:.2f} s.")
    return "\n".join(out) + "\n"


NF4_COMMAND = ("nice balora bench --model tiny --device cpu --threads 1 --methods lora lora-nf4 ba-lora ba-lora-nf4 "
               "--json --output docs/bench/tiny-cpu-nf4.json")


def nf4_findings(rows: list[dict[str, Any]]) -> str:
    """The quantized rows beside their float32 ones: memory both ways, step time, final loss."""
    by = {r["method"]: r for r in rows if "error" not in r}
    pairs = [(full, f"{full}-nf4") for full in ("lora", "ba-lora") if full in by and f"{full}-nf4" in by]
    out = [_fence(NF4_COMMAND, "bash")]
    for full, quant in pairs:
        f, q = by[full], by[quant]
        tensors = ""
        if f.get("tensor_peak_mib") is not None and q.get("tensor_peak_mib") is not None:
            tensors = (f"; tensors only {f['tensor_peak_mib']:.1f} → {q['tensor_peak_mib']:.1f} MiB "
                       f"({q['tensor_peak_mib'] - f['tensor_peak_mib']:+.1f} MiB)")
        out.append(f"- `{full}` → `{quant}`: peak RSS {f['peak_mib']:.1f} → {q['peak_mib']:.1f} MiB{tensors}; step "
                   f"{f['step_ms']:.0f} → {q['step_ms']:.0f} ms; final loss {f['final_loss']:.3f} → "
                   f"{q['final_loss']:.3f} (load average {q['load_average_1m']}).")
    return "\n".join(out) + "\n"


def head_chunk(data: dict[str, Any]) -> str:
    """The fused loss kernel on one chunk, this tree against the commit before it (thread CPU time)."""
    lines = [_fence(data["command"], "bash"),
             f"| one chunk ({data['rows']} × {data['vocab']:,}, h {data['hidden']}) | kernel at {data['commit']} "
             "(ms) | now (ms) | of which the head matmuls (ms) | elementwise work, now / before |",
             "|---|---|---|---|---|"]
    for r in data["results"]:
        share = (r["now_ms"] - r["matmuls_ms"]) / (r["before_ms"] - r["matmuls_ms"])
        lines.append(f"| {r['case']} | {r['before_ms']:.1f} | {r['now_ms']:.1f} | {r['matmuls_ms']:.1f} | "
                     f"{share:.2f} |")
    return "\n".join(lines) + f"\n\nMedian thread CPU time of {data['reps']} repeats, torch {data['torch']}.\n"


# ------------------------------------------------------------------ PiSSA initialisation


def pissa_setup(data: dict[str, Any]) -> str:
    models = ", ".join(f"`{name}` ({m['layers']} layers: {', '.join('×'.join(map(str, s)) for s in m['shapes'])})"
                       for name, m in data["models"].items())
    return (f"r = {data['rank']}, all linear layers of {models}; captured mass over {data['seeds']} seeds; init time "
            f"the fastest of {data['reps']} interleaved runs on {data['threads']} thread (`{data['device_name']}`, "
            f"torch {data['torch']}, peft {data['peft']}).\n\n" + _fence(data["command"], "bash"))


def pissa_table(data: dict[str, Any]) -> str:
    default = (data["default"]["niter"], data["default"]["oversample"])
    lines = ["| model | niter | oversample p | q = r + p | captured, worst layer | captured, median | init s "
             "| × today |", "|---|---|---|---|---|---|---|---|"]
    for name, m in data["models"].items():
        for c in m["candidates"]:
            tag = " (today: peft `pissa_niter_4`)" if (c["niter"], c["oversample"]) == (4, 0) else ""
            tag = " **(default)**" if (c["niter"], c["oversample"]) == default else tag
            lines.append(f"| {name} | {c['niter']} | {c['oversample']}{tag} | {c['q']} | {c['mass_min']:.4f} | "
                         f"{c['mass_median']:.4f} | {c['init_s']:.3f} | {c['time_vs_today']:.2f} |")
    today = ", ".join(f"{name} {m['today_peft_pissa_niter_4_s']:.3f} s" for name, m in data["models"].items())
    today_is = "peft's own `get_peft_model(..., init_lora_weights=\"pissa_niter_4\")`"
    return "\n".join(lines) + f"\n\nToday ({today_is}): {today}.\n"


def pissa_verdict(data: dict[str, Any]) -> str:
    default = (data["default"]["niter"], data["default"]["oversample"])
    out = []
    if default != (DEFAULT_NITER, DEFAULT_OVERSAMPLE):
        out.append(f"- **Stale:** measured when the default was niter {default[0]}, p {default[1]}; the code's is now "
                   f"niter {DEFAULT_NITER}, p {DEFAULT_OVERSAMPLE}: rerun `scripts/measure_pissa_init.py`.")
    for name, m in data["models"].items():
        c = next((c for c in m["candidates"] if (c["niter"], c["oversample"]) == default), None)
        if c is None:
            out.append(f"- {name}: the default (niter {default[0]}, p {default[1]}) was not measured.")
            continue
        ok_mass, ok_time = c["mass_min"] >= 0.99, c["time_vs_today"] <= 2.0
        out.append(f"- {name}: the default (niter {default[0]}, p {default[1]}) captures at least "
                   f"{100 * c['mass_min']:.2f} % in every layer ({'meets' if ok_mass else '**misses**'} ≥ 99 %) "
                   f"at {c['time_vs_today']:.2f}× today's init time ({'meets' if ok_time else '**misses**'} ≤ 2×).")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the GPU check


def gpu_results(folder: str = "gpu-check") -> str:
    env, bench = _load(f"{folder}/env.json"), _load(f"{folder}/bench-llama-1b.json")
    if env is None or bench is None:
        return ("_Not measured yet: no session with a GPU has run `make gpu-check`; its output folder goes to "
                "`docs/bench/gpu-check/`._\n")
    regs, train = _load(f"{folder}/regularizers.json") or {}, _load(f"{folder}/train.json") or {}
    out = [f"GPU `{env['gpu']}` ({env.get('gpu_memory_gib')} GiB), torch {env['torch']} (CUDA {env['cuda']}), "
           f"transformers {env['transformers']}, peft {env['peft']}, accelerate {env['accelerate']}.", "",
           _fence(format_report(bench["rows"])), _goal_table(bench["rows"], "cuda")]
    if regs.get("results"):
        worst = max(regs["results"], key=lambda r: r["grad_max_abs_diff"] / max(r["grad_max_abs"], 1e-30))
        out.append(f"Regularizers, CPU vs GPU on the same tensors: {'all equal' if regs['passed'] else '**MISMATCH**'}"
                   f" within tolerance (largest relative gradient difference: {worst['function']} {worst['dtype']}, "
                   f"{worst['grad_max_abs_diff']:.1e} of {worst['grad_max_abs']:.1e}).\n")
    if train.get("losses"):
        out.append(f"MiniLM BA-LoRA, {train['steps']} {train['dtype']} steps: mean loss {train['first_mean']:.3f} over "
                   f"the first {train['window']} steps, {train['last_mean']:.3f} over the last "
                   f"{train['window']} ({'falls' if train['passed'] else '**does not fall**'}).\n")
    return "\n".join(out)


def _tiny(fn: Callable[[list[dict[str, Any]]], str]) -> Callable[[], str]:
    return lambda: fn(_load("tiny-cpu.json")) if _load("tiny-cpu.json") else _missing("tiny-cpu.json")


def _nf4(fn: Callable[[list[dict[str, Any]]], str]) -> Callable[[], str]:
    return lambda: fn(_load("tiny-cpu-nf4.json")) if _load("tiny-cpu-nf4.json") else _missing("tiny-cpu-nf4.json")


def _pissa(fn: Callable[[dict[str, Any]], str]) -> Callable[[], str]:
    return lambda: fn(_load("pissa-init.json")) if _load("pissa-init.json") else _missing("pissa-init.json")


BLOCKS: dict[str, Callable[[], str]] = {
    "tiny-setup": _tiny(tiny_setup), "tiny-report": _tiny(tiny_report), "tiny-goals": _tiny(tiny_goals),
    "tiny-findings": _tiny(tiny_findings), "tiny-lora-row": _tiny(tiny_lora_row), "nf4-findings": _nf4(nf4_findings),
    "pissa-setup": _pissa(pissa_setup), "pissa-table": _pissa(pissa_table), "pissa-verdict": _pissa(pissa_verdict),
    "pissa-default": lambda: f"niter = {DEFAULT_NITER}, oversample p = {DEFAULT_OVERSAMPLE}\n",
    "head-chunk": lambda: head_chunk(_load("head-chunk.json")) if _load("head-chunk.json") else _missing(
        "head-chunk.json"),
    "gpu-results": gpu_results,
}


def render(text: str) -> str:
    """``text`` with every generated block rewritten; an unknown block name is an error."""
    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"{DOC}: unknown generated block {name!r} (known: {', '.join(BLOCKS)})")
        return match.group(1) + BLOCKS[name]() + match.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{DOC.relative_to(ROOT)} is out of date: run `make bench-docs`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    print(f"wrote {DOC.relative_to(ROOT)} ({len(BLOCK.findall(wanted))} generated blocks)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
