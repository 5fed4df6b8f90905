"""From model outputs to the three BA-LoRA terms (SPEC sections 2.2 and 2.3).

The trainer calls :func:`reference_outputs` (the pre-trained model's outputs, no gradient) and then
:func:`nlu_terms` or :func:`nlg_terms` on the student's outputs. NLG work happens on the M scored rows
only: the full (B, T, V) reference logits are reduced to (M, V) right after the reference forward.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import regularizers as R
from ..reference import as_pretrained
from .config import BALoRAConfig

logger = logging.getLogger("balora")

HEAD_NAMES = ("classifier", "score")


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the classification head (peft's wrapper when trained); it reads the pooled vector."""
    candidates = [(name, module) for name, module in model.named_modules()
                  if name.rsplit(".", 1)[-1] in HEAD_NAMES]
    if not candidates:
        raise ValueError("no classification head named 'classifier' or 'score' found; set nlu_target='logits'.")
    return min(candidates, key=lambda item: item[0].count("."))


@contextlib.contextmanager
def capture_head_input(head: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the tensor the head reads on each forward inside the block."""
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def pooled_from_head_input(head_input: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """(N, H) pooled vector: the head's input itself, or for (N, T, H) its [CLS] row (encoders) or its
    last real token (decoder ``score`` heads, which pool there)."""
    if head_input.dim() == 2:
        return head_input
    if not causal:
        return head_input[:, 0]
    if attention_mask is None:
        return head_input[:, -1]
    last = attention_mask.long().sum(dim=1).clamp_min(1) - 1  # right padding
    return head_input[torch.arange(head_input.shape[0], device=head_input.device), last]


@dataclass
class ReferenceOutputs:
    """NLU: logits (N, C). NLG: logits at the valid rows (M, V). Both carry no gradient."""

    logits: torch.Tensor


@torch.no_grad()
def reference_outputs(model: nn.Module, inputs: dict, task: str) -> ReferenceOutputs:
    """The pre-trained model's outputs on ``inputs`` (SPEC 2.1), through :func:`balora.as_pretrained`.

    ``model`` may be wrapped (DDP/FSDP): the wrapped model is called, the adapters are switched inside.
    The labels are left out so no task loss (and no float32 copy of the logits) is computed.

    The random-number state is forked and restored, so the student's forward that follows draws the same
    dropout masks: the reference then differs from the student only by the weights, and L_CR = 0 at step 0
    even with dropout (exactly so when the adapter itself has no dropout, ``lora_dropout=0``).
    """
    labels = inputs.get("labels")
    call_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    inner = getattr(model, "module", model)
    device = next(inner.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), as_pretrained(inner):
        logits = model(**call_inputs).logits
    if task == "nlg":
        logits = R.gather_valid(logits, labels)
    return ReferenceOutputs(logits.detach())


def nlu_target_rule(num_classes: int, config: BALoRAConfig) -> str:
    """'logits' when C > k (the paper's choice), else 'pooled' (SPEC 2.2), unless set explicitly."""
    if config.nlu_target != "auto":
        return config.nlu_target
    return "logits" if num_classes > config.nlu_svd_k else "pooled"


def nlu_terms(
    logits: torch.Tensor,
    reference: ReferenceOutputs | None,
    pooled: torch.Tensor | None,
    target: str,
    weights: dict[str, float],
    config: BALoRAConfig,
) -> dict[str, torch.Tensor]:
    """The active NLU terms, each the signed quantity to ADD (before its weight).

    A single-output (regression) head is normalised across the batch instead of across classes: the
    per-example normalisation of a 1-vector is ±1 and would give the term no gradient.
    """
    out: dict[str, torch.Tensor] = {}
    if weights["consistency"] > 0 and reference is not None:
        student, teacher = logits.float(), reference.logits.float()
        if student.shape[-1] == 1:
            student, teacher = student.T, teacher.T
        out["consistency"] = R.nlu_consistency(student, teacher)
    z = logits if target == "logits" else pooled
    if z is not None and z.shape[0] > 1:
        if weights["diversity"] > 0:
            out["diversity"] = R.nlu_diversity(z)
        if weights["svd"] > 0:
            out["svd"] = R.nlu_svd(z, k=config.nlu_svd_k)
    return out


def nlg_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reference: ReferenceOutputs | None,
    weights: dict[str, float],
    config: BALoRAConfig,
) -> dict[str, torch.Tensor]:
    """The active NLG terms over the valid rows (M, V), gathered once."""
    rows = R.gather_valid(logits, labels)
    out: dict[str, torch.Tensor] = {}
    if weights["consistency"] > 0 and reference is not None:
        out["consistency"] = R.kl_rows(rows, reference.logits, temperature=config.temperature)
    if weights["diversity"] > 0:
        out["diversity"] = -R.topk_entropy_rows(rows, top_k=config.top_k)
    if weights["svd"] > 0:
        out["svd"] = -R.svd_ratio(rows, k=config.nlg_svd_k, method=config.svd_method)
    return out
