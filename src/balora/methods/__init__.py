"""The method registry: one object per adaptation method owns everything that differs between methods.

>>> from balora.methods import get_method, method_of
>>> get_method("ba-lora").default_preset("paper")
'paper'
"""

from __future__ import annotations

from . import registry as _registry  # noqa: F401  (registers the built-in methods)
from .adapt import adapt, set_training_step
from .base import (
    AdapterMethod,
    ExportingPeftModel,
    Method,
    get_method,
    method_names,
    method_of,
    register_method,
)
from .options import AdapterOptions
from .pissa import DEFAULT_PISSA_NITER, DEFAULT_PISSA_OVERSAMPLE, INITIAL_ADAPTER

METHODS: tuple[str, ...] = method_names()  #: the built-in methods (``method_names()`` includes later ones)

__all__ = [
    "DEFAULT_PISSA_NITER",
    "DEFAULT_PISSA_OVERSAMPLE",
    "INITIAL_ADAPTER",
    "METHODS",
    "AdapterMethod",
    "AdapterOptions",
    "ExportingPeftModel",
    "Method",
    "adapt",
    "get_method",
    "method_names",
    "method_of",
    "register_method",
    "set_training_step",
]
