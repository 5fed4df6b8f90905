"""balora: BA-LoRA and Dual LoRA fine-tuning on top of transformers and peft (design §7).

>>> import balora
>>> model = balora.adapt(model, method="ba-lora", r=16, target_modules="all-linear")
>>> with balora.as_pretrained(model):
...     reference_logits = model(**batch).logits
"""

from __future__ import annotations

from . import regularizers
from .errors import BaloraError, ConfigError, DataError, ModelError, NonFiniteLossError
from .methods import METHODS, adapt, get_method, method_of, register_method, set_training_step
from .persistence import load
from .reference import as_pretrained

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "BALoRAConfig",
    "BALoRASFTTrainer",
    "BALoRATrainer",
    "BaloraError",
    "ConfigError",
    "DataError",
    "ModelError",
    "NonFiniteLossError",
    "adapt",
    "as_pretrained",
    "get_method",
    "method_of",
    "register_method",
    "load",
    "regularizers",
    "set_training_step",
]


_LAZY = {"BALoRATrainer": "balora.training", "BALoRAConfig": "balora.training",
         "BALoRASFTTrainer": "balora.training.sft"}


def __getattr__(name: str):
    # The Trainer pulls in transformers' training stack: import it only when asked for.
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ("training", "data", "evaluation", "experiment", "models", "bench", "plots"):
        return importlib.import_module(f"balora.{name}")
    raise AttributeError(f"module 'balora' has no attribute {name!r}")
