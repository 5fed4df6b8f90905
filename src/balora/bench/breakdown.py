"""Where BA-LoRA's step time goes beyond LoRA's: the reference forward and the regularizers.

Every method's NLG step computes the head only at the M scored rows and the task cross-entropy over them
(:mod:`balora.training.scored_rows`). BA-LoRA adds (a) the no-grad reference forward
(:func:`balora.training.terms.reference_rows`) and (b) the terms: KL and top-K entropy in the same chunked
pass as the cross-entropy, and the SVD term (through the frozen head when it applies). Each piece is timed
on the step's real tensors, in the form the trainer uses (hidden rows when the head is frozen and linear),
with the trainer's own loss (:func:`~balora.training.terms.nlg_loss`); ``regularizers_ms`` is the pass
with all terms minus the cross-entropy-only pass, so the pieces
add up to what BA-LoRA costs over LoRA (the rest is noise, or PiSSA vs LoRA).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .. import regularizers as R
from ..training.scored_rows import ScoredRows, scored_forward
from ..training.terms import nlg_loss, reference_rows, rows_of_logits, student_rows
from .memory import extra_peak_mib
from .timing import median_ms


def _leaf_rows(rows: ScoredRows) -> ScoredRows:
    """Fresh leaf copies of the student's rows, so each timed piece back-propagates on its own."""
    def leaf(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().requires_grad_(True)

    return ScoredRows(leaf(rows.hidden), leaf(rows.logits), rows.targets)


def balora_breakdown(trainer: Any, model: nn.Module, inputs: dict[str, torch.Tensor], device: str,
                     reps: int) -> dict[str, Any]:
    """Median milliseconds (forward + backward) and extra peak memory of each piece of a BA-LoRA step.

    ``reference_forward_ms``: the reference forward alone. ``task_loss_ms``: the cross-entropy pass every
    method pays, for scale. ``regularizers_ms``: the pass with all three terms weighted as in the loss,
    minus ``task_loss_ms`` (what the terms add; noise can make it slightly negative). ``consistency_ms`` /
    ``diversity_ms`` / ``svd_ms``: the pass with one term at a time (the cross-entropy included, so each is
    comparable with ``task_loss_ms``); ``svd_exact_ms`` / ``svd_randomized_ms`` /
    ``svd_through_head_ms``: the SVD term's ways on its own. ``<piece>_peak_mib``: how far memory rises
    above its level while the piece runs alone.
    """
    config, head = trainer.balora_config, trainer._scored_head
    weights = trainer.weight_schedule.weights_at(trainer.state.global_step, trainer.state.max_steps)
    model.train()
    teacher = reference_rows(model, inputs, head)
    with torch.no_grad():
        if head is not None:
            student, logit_rows = student_rows(model, inputs, head), scored_forward(model, inputs, head)
        else:
            student = logit_rows = rows_of_logits(model(**{k: v for k, v in inputs.items() if k != "labels"}).logits,
                                                  inputs["labels"])

    def pass_with(active: dict[str, float]) -> Any:
        def run() -> None:
            nlg_loss(_leaf_rows(student), teacher, head, active, config)[0].backward()
        return run

    def svd_alone(method: str, through_head: bool = False) -> Any:
        def run() -> None:
            rows = _leaf_rows(logit_rows)
            if through_head:
                ratio = R.svd_ratio_through_head(rows.hidden, k=config.nlg_svd_k, factor=head.gram_factor())
            else:
                ratio = R.svd_ratio(rows.logits, k=config.nlg_svd_k, method=method)
            ratio.backward()
        return run

    off = {"consistency": 0.0, "diversity": 0.0, "svd": 0.0}
    pieces = {
        "task_loss_ms": pass_with(off),
        "regularizers_ms": pass_with(weights),
        "consistency_ms": pass_with({**off, "consistency": 1.0}),
        "diversity_ms": pass_with({**off, "diversity": 1.0}),
        "svd_ms": pass_with({**off, "svd": 1.0}),
        "svd_exact_ms": svd_alone("exact"),
        "svd_randomized_ms": svd_alone("randomized"),
    }
    if head is not None and head.frozen_linear:
        pieces["svd_through_head_ms"] = svd_alone("exact", through_head=True)
    out: dict[str, Any] = {"reference_forward_ms": median_ms(lambda: reference_rows(model, inputs, head), device,
                                                             reps)}
    for name, run in pieces.items():
        out[name] = median_ms(run, device, reps)
    out["regularizers_ms"] = round(out["regularizers_ms"] - out["task_loss_ms"], 3)
    out["gather_ms"] = 0.0  # every method's step gathers the scored rows: not a BA-LoRA cost any more
    out["reference_forward_peak_mib"] = extra_peak_mib(lambda: reference_rows(model, inputs, head), device)
    for name in ("task_loss_ms", "regularizers_ms"):
        out[name.removesuffix("_ms") + "_peak_mib"] = extra_peak_mib(pieces[name], device)
    rows = logit_rows.logits
    auto = "exact" if min(rows.shape) <= R.AUTO_EXACT_MAX else "randomized"
    svd_used = auto if config.svd_method == "auto" else config.svd_method
    if head is not None and head.frozen_linear:
        svd_used = "through the frozen head"
    out.update(scored_rows=rows.shape[0], vocab=rows.shape[1], svd_method=svd_used, svd_k=config.nlg_svd_k,
               top_k=config.top_k, temperature=config.temperature)
    return out
