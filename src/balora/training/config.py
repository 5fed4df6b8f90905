"""Settings of the BA-LoRA regularizers, as a dataclass with help texts (SPEC section 2)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import ConfigError
from .weights import PRESETS, WeightSchedule, make_schedule


@dataclass
class BALoRAConfig:
    """What :class:`~balora.training.BALoRATrainer` adds to the task loss."""

    preset: str = field(
        default="auto",
        metadata={"help": "Regularizer weights: 'paper', 'official', 'none', or 'auto' (paper for ba-lora, "
                          "none for every other method)."},
    )
    auto_preset: str = field(
        default="paper", metadata={"help": "The preset that 'auto' gives ba-lora: 'paper' or 'official'."}
    )
    consistency_weight: float | None = field(default=None, metadata={"help": "Override λ1 (0 turns L_CR off)."})
    diversity_weight: float | None = field(default=None, metadata={"help": "Override λ2 (0 turns L_DR off)."})
    svd_weight: float | None = field(default=None, metadata={"help": "Override λ3 (0 turns L_SVDR off)."})
    temperature: float = field(default=2.0, metadata={"help": "Temperature T of the NLG consistency KL."})
    top_k: int = field(default=20, metadata={"help": "K of the NLG top-K entropy (diversity) term."})
    nlu_svd_k: int = field(default=5, metadata={"help": "k of the NLU SVD term."})
    nlg_svd_k: int = field(default=10, metadata={"help": "k of the NLG SVD term."})
    nlu_target: str = field(
        default="auto",
        metadata={"help": "Matrix Z of the NLU diversity and SVD terms: 'logits', 'pooled' (what the head "
                          "reads), or 'auto' (logits when C > nlu_svd_k, else pooled; SPEC 2.2)."},
    )
    svd_method: str = field(
        default="auto", metadata={"help": "NLG SVD: 'exact', 'randomized' or 'auto' (randomized when large)."}
    )
    task: str = field(default="auto", metadata={"help": "'nlu', 'nlg', or 'auto' (from the model class)."})

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

    def schedule(self, method: str, task: str) -> WeightSchedule:
        preset = self.preset
        if preset == "auto":
            preset = self.auto_preset if method == "ba-lora" else "none"
        overrides = {
            "consistency": self.consistency_weight,
            "diversity": self.diversity_weight,
            "svd": self.svd_weight,
        }
        return make_schedule(preset, task, overrides)

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
