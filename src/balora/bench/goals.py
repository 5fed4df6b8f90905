"""The cost goals of issue 13, checked against one run's ratios to LoRA; printed, never asserted.

On the CPU (the ``tiny`` shape): BA-LoRA ≤ 1.40× LoRA's step time and ≤ 1.15× its peak memory, Dual LoRA
≤ 1.15× and ≤ 1.00×, PiSSA within ±3 % of LoRA in both. On a GPU (the ``llama-1b`` shape): BA-LoRA ≤ 1.20×
and ≤ 1.05×, Dual LoRA ≤ 1.15× and ≤ 1.10×.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    """``low <= row[metric] <= high`` for the row of ``method`` (None: no bound on that side)."""

    method: str
    metric: str  # "time_ratio_vs_lora" or "memory_ratio_vs_lora"
    low: float | None
    high: float | None

    def bound(self) -> str:
        if self.low is not None and self.high is not None:
            centre, half = (self.low + self.high) / 2, (self.high - self.low) / 2
            return f"{centre:.2f} ± {half:.2f}"
        return f"<= {self.high:.2f}" if self.high is not None else f">= {self.low:.2f}"

    def check(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


TIME, MEMORY = "time_ratio_vs_lora", "memory_ratio_vs_lora"
GOALS: dict[str, tuple[Goal, ...]] = {
    "cpu": (Goal("ba-lora", TIME, None, 1.40), Goal("ba-lora", MEMORY, None, 1.15),
            Goal("dual-lora", TIME, None, 1.15), Goal("dual-lora", MEMORY, None, 1.00),
            Goal("pissa", TIME, 0.97, 1.03), Goal("pissa", MEMORY, 0.97, 1.03)),
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
        out.append({"method": goal.method, "what": "time" if goal.metric == TIME else "peak memory",
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
        lines.append(f"  {c['method']:<10} {c['what']:<12} goal {c['goal']:<12} measured {value:<7} {verdict}")
    return "\n".join(lines)
