"""The pre-trained model's outputs from the model being trained (design §2.1).

``with as_pretrained(model): model(**batch)`` gives P, the model before fine-tuning, in every part. How
is the method's business (:meth:`balora.methods.Method.reference`):

- ``lora``, ``dora``, ``dual-lora``: peft's ``disable_adapter()``; the adapters start as a no-op, so the
  base weights are P. The classification head falls back to peft's untouched ``original_module``.
- ``pissa``, ``ba-lora``: disabling gives W_res, not P. Every peft layer is routed to the frozen initial
  adapter (B0, A0) instead, so layers compute W_res·x + s·B0·A0·x = W·x, and the head falls back to its
  original copy. No second model, no weight copies.
- ``full``: the initial weights kept by ``adapt(..., keep_reference=True)`` are swapped into the
  parameters for the block and the trained ones swapped back on exit.

Nothing here changes ``requires_grad`` or the optimizer's view of the parameters; callers run the
reference forward under ``torch.no_grad()`` for a training-time reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn

from .methods import method_of


@contextlib.contextmanager
def as_pretrained(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, forward passes of ``model`` give the PRE-TRAINED model's outputs (design §2.1).

    ``model`` may be wrapped (DDP/accelerate ``.module``); the block yields ``model`` itself.
    """
    inner = getattr(model, "module", model)
    with method_of(inner).reference(inner):
        yield model
