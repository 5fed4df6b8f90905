"""What kind of transformers model this is, read once from its class name (no import of transformers)."""

from __future__ import annotations

import torch.nn as nn

_SUFFIXES = {
    "ForSequenceClassification": "sequence-classification",
    "ForCausalLM": "causal-lm",
    "ForTokenClassification": "token-classification",
}


def base_model_of(model: nn.Module) -> nn.Module:
    """The transformers model under DDP-style ``.module`` wrappers and a peft ``PeftModel``."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def model_kind(model: nn.Module) -> str | None:
    """'sequence-classification', 'causal-lm', 'token-classification' or None (anything else)."""
    name = type(base_model_of(model)).__name__
    return next((kind for suffix, kind in _SUFFIXES.items() if name.endswith(suffix)), None)


def regularizer_task(model: nn.Module) -> str:
    """'nlu' (classification/regression heads) or 'nlg' (causal LMs): which BA-LoRA terms apply."""
    kind = model_kind(model)
    if kind == "sequence-classification":
        return "nlu"
    if kind == "causal-lm":
        return "nlg"
    name = type(base_model_of(model)).__name__
    raise ValueError(f"BA-LoRA terms need a *ForSequenceClassification or *ForCausalLM model, got {name}.")
