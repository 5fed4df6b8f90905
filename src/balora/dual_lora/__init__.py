"""Dual LoRA (design §3): the math in :mod:`.functional`, the peft glue in :mod:`.layer`."""

from .config import DualLoraConfig
from .layer import DualLoraLinear, DualLoraLinearVariant

__all__ = ["DualLoraConfig", "DualLoraLinear", "DualLoraLinearVariant"]
