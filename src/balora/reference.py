"""The pre-trained model's outputs from the model being trained (SPEC section 2.1).

``with as_pretrained(model): model(**batch)`` gives P, the model before fine-tuning, in every part:

- ``lora``, ``dora``, ``dual-lora``: peft's ``disable_adapter()``; the adapters start as a no-op, so the
  base weights are P. The classification head falls back to peft's untouched ``original_module``.
- ``pissa``, ``ba-lora``: disabling gives W_res, not P. Instead every peft layer is switched to the frozen
  initial adapter (B0, A0) that :func:`balora.adapt` keeps, so layers compute W_res·x + s·B0·A0·x = W·x,
  and the head falls back to its original copy. No second model, no weight copies.
- ``full``: the initial weights kept by ``adapt(..., keep_reference=True)`` are swapped in through
  ``torch.func.functional_call``; that copy is the unavoidable price of a reference for full training.

Nothing here changes ``requires_grad`` or the optimizer's view of the parameters; callers run the
reference forward under ``torch.no_grad()`` for a training-time reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from .errors import ConfigError
from .methods import INITIAL_ADAPTER, PISSA_METHODS, method_of

_FULL_REFERENCE_ATTR = "_balora_initial_state"


def snapshot_full_reference(model: nn.Module) -> None:
    """Keep a detached copy of ``model``'s parameters and buffers as the pre-trained reference (``full``)."""
    state = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
    # stored outside nn.Module's registries so it is not trained, saved or moved by accident
    object.__setattr__(model, _FULL_REFERENCE_ATTR, state)


def has_full_reference(model: nn.Module) -> bool:
    return hasattr(getattr(model, "module", model), _FULL_REFERENCE_ATTR)


@contextlib.contextmanager
def _switched_adapter(model: nn.Module, adapter: str) -> Iterator[None]:
    """Make ``adapter`` the active one in every peft layer and head wrapper, leaving ``requires_grad`` alone.

    peft's own ``set_adapter`` would also flip ``requires_grad``; here only the routing changes.
    """
    layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
    saved = [layer._active_adapter for layer in layers]
    try:
        for layer in layers:
            layer._active_adapter = [adapter]
        yield
    finally:
        for layer, active in zip(layers, saved, strict=True):
            layer._active_adapter = active


@contextlib.contextmanager
def as_pretrained(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, forward passes of ``model`` give the PRE-TRAINED model's outputs (SPEC 2.1).

    Yields the model to call (``model`` itself, except for ``full`` where calling ``model`` directly
    would use the trained weights: a patched forward swaps in the initial weights, so calling ``model``
    inside the block works there too).
    """
    inner = getattr(model, "module", model)  # DDP / accelerate wrappers
    method = method_of(inner)
    if method in PISSA_METHODS:
        with _switched_adapter(inner, INITIAL_ADAPTER):
            yield model
    elif method == "full":
        state = getattr(inner, _FULL_REFERENCE_ATTR, None)
        if state is None:
            raise ConfigError(
                "as_pretrained() on a 'full' model needs its initial weights: "
                "adapt(model, method='full', keep_reference=True)."
            )

        def reference_forward(*args, **kwargs):
            # functional_call calls inner.forward again: let that reach the class's own forward
            object.__delattr__(inner, "forward")
            try:
                return torch.func.functional_call(inner, state, args, kwargs, strict=False)
            finally:
                object.__setattr__(inner, "forward", reference_forward)

        object.__setattr__(inner, "forward", reference_forward)
        try:
            yield model
        finally:
            object.__delattr__(inner, "forward")
    else:
        with inner.disable_adapter():
            yield model
