"""The cost goals of issue 13, checked against one run's ratios to LoRA; printed, never asserted.

On the CPU (the ``tiny`` shape): BA-LoRA ≤ 1.40× LoRA's step time and ≤ 1.15× its peak memory, Dual LoRA
≤ 1.15× and ≤ 1.00×, PiSSA within ±3 % of LoRA in both; each memory goal is checked on the peak RSS and
on the tensor count (``tensor_peak_mib``, what a GPU's allocator counts).
On a GPU (the ``llama-1b`` shape): BA-LoRA ≤ 1.20× and ≤ 1.05×, Dual LoRA ≤ 1.15× and ≤ 1.10×.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    """``low <= row[metric] <= high`` for the row of ``method`` (None: no bound on that side)."""

    method: str
    metric: str  # TIME, MEMORY or TENSORS
    low: float | None
    high: float | None

    def bound(self) -> str:
        if self.low is not None and self.high is not None:
            centre, half = (self.low + self.high) / 2, (self.high - self.low) / 2
            return f"{centre:.2f} ± {half:.2f}"
        return f"<= {self.high:.2f}" if self.high is not None else f">= {self.low:.2f}"

    def check(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


TIME, MEMORY, TENSORS = "time_ratio_vs_lora", "memory_ratio_vs_lora", "tensor_memory_ratio_vs_lora"
WHAT = {TIME: "time", MEMORY: "peak memory", TENSORS: "tensor memory"}


def _cpu_goals(method: str, time_high: float, memory_high: float, within: bool = False) -> tuple[Goal, ...]:
    """Time; memory as the peak RSS and as the tensor count; ``within``: also bounded below, symmetrically
    about 1 (PiSSA's step is LoRA's)."""
    def low(high: float) -> float | None:
        return round(2.0 - high, 6) if within else None

    return (Goal(method, TIME, low(time_high), time_high), Goal(method, MEMORY, low(memory_high), memory_high),
            Goal(method, TENSORS, low(memory_high), memory_high))


GOALS: dict[str, tuple[Goal, ...]] = {
    "cpu": (*_cpu_goals("ba-lora", 1.40, 1.15), *_cpu_goals("dual-lora", 1.15, 1.00),
            *_cpu_goals("pissa", 1.03, 1.03, within=True)),
    "cuda": (Goal("ba-lora", TIME, None, 1.20), Goal("ba-lora", MEMORY, None, 1.05),
             Goal("dual-lora", TIME, None, 1.15), Goal("dual-lora", MEMORY, None, 1.10)),
}


def _device(rows: list[dict[str, Any]]) -> str:
    """The device of the first measured row ("cpu" when every method failed)."""
    return next((r["device"] for r in rows if "error" not in r and "device" in r), "cpu")


def check_goals(rows: list[dict[str, Any]], device: str | None = None) -> list[dict[str, Any]]:
    """One dict per goal of the rows' device: method, what, goal, value (None when not measured) and
    ``passed`` (True / False / None)."""
    by = {r["method"]: r for r in rows if "error" not in r}
    out = []
    for goal in GOALS.get(device or _device(rows), ()):
        value = by.get(goal.method, {}).get(goal.metric)
        out.append({"method": goal.method, "what": WHAT[goal.metric],
                    "goal": goal.bound(), "value": value, "passed": None if value is None else goal.check(value)})
    return out


def format_goals(rows: list[dict[str, Any]], device: str | None = None) -> str:
    """``Goals (cpu):`` then one line per goal: method, time or memory, bound, measured ratio, PASS/FAIL."""
    checks = check_goals(rows, device)
    if not checks:
        return "Goals: none for this device"
    lines = [f"Goals ({device or _device(rows)}, ratios to LoRA in this run; printed, not enforced):"]
    for c in checks:
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[c["passed"]]
        value = "-" if c["value"] is None else f"{c['value']:.2f}x"
        lines.append(f"  {c['method']:<10} {c['what']:<13} goal {c['goal']:<12} measured {value:<7} {verdict}")
    return "\n".join(lines)
