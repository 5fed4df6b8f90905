"""Dual LoRA as a peft ``LoraConfig`` variant (design §3).

peft selects a LoRA layer variant from config fields tagged ``is_lora_variant``; ``use_dual_lora`` is
such a field, and :class:`~balora.dual_lora.layer.DualLoraLinear` maps it to the Dual LoRA variant.
The custom layer class is registered for ``nn.Linear`` through :func:`balora.peft_compat.register_lora_layer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig

from ..errors import ConfigError
from ..peft_compat import register_lora_layer
from .functional import SIGN_GRADS


@dataclass
class DualLoraConfig(LoraConfig):
    """A ``LoraConfig`` whose rank ``r`` is split into a magnitude rank ``r1`` and a direction rank ``r2``."""

    use_dual_lora: bool = field(
        default=True,
        metadata={"is_lora_variant": True, "help": "Use the Dual LoRA variant (ReLU magnitude x Sign direction)."},
    )
    r1: int | None = field(default=None, metadata={"help": "Magnitude-group rank; default r // 2."})
    r2: int | None = field(default=None, metadata={"help": "Direction-group rank; default r - r1."})
    warmup_steps: int = field(
        default=100,
        metadata={"help": "Optimizer steps over which the warm-up factor on the update rises from 0 to 1."},
    )
    init_std: float = field(
        default=0.01,
        metadata={"help": "Std of the Gaussian init of B and D; A and C get std 1/sqrt(d_in)."},
    )
    sign_grad: str = field(
        default="clip",
        metadata={"help": "Sign's straight-through gradient: clip (incoming gradient clamped to [-1, 1]), "
                          "hardtanh (incoming gradient where |DC| <= 1, else 0) or identity (unchanged).",
                  "choices": SIGN_GRADS},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r1 is None and self.r2 is None:
            self.r1 = self.r // 2
            self.r2 = self.r - self.r1
        elif self.r1 is None:
            self.r1 = self.r - self.r2
        elif self.r2 is None:
            self.r2 = self.r - self.r1
        if self.r1 < 1 or self.r2 < 1:
            raise ConfigError(
                f"dual-lora needs r1 >= 1 and r2 >= 1 (got r1={self.r1}, r2={self.r2}, r={self.r}); "
                "use r >= 2 or set r1 and r2 explicitly."
            )
        if self.r1 + self.r2 != self.r:
            raise ConfigError(
                f"dual-lora needs r1 + r2 == r, got r1={self.r1} + r2={self.r2} != r={self.r}; "
                "change r1/r2 or r so that they add up."
            )
        if self.sign_grad not in SIGN_GRADS:
            raise ConfigError(f"sign_grad must be one of {', '.join(SIGN_GRADS)}; got {self.sign_grad!r}.")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.rank_pattern or self.alpha_pattern:
            raise ConfigError("dual-lora does not support rank_pattern/alpha_pattern; use one r, r1, r2.")
        if self.use_dora:
            raise ConfigError("dual-lora cannot be combined with use_dora.")
        from .layer import DualLoraLinear

        register_lora_layer(self, DualLoraLinear)

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Write no ``adapter_config.json``: stock peft cannot load Dual LoRA and must not try.

        balora writes the config to ``balora_adapter.json`` instead (:mod:`balora.persistence`).
        """
