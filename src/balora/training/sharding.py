"""Parameters an engine holds in pieces after the Trainer wraps the model: FSDP2 DTensors, ZeRO-3 partitions.

The Trainer wraps (and shards) the model in ``train()``, after ``BALoRATrainer.__init__`` has looked up the
output head for the scored-rows step. FSDP2 then replaces the head's parameters by DTensor shards and
ZeRO-3 empties them (the data lives in a partition), so the head's weight must never be read outside the
head's own forward: :func:`head_as_wrapped` drops it, and the head computes its (M, V) logits inside its
forward, where the engine has gathered it. Nothing is copied.
"""

from __future__ import annotations

import torch

from .scored_rows import ScoredHead, _base_layer


def is_sharded(tensor: torch.Tensor) -> bool:
    """True for a parameter this process holds only a piece of (FSDP2 ``DTensor``, DeepSpeed ZeRO-3)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor) or hasattr(tensor, "ds_id")


def head_as_wrapped(head: ScoredHead | None) -> ScoredHead | None:
    """``head`` with the parameters its module holds now; without them (logits in the forward) when sharded."""
    if head is None or head.weight is None:
        return head
    layer = _base_layer(head.module)
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    if weight is None or is_sharded(weight) or (bias is not None and is_sharded(bias)):
        return ScoredHead(head.module, None, None)
    if weight is head.weight and bias is head.bias:
        return head
    return ScoredHead(head.module, weight, bias)
