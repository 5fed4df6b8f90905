"""Every place balora relies on a peft internal, in one module (peft 0.21).

Public peft APIs are used wherever one exists. What remains is here, each with the reason no public API
fits and a test in ``tests/test_peft_compat.py`` that fails loudly when a peft release changes it:

- :func:`routed_to_adapter`: switch which adapter peft layers compute with, for one forward. peft's
  public ``set_adapter`` also rewrites ``requires_grad`` of every adapter (and the head copies), which
  an optimizer, DDP or FSDP has already seen; the reference forward must change the routing only.
- :func:`targeted_linears`: the layers a ``LoraConfig`` would target, found the way peft finds them
  (``"all-linear"`` expansion, regex and suffix matching), before any layer is replaced.
- :func:`register_lora_layer`: peft's hook for a custom LoRA layer class (Dual LoRA's ``Linear``), the
  route peft's own docs give for custom modules (a private method of ``LoraConfig``).
- :class:`BufferDict`: peft's dict of per-adapter buffers (Dual LoRA's warm-up factor), which peft's
  state-dict, device and dtype handling already knows.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch.nn as nn
from peft import LoraConfig
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, _maybe_include_all_linear_layers, check_target_module_exists
from peft.utils.other import AuxiliaryTrainingWrapper

__all__ = ["BufferDict", "register_lora_layer", "routed_to_adapter", "targeted_linears"]


def _routable_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


@contextlib.contextmanager
def routed_to_adapter(model: nn.Module, adapter: str) -> Iterator[None]:
    """Inside the block every peft layer and head wrapper of ``model`` computes with ``adapter``.

    ``requires_grad`` and the optimizer's view of the parameters are left alone; the previous routing is
    restored on exit, also after an exception.
    """
    layers = _routable_layers(model)
    saved = [layer._active_adapter for layer in layers]
    try:
        for layer in layers:
            layer._active_adapter = [adapter]
        yield
    finally:
        for layer, active in zip(layers, saved, strict=True):
            layer._active_adapter = active


def targeted_linears(model: nn.Module, config: LoraConfig) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of ``model`` that ``config`` targets (name -> layer)."""
    probe = _maybe_include_all_linear_layers(copy.copy(config), model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and check_target_module_exists(probe, name)
    }


def register_lora_layer(config: LoraConfig, layer_class: type[nn.Module]) -> None:
    """Make peft build ``layer_class`` instead of its LoRA ``Linear`` for ``nn.Linear`` targets of ``config``."""
    config._register_custom_module({nn.Linear: layer_class})
