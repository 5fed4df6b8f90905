"""The causal-LM step on the scored rows only: no (B, T, V) logits (design §2.3, 6, 8.2).

A causal LM's loss reads the logits only where ``labels[:, t + 1] != -100`` (M rows, often half of B*T or
fewer), yet ``model(**batch)`` builds all B*T rows of V logits (plus a float32 copy for the loss). Here
the model is called as usual (through DDP / peft / balora's ``as_pretrained`` patches, so adapters and
gradient synchronisation behave exactly as in a normal forward), with a pre-hook on the output head that
replaces its (B, T, h) input by the (1, M, h) scored rows, or by an empty (1, 0, h) tensor when only the
head's inputs H are wanted (:func:`scored_forward` with ``logits=False``). The head then produces (M, V)
or nothing, and the model has no labels, so it computes no loss of its own.

:func:`scored_head` decides once per model whether this applies: a known causal-LM architecture whose
logits are the head's output unchanged (no soft-capping or logit scaling, no router loss added to the
loss, the standard causal-LM loss) and whose head is an ``nn.Linear`` (possibly inside a peft wrapper). It
returns None, with one INFO log line, otherwise: the caller then keeps the full forward.
:func:`nlg_step_terms` turns the student's (and the reference's) rows into the task loss and the signed
BA-LoRA terms in one fused chunked pass (:mod:`balora.row_terms`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .. import regularizers as R
from ..head_loss import head_row_loss
from ..row_terms import head_row_term_sums, row_term_sums

logger = logging.getLogger("balora")

__all__ = ["PLAIN_HEAD_MODEL_TYPES", "ScoredHead", "ScoredRows", "hidden_rows_only", "nlg_step_loss", "nlg_step_terms",
           "scored_forward", "scored_head"]

#: Architectures whose ForCausalLM forward is ``logits = lm_head(last_hidden_state)`` then the standard
#: causal-LM loss (checked against transformers 5.x). Others fall back to the full forward.
PLAIN_HEAD_MODEL_TYPES = frozenset({
    "gemma", "gpt2", "gpt_neox", "llama", "mistral", "olmo2", "phi3", "qwen2", "qwen3", "smollm3",
})
#: Config attributes that post-process the logits or add to the loss when set (not None / False / 0).
_POST_PROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_router_logits")


@dataclass(eq=False)
class ScoredHead:
    """The output head of a model the scored-rows path applies to.

    ``module``: the head as the model calls it (a peft wrapper when the head is targeted or saved);
    ``weight`` (V, h) / ``bias`` (V,): its parameters when ``module`` is itself a plain ``nn.Linear``, else
    None. ``frozen_linear``: plain ``nn.Linear`` with no trainable parameter, so the reference goes through
    the same head and the SVD term can run through it (design §2.3, :meth:`gram_factor`).
    """

    module: nn.Module
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    _factor: tuple[tuple, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def frozen_linear(self) -> bool:
        params = [p for p in (self.weight, self.bias) if p is not None]
        return self.weight is not None and not any(p.requires_grad for p in params)

    def gram_factor(self) -> torch.Tensor:
        """:func:`balora.regularizers.head_gram_factor` of the frozen head, cached.

        The cache key is the weight's and bias's storage, version counter, dtype and device, so moving
        the model or an in-place update through autograd-visible ops recomputes it. A write through
        ``.data`` bypasses the version counter: call :meth:`clear` after one.
        """
        if not self.frozen_linear:
            raise ValueError("the SVD term through the head needs a frozen nn.Linear head")
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (self.weight, self.bias) if t is not None)
        if self._factor is None or self._factor[0] != key:
            self._factor = (key, R.head_gram_factor(self.weight, self.bias))
        return self._factor[1]

    def clear(self) -> None:
        self._factor = None


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / accelerate (``.module``) and peft (``get_base_model()``)."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def _base_layer(module: nn.Module) -> nn.Module:
    """The layer a peft wrapper wraps (LoRA-targeted head, modules_to_save copy), else ``module``."""
    if hasattr(module, "get_base_layer"):
        return module.get_base_layer()
    return getattr(module, "original_module", module)


def _unsupported_reason(model: nn.Module, base: nn.Module) -> str | None:
    name, config = type(base).__name__, getattr(base, "config", None)
    if not name.endswith(("ForCausalLM", "LMHeadModel")) or config is None:
        return f"{name} is not a causal LM"
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return f"architecture {getattr(config, 'model_type', None)!r} is not known to use a plain head"
    for attr in _POST_PROCESSING:
        if getattr(config, attr, None):
            return f"the config sets {attr}={getattr(config, attr)!r}"
    if "_loss_function" in vars(base) or getattr(base, "loss_type", None) not in (None, "ForCausalLM"):
        return "the model uses a custom loss function"
    peft_config = getattr(getattr(model, "module", model), "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return "prompt learning adds virtual tokens"
    head = base.get_output_embeddings()
    if head is None or type(_base_layer(head)) is not nn.Linear:
        return f"the output head is {type(head).__name__}, not a linear layer"
    return None


def scored_head(model: nn.Module) -> ScoredHead | None:
    """The head for the scored-rows path, or None (logged once at INFO) when the full forward is needed.

    ``model``: a transformers ``*ForCausalLM`` (or ``GPT2LMHeadModel``), possibly wrapped by peft and/or
    DDP. Call once per model (after ``balora.adapt``); :attr:`ScoredHead.frozen_linear` says whether the
    hidden-rows paths apply.
    """
    base = _unwrap(model)
    reason = _unsupported_reason(model, base)
    if reason is not None:
        logger.info("scored-rows head off: %s; the step computes the logits at every position", reason)
        return None
    head = base.get_output_embeddings()
    if type(head) is nn.Linear:
        return ScoredHead(head, head.weight, head.bias)
    return ScoredHead(head, None, None)


@dataclass
class ScoredRows:
    """One forward's scored rows: ``hidden`` (M, h) the head's inputs (None for rows of a full forward),
    ``logits`` (M, V) its outputs in the model's dtype (None when only ``hidden`` was asked for),
    ``targets`` (M,) the next-token ids."""

    hidden: torch.Tensor | None
    logits: torch.Tensor | None
    targets: torch.Tensor


def hidden_rows_only(head: ScoredHead | None) -> bool:
    """True when the step's forwards should return the head's inputs only (:func:`nlg_step_loss` then builds
    no logits rows at all): a frozen plain ``nn.Linear`` head."""
    return head is not None and head.frozen_linear


def scored_forward(model: nn.Module, inputs: dict, head: ScoredHead, logits: bool = True) -> ScoredRows:
    """Run ``model`` on ``inputs`` (with their ``labels`` (B, T)), computing the head at the scored rows only.

    ``model`` is called as the trainer would call it, without ``labels`` / ``num_items_in_batch`` and with
    ``use_cache=False``. Gradient mode, dropout RNG and the pre-trained view (``balora.as_pretrained``)
    are the caller's: under ``torch.no_grad()`` this is the reference forward. ``logits=False`` skips the
    head entirely (its input becomes empty) and returns the hidden rows only, for the head-fused paths;
    it needs ``head.frozen_linear``. No (B, T, V) tensor is created.
    """
    if not logits and not head.frozen_linear:
        raise ValueError("scored_forward(logits=False) needs a frozen nn.Linear head")
    labels = inputs["labels"]
    mask = R.valid_token_mask(labels)
    seen: list[torch.Tensor] = []
    out: list[torch.Tensor] = []

    def pre_hook(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if seen or hidden.dim() != 3 or hidden.shape[:2] != mask.shape:
            raise RuntimeError(f"scored rows: the head got {tuple(hidden.shape)} for labels {tuple(mask.shape)} "
                               "(or was called twice); this model needs the full forward")
        rows = hidden[mask.to(hidden.device)]  # (M, h)
        seen.append(rows)
        return ((rows if logits else rows[:0]).unsqueeze(0), *args[1:])

    handles = [head.module.register_forward_pre_hook(pre_hook),
               head.module.register_forward_hook(lambda _m, _a, output: out.append(output))]
    call = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    try:
        model(**{**call, "use_cache": False})
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise RuntimeError("scored rows: the model never called its output head")
    targets = labels[:, 1:][mask[:, :-1]].to(seen[0].device)
    return ScoredRows(seen[0], out[0][0] if logits else None, targets)


def nlg_step_terms(student: ScoredRows, reference: ScoredRows | None, head: ScoredHead | None,
                   weights: dict[str, float],
                   *, temperature: float = 2.0, top_k: int = 20, svd_k: int = 10, svd_method: str = "auto",
                   num_items_in_batch: torch.Tensor | int | None = None,
                   chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """The task loss and the active BA-LoRA terms (signed, to ADD, before their weights) from scored rows.

    Returns ``{"task": ...}`` plus ``"consistency"`` (needs ``reference``), ``"diversity"``, ``"svd"`` for
    the terms whose weight is > 0. ``task`` equals transformers' causal-LM loss: the sum of the M
    cross-entropies divided by M, or by ``num_items_in_batch`` when given (gradient accumulation).
    CE, KL and top-K entropy come from ONE chunked pass over the student's rows: over ``student.logits``
    when present, else (``logits=False`` forwards, frozen head) over H W^T rebuilt chunk by chunk, which
    then needs ``reference`` as hidden rows too. The SVD term runs through the head when it is frozen and
    linear (exact, design §2.3) and on the logits rows otherwise.
    """
    want_kl = weights.get("consistency", 0) > 0 and reference is not None
    want_ent = weights.get("diversity", 0) > 0
    k_top = top_k if want_ent else 0
    m = student.targets.shape[0]
    if student.logits is not None:
        width = student.logits.shape[1]
        teacher = reference.logits if want_kl else None
        if want_kl and teacher is None:
            raise ValueError("the student has logits rows but the reference has hidden rows only")
        rows = R.rows_per_chunk(chunk_size, width, student.logits.device)
        ce, kl, ent = row_term_sums(student.logits, rows, targets=student.targets, teacher=teacher,
                                    temperature=temperature, top_k=k_top)
    else:
        width = head.weight.shape[0]
        rows = R.rows_per_chunk(chunk_size, width, student.hidden.device)
        ce, kl, ent = head_row_term_sums(student.hidden, head.weight, head.bias, rows, targets=student.targets,
                                         teacher_hidden=reference.hidden if want_kl else None,
                                         temperature=temperature, top_k=k_top)
    if num_items_in_batch is None:
        task = ce / max(m, 1)  # transformers: mean over scored tokens (0/0 there is NaN; 0 here)
    else:
        denom = num_items_in_batch.to(ce.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        task = ce / denom
    out = {"task": task}
    if want_kl:
        out["consistency"] = kl * (temperature**2 / max(m, 1))
    if want_ent:
        out["diversity"] = -ent / max(m, 1)
    if weights.get("svd", 0) > 0:
        if head is not None and head.frozen_linear and student.hidden is not None:
            ratio = R.svd_ratio_through_head(student.hidden, k=svd_k, factor=head.gram_factor(), method=svd_method)
        else:
            ratio = R.svd_ratio(student.logits, k=svd_k, method=svd_method)
        out["svd"] = -ratio
    return out


def nlg_step_loss(student: ScoredRows, reference: ScoredRows | None, head: ScoredHead | None,
                  weights: dict[str, float], *, task_scale: float = 1.0, term_scale: float = 1.0,
                  temperature: float = 2.0, top_k: int = 20, svd_k: int = 10, svd_method: str = "auto",
                  num_items_in_batch: torch.Tensor | int | None = None,
                  chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, task, terms)`` of one NLG step: loss = task_scale·task + term_scale·Σ λ_i·term_i.

    ``task`` and ``terms`` are what :func:`nlg_step_terms` returns (the task already times ``task_scale``),
    for logging and checks. With hidden rows and a frozen linear head (:func:`hidden_rows_only`) the CE,
    KL and entropy come from :func:`balora.head_loss.head_row_loss`, which knows their coefficients and
    forms the gradient during the forward: no (M, V) tensor at any point, the student's or the
    reference's; ``task`` and those two terms are then values without gradient, and ``loss`` carries it.
    Otherwise the terms are combined as returned (logits rows, the fallback).
    """
    if student.logits is not None or head is None or not head.frozen_linear:
        terms = nlg_step_terms(student, reference, head, weights, temperature=temperature, top_k=top_k,
                               svd_k=svd_k, svd_method=svd_method, num_items_in_batch=num_items_in_batch,
                               chunk_size=chunk_size)
        task = terms.pop("task") * task_scale
        regularizer = sum(weights[name] * value for name, value in terms.items())
        return (task + term_scale * regularizer if terms else task), task, terms
    want_kl = weights.get("consistency", 0) > 0 and reference is not None
    want_ent = weights.get("diversity", 0) > 0
    m = max(student.targets.shape[0], 1)
    denom = m if num_items_in_batch is None else num_items_in_batch  # a device tensor stays one (no sync)
    if torch.is_tensor(denom):
        c_task = task_scale / denom.to(student.hidden.device, torch.promote_types(student.hidden.dtype, torch.float32))
    else:
        c_task = task_scale / denom if denom else float("nan")  # transformers: 0/0 is NaN
    coefficients = (c_task, term_scale * weights["consistency"] * temperature**2 / m if want_kl else 0.0,
                    -term_scale * weights["diversity"] / m if want_ent else 0.0)
    rows = R.rows_per_chunk(chunk_size, head.weight.shape[0], student.hidden.device)
    loss, ce, kl, ent = head_row_loss(student.hidden, head.weight, head.bias, rows, coefficients,
                                      targets=student.targets, teacher_hidden=reference.hidden if want_kl else None,
                                      temperature=temperature, top_k=top_k if want_ent else 0)
    task = ce * c_task
    terms: dict[str, torch.Tensor] = {}
    if want_kl:
        terms["consistency"] = kl * (temperature**2 / m)
    if want_ent:
        terms["diversity"] = -ent / m
    if weights.get("svd", 0) > 0:
        terms["svd"] = -R.svd_ratio_through_head(student.hidden, k=svd_k, factor=head.gram_factor(),
                                                 method=svd_method)
        loss = loss + term_scale * weights["svd"] * terms["svd"]
    return loss, task, terms
