"""Readable text for benchmark rows: the table, the BA-LoRA breakdown, PiSSA init times, a summary line."""

from __future__ import annotations

from typing import Any

from .goals import format_goals
from .worker import BASELINE, NAIVE_DUAL, STOCK_LORA


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("method", "step ms", "x LoRA", "peak MiB", "x LoRA", "tensor MiB", "x LoRA", "tokens/s", "init s",
            "trainable")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append((r["method"], "failed: " + r["error"], *[""] * (len(head) - 2)))
            continue
        lines.append((r["method"], _num(r["step_ms"], ".1f"), _num(r["time_ratio_vs_lora"], ".2f"),
                      _num(r["peak_mib"], ".1f"), _num(r["memory_ratio_vs_lora"], ".2f"),
                      _num(r.get("tensor_peak_mib"), ".1f"), _num(r.get("tensor_memory_ratio_vs_lora"), ".2f"),
                      _num(r["tokens_per_s"], ",.0f"), _num(r["init_s"], ".3f"), f"{r['trainable_params']:,}"))
    widths = [max(len(line[i]) for line in lines if not line[1].startswith("failed")) for i in range(len(head))]
    text = []
    for line in lines:
        if line[1].startswith("failed"):
            text.append(f"{line[0]:<{widths[0]}}  {line[1]}")
        else:
            cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            text.append("  ".join(cells))
    return "\n".join(text)


def format_setup(rows: list[dict[str, Any]]) -> str:
    r = next((r for r in rows if "error" not in r), None)
    if r is None:
        return "every method failed"
    return (f"model {r['model']}, {r['device']} ({r['device_name']}, {r['threads']} threads), {r['dtype']}, "
            f"batch {r['batch_size']} x {r['seq_len']} ({r['scored_tokens']} scored), rank {r['rank']}, "
            f"{r['warmup']} warm-up + {r['steps']} timed steps (median), torch {r['torch']}, "
            f"load average {r['load_average_1m']} at the first method\n"
            f"memory: {r['memory_kind']}{_TENSORS if r['device'] == 'cpu' else ''}; "
            f"tokens/s counts all {r['batch_size'] * r['seq_len']} tokens per step")


_TENSORS = ("; tensor MiB: CPU tensor storages held before a step plus the allocator's rise during it "
            "(profiler records), less those before the model was built")


LABEL = 50  #: width of the breakdown's labels


def format_breakdown(row: dict[str, Any]) -> str:
    b = row["breakdown"]
    lora = b.get("lora_step_ms")

    def item(key: str, label: str) -> str:
        share = f"  ({b[key] / lora:.2f}x LoRA step)" if lora else ""
        peak = b.get(key.removesuffix("_ms") + "_peak_mib")
        memory = f"  peak +{peak:.1f} MiB" if peak is not None else ""
        return f"  {label:<{LABEL}} {b[key]:9.2f} ms{share}{memory}"

    lines = [f"BA-LoRA breakdown ({b['scored_rows']} scored rows x {b['vocab']:,} vocabulary, forward + backward):"]
    if lora:
        lines.append(f"  BA-LoRA step {b['balora_step_ms']:.1f} ms - LoRA step {lora:.1f} ms = "
                     f"{b['over_lora_ms']:.1f} ms extra, of which:")
    lines += [
        item("reference_forward_ms", "reference forward (no grad, scored rows)"),
        item("regularizers_ms", "all three regularizers (over the CE pass)"),
        item("consistency_ms", f"  CE pass + consistency (KL, T={b['temperature']:g})"),
        item("diversity_ms", f"  CE pass + diversity (top-{b['top_k']} entropy)"),
        item("svd_ms", f"  CE pass + SVD (k={b['svd_k']}, {b['svd_method']})"),
        item("svd_exact_ms", "    SVD exact on the logit rows"),
        item("svd_randomized_ms", "    SVD randomized on the logit rows"),
    ]
    if "svd_through_head_ms" in b:
        lines.append(item("svd_through_head_ms", "    SVD through the frozen head (exact)"))
    lines.append(item("task_loss_ms", "task cross-entropy pass (every method, for scale)"))
    if lora:
        lines.append(f"  {'rest (PiSSA vs LoRA step, noise)':<{LABEL}} {b['unexplained_ms']:9.2f} ms")
        lines.append(f"  BA-LoRA peak memory is {b['over_lora_mib']:+.1f} MiB over LoRA's {b['lora_peak_mib']:.1f} MiB")
    return "\n".join(lines)


def format_svd_init(row: dict[str, Any]) -> str:
    s = row["svd_init"]
    return (f"PiSSA initialisation (adapt() time): exact SVD {s['exact_s']:.3f} s, "
            f"randomized pissa_niter_{s['niter']} {s['randomized_s']:.3f} s")


def summary_line(rows: list[dict[str, Any]]) -> str:
    """One line: each method's time/memory ratio to LoRA, Dual LoRA against its naive form and balora's
    LoRA against the stock peft + Trainer one."""
    by = {r["method"]: r for r in rows if "error" not in r}
    parts = [f"{m} {r['time_ratio_vs_lora']:.2f}x/{r['memory_ratio_vs_lora']:.2f}x" for m, r in by.items()
             if m != BASELINE and r["time_ratio_vs_lora"] is not None and r["memory_ratio_vs_lora"] is not None]
    text = "vs LoRA (time/memory): " + (", ".join(parts) if parts else "n/a (no lora row)")
    if "dual-lora" in by and NAIVE_DUAL in by:
        dual, naive = by["dual-lora"], by[NAIVE_DUAL]
        memory = f"{dual['peak_mib'] / naive['peak_mib']:.2f}x" if naive["peak_mib"] else "n/a"
        text += f"; dual-lora vs naive: {dual['step_ms'] / naive['step_ms']:.2f}x time, {memory} memory"
    if BASELINE in by and STOCK_LORA in by:
        ours, stock = by[BASELINE], by[STOCK_LORA]
        memory = f"{ours['peak_mib'] / stock['peak_mib']:.2f}x" if stock["peak_mib"] else "n/a"
        text += f"; balora lora vs lora-stock: {ours['step_ms'] / stock['step_ms']:.2f}x time, {memory} memory"
    failed = [r["method"] for r in rows if "error" in r]
    if failed:
        text += f"; FAILED: {', '.join(failed)}"
    return text


def format_report(rows: list[dict[str, Any]]) -> str:
    """Setup, table, breakdown and PiSSA init timings (when measured), the goals, then the summary line."""
    parts = [format_setup(rows), format_table(rows)]
    for row in rows:
        if row.get("breakdown"):
            parts.append(format_breakdown(row))
    svd = next((r for r in rows if r.get("svd_init")), None)
    if svd:
        parts.append(format_svd_init(svd))
    parts.append(format_goals(rows))
    parts.append(summary_line(rows))
    return "\n\n".join(parts)
