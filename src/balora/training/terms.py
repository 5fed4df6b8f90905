"""From model outputs to the three BA-LoRA terms (design §2.2 and §2.3): the one assembly of each.

NLU: :func:`reference_logits` (the pre-trained model's logits, no gradient), then :func:`nlu_terms` on the
student's logits or the pooled vector its head reads. NLG: :func:`reference_rows` and the student's
:class:`~balora.training.scored_rows.ScoredRows` (the head at the scored rows only, or the rows of a full
forward where that does not apply), then :func:`nlg_loss` (the step's loss) or :func:`nlg_terms` (the terms
alone): the task cross-entropy and the terms in one chunked pass over the M scored rows.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn as nn

from .. import regularizers as R
from ..reference import as_pretrained
from .config import BALoRAConfig
from .scored_rows import ScoredHead, ScoredRows, hidden_rows_only, nlg_step_loss, nlg_step_terms, scored_forward

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


@contextlib.contextmanager
def pretrained_view(model: nn.Module) -> Iterator[None]:
    """The reference forward's context: no gradient, the method's pre-trained view, the RNG forked.

    The random-number state is forked and restored, so the student's forward that follows draws the same
    dropout masks: the reference then differs from the student only by the weights, and L_CR = 0 at step 0
    even with dropout (exactly so when the adapter itself has no dropout, ``lora_dropout=0``).
    ``model`` may be wrapped (DDP/FSDP): the wrapped model is what the caller runs.
    """
    inner = getattr(model, "module", model)
    device = next(inner.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices), as_pretrained(inner):
        yield


def reference_logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    """The pre-trained model's logits on ``inputs`` (design §2.1): NLU (N, C); NLG all (B, T, V).

    The labels are left out so no task loss (and no float32 copy of the logits) is computed.
    """
    with pretrained_view(model):
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.detach()


def reference_rows(model: nn.Module, inputs: dict, head: ScoredHead | None) -> ScoredRows:
    """The pre-trained model's NLG scored rows: the head at the scored rows only when ``head`` is given, and
    only the head's inputs when that head is frozen and linear (:func:`student_rows` does the same)."""
    if head is not None:
        with pretrained_view(model):
            return scored_forward(model, inputs, head, logits=not hidden_rows_only(head))
    return rows_of_logits(reference_logits(model, inputs), inputs["labels"])


def student_rows(model: nn.Module, inputs: dict, head: ScoredHead) -> ScoredRows:
    """The student's NLG scored rows, in the form :func:`nlg_loss` takes: the head's inputs only when the
    head is frozen and linear (the loss then never builds logits rows), else the (M, V) logits rows."""
    return scored_forward(model, inputs, head, logits=not hidden_rows_only(head))


def rows_of_logits(logits: torch.Tensor, labels: torch.Tensor) -> ScoredRows:
    """:class:`ScoredRows` from a full (B, T, V) forward (models the scored-rows head does not apply to)."""
    mask = R.valid_token_mask(labels)
    targets = labels[:, 1:][mask[:, :-1]]
    return ScoredRows(hidden=None, logits=R.gather_valid(logits, labels), targets=targets)


def nlg_terms(student: ScoredRows, reference: ScoredRows | None, head: ScoredHead | None,
              weights: dict[str, float], config: BALoRAConfig,
              num_items_in_batch: torch.Tensor | int | None = None) -> dict[str, torch.Tensor]:
    """``{"task": CE}`` plus the active NLG terms (signed, before their weights) over the scored rows."""
    return nlg_step_terms(student, reference, head, weights, temperature=config.temperature, top_k=config.top_k,
                          svd_k=config.nlg_svd_k, svd_method=config.svd_method,
                          num_items_in_batch=num_items_in_batch)


def nlg_loss(student: ScoredRows, reference: ScoredRows | None, head: ScoredHead | None,
             weights: dict[str, float], config: BALoRAConfig, num_items_in_batch: torch.Tensor | int | None = None,
             task_scale: float = 1.0, term_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(loss, task, terms)``: loss = task_scale·CE + term_scale·Σ λ_i·term_i over the scored rows
    (:func:`balora.training.scored_rows.nlg_step_loss`); ``task`` and ``terms`` for logging."""
    return nlg_step_loss(student, reference, head, weights, task_scale=task_scale, term_scale=term_scale,
                         temperature=config.temperature, top_k=config.top_k, svd_k=config.nlg_svd_k,
                         svd_method=config.svd_method, num_items_in_batch=num_items_in_batch)


def nlu_target_rule(num_classes: int, config: BALoRAConfig) -> str:
    """'logits' when C > k (the paper's choice), else 'pooled' (design §2.2), unless set explicitly."""
    if config.nlu_target != "auto":
        return config.nlu_target
    return "logits" if num_classes > config.nlu_svd_k else "pooled"


def nlu_terms(
    logits: torch.Tensor,
    reference: torch.Tensor | None,
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
        student, teacher = logits.float(), reference.float()
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
