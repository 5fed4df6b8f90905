"""Regularizer weights λ1 (consistency), λ2 (diversity), λ3 (SVD) and their schedules (design §2.4).

Presets:

- ``paper``: the paper's constants, NLU λ = (1e-4, 4e-4, 1e-4), NLG λ = (1e-4, 3e-4, 1e-4), T = 2.
- ``official``: the authors' newest code, λ = (0.025, 0.005, 0.005), T = 2; λ1 decays by a cosine to 10%
  of its value over training; λ2 and λ3 are 0 for the first 20% of steps and ramp in linearly over the
  next 5% ("two-phase").
- ``none``: all three off (plain LoRA/PiSSA/DoRA/Dual LoRA/full through the same trainer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

TERMS: tuple[str, ...] = ("consistency", "diversity", "svd")
PRESETS: tuple[str, ...] = ("paper", "official", "none")


@dataclass(frozen=True)
class WeightSchedule:
    """λ for each term at each optimizer step; ``weights_at(step, total_steps)`` is the only entry point."""

    consistency: float
    diversity: float
    svd: float
    cosine_consistency: bool = False  # λ1 · (0.1 + 0.9 · (1 + cos(π t)) / 2), t = step / total
    consistency_floor: float = 0.1
    two_phase: bool = False  # λ2, λ3 · clamp((t - hold) / ramp, 0, 1)
    hold_fraction: float = 0.20
    ramp_fraction: float = 0.05

    def weights_at(self, step: int, total_steps: int | None) -> dict[str, float]:
        t = 0.0 if not total_steps else min(1.0, max(0.0, step / total_steps))
        consistency = self.consistency
        if self.cosine_consistency:
            consistency *= self.consistency_floor + (1 - self.consistency_floor) * 0.5 * (1 + math.cos(math.pi * t))
        phase = 1.0
        if self.two_phase and self.ramp_fraction > 0:
            phase = min(1.0, max(0.0, (t - self.hold_fraction) / self.ramp_fraction))
        elif self.two_phase:
            phase = 0.0 if t < self.hold_fraction else 1.0
        return {"consistency": consistency, "diversity": self.diversity * phase, "svd": self.svd * phase}

    @property
    def any_active(self) -> bool:
        return any(w != 0 for w in (self.consistency, self.diversity, self.svd))


def make_schedule(
    preset: str,
    task: str,
    overrides: dict[str, float | None] | None = None,
) -> WeightSchedule:
    """The schedule of ``preset`` for ``task`` ("nlu" or "nlg"), with per-term overrides.

    ``overrides`` maps a term name to a new base weight; 0 turns the term off (ablations).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown regularizer preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    if task not in ("nlu", "nlg"):
        raise ConfigError(f"task must be 'nlu' or 'nlg', got {task!r}.")
    if preset == "paper":
        base = {"consistency": 1e-4, "diversity": 4e-4 if task == "nlu" else 3e-4, "svd": 1e-4}
        extra = {}
    elif preset == "official":
        base = {"consistency": 0.025, "diversity": 0.005, "svd": 0.005}
        extra = {"cosine_consistency": True, "two_phase": True}
    else:
        base = {"consistency": 0.0, "diversity": 0.0, "svd": 0.0}
        extra = {}
    for term, value in (overrides or {}).items():
        if term not in TERMS:
            raise ConfigError(f"unknown regularizer term {term!r}; the terms are: {', '.join(TERMS)}.")
        if value is None:
            continue
        if value < 0 or not math.isfinite(value):
            raise ConfigError(f"the weight of {term!r} must be a finite number >= 0, got {value}.")
        base[term] = float(value)
    return WeightSchedule(**base, **extra)
