"""``dual-lora``: ΔW = alpha/√(r1·r2) · ReLU(B·A) ⊙ Sign(D·C) · warm-up, a registered peft LoRA variant.

The layer math lives in :mod:`balora.dual_lora`; this class owns what differs at the method level:
the r1/r2/warm-up options, the warm-up step, and the files. ΔW is close to full rank and has no plain
LoRA form, so the export is ``adapter_model.safetensors`` plus ``balora_adapter.json`` (the full config)
and deliberately no ``adapter_config.json``: stock peft must refuse it rather than load it wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn
from peft import LoraConfig

from ..dual_lora import DualLoraConfig, DualLoraLinear
from ..errors import ModelError
from .base import AdapterMethod
from .options import AdapterOptions

DEFAULT_WARMUP_SHARE = 0.1  # of the run's optimizer steps, when the run does not set the warm-up
MAX_DEFAULT_WARMUP = 100


class DualLoraMethod(AdapterMethod):
    """Dual LoRA (Xu et al.): a ReLU magnitude group times a Sign direction group."""

    name = "dual-lora"
    reads: ClassVar[frozenset[str]] = AdapterMethod.reads | {"r1", "r2", "dual_warmup_steps", "sign_grad"}
    own_options = ("r1", "r2", "warmup_steps", "sign_grad")

    def adapt_kwargs(self, options: AdapterOptions, total_steps: int) -> dict[str, Any]:
        warmup = options.dual_warmup_steps
        if warmup is None:
            warmup = min(MAX_DEFAULT_WARMUP, max(1, round(DEFAULT_WARMUP_SHARE * total_steps)))
        return {**options.common_kwargs(), "r1": options.r1, "r2": options.r2, "warmup_steps": warmup,
                "sign_grad": options.sign_grad}

    def config_class(self) -> type[LoraConfig]:
        return DualLoraConfig

    def config_fields(self, r1: int | None = None, r2: int | None = None, warmup_steps: int = 100,
                      sign_grad: str = "clip", **options: Any) -> dict[str, Any]:
        return {**options, "r1": r1, "r2": r2, "warmup_steps": warmup_steps, "sign_grad": sign_grad}

    def set_training_step(self, model: nn.Module, step: int) -> None:
        for module in model.modules():
            if isinstance(module, DualLoraLinear):
                for adapter in module.lora_C:
                    module.set_warmup_step(adapter, step)

    def stored_config(self, path: Path, info: dict[str, Any] | None) -> LoraConfig:
        if info is None or not isinstance(info.get("peft_config"), dict):
            raise ModelError(f"{path} has no Dual LoRA config in balora_adapter.json; the adapter is damaged.")
        fields = {k: v for k, v in info["peft_config"].items() if k in DualLoraConfig.__dataclass_fields__}
        fields.pop("peft_type", None)
        try:
            return DualLoraConfig(**fields)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"the Dual LoRA config in {path} is not valid: {exc}") from exc
