"""The public entry points over the registry: :func:`adapt` and :func:`set_training_step` (design §7)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from peft import PeftModel

from ..errors import ConfigError
from .base import get_method, method_of


def adapt(
    model: nn.Module,
    method: str = "ba-lora",
    r: int = 16,
    lora_alpha: float | None = None,
    target_modules: list[str] | str = "all-linear",
    **options: Any,
) -> nn.Module:
    """Make ``model`` trainable with ``method``; returns a ``peft.PeftModel`` (the model itself for ``full``).

    Args:
        model: any transformers model (classification, regression or causal LM).
        method: a registered method name (:data:`balora.METHODS`).
        r: adapter rank (LoRA's). For ``dual-lora`` r = r1 + r2 (default r1 = r2 = r/2).
        lora_alpha: scale numerator; default ``r`` (scale 1). Dual LoRA scales by alpha/sqrt(r1·r2).
        target_modules: peft's ``target_modules`` (names, a regex, or ``"all-linear"``).
        **options: ``lora_dropout``, ``pissa_niter`` (pissa/ba-lora: randomized-SVD power iterations,
            None = exact SVD), ``r1``, ``r2``, ``warmup_steps`` (dual-lora), ``keep_reference`` (full: keep
            the initial weights for :func:`balora.as_pretrained`), ``modules_to_save`` and any other
            ``LoraConfig`` field.

    The returned model starts equal to ``model`` (PiSSA moves the principal part of W into the adapter
    and leaves W_res = W - s·B0·A0; Dual LoRA starts with warm-up factor 0).
    """
    chosen = get_method(method)
    if isinstance(model, PeftModel):
        raise ConfigError("model is already a PeftModel; pass the base transformers model to adapt().")
    return chosen.adapt(model, r, lora_alpha, target_modules, **options)


def set_training_step(model: nn.Module, step: int) -> None:
    """Set per-step state (Dual LoRA's warm-up factor min(1, step / warmup_steps)); a no-op for other methods."""
    method_of(model).set_training_step(getattr(model, "module", model), step)
