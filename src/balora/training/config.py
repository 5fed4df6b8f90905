"""Settings of the BA-LoRA regularizers, as a dataclass with help texts (design §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import ConfigError
from ..methods import Method
from .weights import PRESETS, WeightSchedule, make_schedule


@dataclass
class BALoRAConfig:
    """What :class:`~balora.training.BALoRATrainer` adds to the task loss."""

    preset: str = field(
        default="auto",
        metadata={"help": "regularizer weights: paper, official, none, or auto (the method's default: the "
                          "auto_preset for ba-lora, none for every other method)",
                  "choices": ("auto", *PRESETS)},
    )
    auto_preset: str = field(
        default="paper", metadata={"help": "the preset that 'auto' gives ba-lora (other methods get none)",
                                   "choices": PRESETS[:2]}
    )
    consistency_weight: float | None = field(
        default=None, metadata={"help": "override λ1 (0 turns the consistency term off)"})
    diversity_weight: float | None = field(
        default=None, metadata={"help": "override λ2 (0 turns the diversity term off)"})
    svd_weight: float | None = field(default=None, metadata={"help": "override λ3 (0 turns the SVD term off)"})
    temperature: float = field(default=2.0, metadata={"help": "temperature T of the NLG consistency KL"})
    top_k: int = field(default=20, metadata={"help": "K of the NLG top-K entropy (diversity) term"})
    nlu_svd_k: int = field(default=5, metadata={"help": "k of the NLU SVD term"})
    nlg_svd_k: int = field(default=10, metadata={"help": "k of the NLG SVD term"})
    nlu_target: str = field(
        default="auto",
        metadata={"help": "matrix Z of the NLU diversity and SVD terms: logits, pooled (what the head reads), "
                          "or auto (logits when there are more classes than nlu_svd_k, else pooled)",
                  "choices": ("auto", "logits", "pooled")},
    )
    svd_method: str = field(
        default="auto", metadata={"help": "how the NLG SVD term is computed: exact, randomized, or auto",
                                  "choices": ("auto", "exact", "randomized")}
    )
    task: str = field(default="auto", metadata={"help": "nlu, nlg, or auto (from the model class)",
                                                "choices": ("auto", "nlu", "nlg")})

    def __post_init__(self) -> None:
        if self.preset not in (*PRESETS, "auto"):
            raise ConfigError(f"unknown regularizer preset {self.preset!r}; choose one of: auto, {', '.join(PRESETS)}.")
        if self.auto_preset not in PRESETS:
            raise ConfigError(f"unknown auto_preset {self.auto_preset!r}; choose one of: {', '.join(PRESETS)}.")
        if self.nlu_target not in ("auto", "logits", "pooled"):
            raise ConfigError(f"nlu_target must be auto, logits or pooled, got {self.nlu_target!r}.")
        if self.svd_method not in ("auto", "exact", "randomized"):
            raise ConfigError(f"svd_method must be auto, exact or randomized, got {self.svd_method!r}.")
        if self.task not in ("auto", "nlu", "nlg"):
            raise ConfigError(f"task must be auto, nlu or nlg, got {self.task!r}.")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}.")
        for name in ("top_k", "nlu_svd_k", "nlg_svd_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("consistency_weight", "diversity_weight", "svd_weight"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}.")
        if self.preset == "none" and any((self.consistency_weight, self.diversity_weight, self.svd_weight)):
            raise ConfigError("preset 'none' contradicts a non-zero regularizer weight; drop one of them.")

    def schedule(self, method: Method, task: str) -> WeightSchedule:
        """The weights for a model trained with ``method`` on ``task`` ('nlu' or 'nlg')."""
        preset = method.default_preset(self.auto_preset) if self.preset == "auto" else self.preset
        overrides = {
            "consistency": self.consistency_weight,
            "diversity": self.diversity_weight,
            "svd": self.svd_weight,
        }
        return make_schedule(preset, task, overrides)

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
