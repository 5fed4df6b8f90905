"""Where BA-LoRA's step time goes: the reference forward alone and each regularizer's forward + backward.

Each piece is timed on the step's real tensors: the batch, the trained model, the (M, V) logit rows at the
M scored positions, with the same functions and settings :func:`balora.training.terms.nlg_terms` uses.
The student's own forward and backward through the model are LoRA's (the ``pissa`` row measures them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import regularizers as R
from ..training.terms import reference_outputs
from .memory import extra_peak_mib
from .worker import median_ms


def _forward_backward(term: Any, leaf: torch.Tensor) -> Any:
    """A callable that evaluates ``term`` on a fresh leaf copy of ``leaf`` and back-propagates it."""

    def run() -> None:
        x = leaf.detach().requires_grad_(True)
        term(x).backward()

    return run


def balora_breakdown(trainer: Any, model: nn.Module, inputs: dict[str, torch.Tensor], device: str,
                     reps: int) -> dict[str, Any]:
    """Median milliseconds of each piece of a BA-LoRA step beyond the student's forward/backward.

    ``reference_forward_ms``: :func:`~balora.training.terms.reference_outputs` (no grad, adapters switched
    to the initial ones, scored rows gathered). ``gather_ms``: selecting the (M, V) rows from (B, T, V) and
    scattering their gradient back. ``consistency_ms`` / ``diversity_ms`` / ``svd_ms``: each term forward +
    backward on the rows; ``svd_exact_ms`` / ``svd_randomized_ms`` the two SVD methods; ``regularizers_ms``
    all three together, weighted as in the loss. ``task_loss_ms``: the causal-LM cross-entropy over the
    whole (B, T, V) logits in float32, which every method pays, for scale. ``<piece>_peak_mib``: how far
    memory rises above its level while the piece runs alone (the reference rows and the step's logits,
    already allocated, not counted).
    """
    config = trainer.balora_config
    labels = inputs["labels"]
    model.train()
    ref_ms = median_ms(lambda: reference_outputs(model, inputs, "nlg"), device, reps)
    teacher = reference_outputs(model, inputs, "nlg").logits
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.detach()
    rows = R.gather_valid(logits, labels).detach()
    vocab = logits.shape[-1]
    weights = trainer.weight_schedule.weights_at(trainer.state.global_step, trainer.state.max_steps)

    def task_loss(z: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z[:, :-1].float().reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100)

    def consistency(z: torch.Tensor) -> torch.Tensor:
        return R.kl_rows(z, teacher, temperature=config.temperature)

    def diversity(z: torch.Tensor) -> torch.Tensor:
        return -R.topk_entropy_rows(z, top_k=config.top_k)

    def svd(method: str) -> Any:
        return lambda z: -R.svd_ratio(z, k=config.nlg_svd_k, method=method)

    def all_terms(z: torch.Tensor) -> torch.Tensor:
        return (weights["consistency"] * consistency(z) + weights["diversity"] * diversity(z)
                + weights["svd"] * svd(config.svd_method)(z))

    pieces = {
        "task_loss_ms": (task_loss, logits),
        "gather_ms": (lambda z: R.gather_valid(z, labels).float().sum(), logits),
        "consistency_ms": (consistency, rows),
        "diversity_ms": (diversity, rows),
        "svd_ms": (svd(config.svd_method), rows),
        "svd_exact_ms": (svd("exact"), rows),
        "svd_randomized_ms": (svd("randomized"), rows),
        "regularizers_ms": (all_terms, rows),
    }
    out: dict[str, Any] = {"reference_forward_ms": ref_ms}
    for name, (term, leaf) in pieces.items():
        out[name] = median_ms(_forward_backward(term, leaf), device, reps)
    out["reference_forward_peak_mib"] = extra_peak_mib(lambda: reference_outputs(model, inputs, "nlg"), device)
    for name in ("task_loss_ms", "gather_ms", "consistency_ms", "diversity_ms", "svd_ms", "regularizers_ms"):
        term, leaf = pieces[name]
        out[name.removesuffix("_ms") + "_peak_mib"] = extra_peak_mib(_forward_backward(term, leaf), device)
    auto = "exact" if min(rows.shape) <= R.AUTO_EXACT_MAX else "randomized"
    svd_used = auto if config.svd_method == "auto" else config.svd_method
    out.update(scored_rows=rows.shape[0], vocab=vocab, svd_method=svd_used, svd_k=config.nlg_svd_k,
               top_k=config.top_k, temperature=config.temperature)
    return out
