"""The NLG step's loss through a frozen linear head, with dL/dH formed in the forward (design §8.2, step 5).

L = c_ce·ce + c_kl·kl + c_ent·entropy over Z = H W^T (+ b), the sums of :mod:`balora.row_terms`, when the
coefficients are known as the step calls (the trainer's weights and normalisers). Per chunk of rows the
student's and the teacher's logits are built from the head's inputs, the sums are added, and the chunk's
dL/dz becomes dL/dH_c = dz W at once, so backward only scales a saved (M, h) gradient: no (M, V) tensor
exists at any time and no chunk is rebuilt (the idea of Liger-Kernel's fused linear cross-entropy,
written here from the math).

Kept apart from :mod:`balora.row_terms`' ``_chunk_sums`` / ``_chunk_grad``, which serve the paths whose
coefficients come only in backward: those save the rows' log-sum-exps and top-K indices so that backward
needs one exp pass per softmax; rerunning this kernel there instead was measured 11-27 % slower
(``experiments/measure_row_terms.py --m 256 --variant rows|head``).

What a chunk costs, r rows of V logits (every (r, V) pass reads or writes r·V floats; the CPU's single
thread is bound by them, not by the exps): with the teacher at T = 2 the logits are built already halved
(H/2 and b/2 into the matmul: exact in binary floating point, so z/2 and t/2 are bit for bit what halving
the logits would give), the two exp passes are exp(z/2 − max) and exp(t/2 − max) (softmax(z) ∝ their
first squared), and the whole gradient is one expression over them,

    dz = c_ce·(e² / Σe² − onehot(y)) + (c_kl / T)·(e / Σe − p / Σp)  (+ the entropy's top-K scatter),

written in four passes (e·a, + b, ·e, − c·p). At most three (r, V) chunks are alive at once (z, t, p; then
e, p and the gradient); the cross-entropy alone holds one (z becomes its own softmax in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .row_terms import _check, _head_logits, _scaled_minus, _squares_to_power, compute_dtype

__all__ = ["head_row_loss"]

Scales = list[torch.Tensor | None]
Scatter = tuple[torch.Tensor, torch.Tensor]  #: (column indices (r, K), values (r, K)) to add into dz
Parts = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  #: (ce sum, kl sum, dz or None)


def _cross(t: torch.Tensor, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """sum_v (t − z)·p per row (r,), formed in t's storage (``torch.linalg.vecdot`` would allocate the
    product; a batched matmul does not, but measured 4x slower on the CPU)."""
    return t.sub_(z).mul_(p).sum(dim=-1)


def _top_k_entropy(z: torch.Tensor, top_k: int, raw: float,
                   c_ent: torch.Tensor | None) -> tuple[torch.Tensor, Scatter | None]:
    """(sum of H(softmax(top_K(raw·z))), its (idx, dH/dv·c_ent) scatter or None); raw·z: the raw logits."""
    if not top_k:
        return z.new_zeros(()), None
    values, idx = z.topk(top_k, dim=-1, sorted=False)
    logp = F.log_softmax(values * raw if raw != 1.0 else values, dim=-1)
    q = logp.exp()
    entropy = -(q * logp).sum(dim=-1, keepdim=True)
    grad = None if c_ent is None else (idx, q.mul_(logp + entropy).mul_(-c_ent))
    return entropy.sum(), grad


def _ce_alone(z: torch.Tensor, y: torch.Tensor, z_top: torch.Tensor, picked: torch.Tensor,
              c_ce: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ce sum, dz or None) with z overwritten by exp(z − max): the only (r, V) tensor of the path."""
    probs = z.sub_(z_top).exp_()
    total = probs.sum(dim=-1)
    ce = (z_top.squeeze(-1) + total.log() - picked).sum()
    if c_ce is None:
        return ce, None
    grad = probs.mul_((c_ce / total)[:, None])
    return ce, grad.scatter_add_(1, y[:, None], (-c_ce).expand(y.shape[0], 1))


def _with_teacher_halved(z: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor, c_ce: torch.Tensor | None,
                         c_kl: torch.Tensor | None) -> Parts:
    """T = 2, z = (student logits)/2 and t = (teacher logits)/2: (ce, kl, dz w.r.t. the RAW logits, or None).

    e = exp(z − max z), p = exp(t − max t): softmax(raw z) = e²/Σe², softmax(raw z / T) = e/Σe,
    softmax(raw t / T) = p/Σp, and KL = Σ p (t − z)/Σp − (max t + log Σp) + (max z + log Σe). Storage:
    t becomes t − z and then the gradient, z becomes e; p is the one new (r, V) tensor.
    """
    z_top, t_top = z.amax(dim=-1, keepdim=True), t.amax(dim=-1, keepdim=True)
    picked = None if y is None else z.gather(1, y[:, None]).squeeze(1)
    p = torch.sub(t, t_top).exp_()
    sum_w = p.sum(dim=-1)
    cross = _cross(t, z, p)
    e = z.sub_(z_top).exp_()
    sum_u = e.sum(dim=-1)
    kl = (cross / sum_w - (t_top.squeeze(-1) + sum_w.log()) + (z_top.squeeze(-1) + sum_u.log())).sum()
    ce, total = e.new_zeros(()), None
    if y is not None:
        total = torch.linalg.vector_norm(e, dim=-1).square()  # sum of e², no (r, V) temporary
        ce = (2.0 * (z_top.squeeze(-1) - picked) + total.log()).sum()
    a = None if c_ce is None or y is None else (c_ce / total)[:, None]
    b = None if c_kl is None else (0.5 * c_kl / sum_u)[:, None]
    if a is not None and b is not None:
        grad = torch.mul(e, a, out=t).add_(b).mul_(e)  # e·(a·e + b), in t's storage
    elif a is not None:
        grad = e.square_().mul_(a)
    elif b is not None:
        grad = e.mul_(b)
    else:
        return ce, kl, None
    if b is not None:
        grad.addcmul_(p, (0.5 * c_kl / sum_w)[:, None], value=-1.0)
    if a is not None:
        grad.scatter_add_(1, y[:, None], (-c_ce).expand(y.shape[0], 1))
    return ce, kl, grad


def _with_teacher(z: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor, temperature: float,
                  c_ce: torch.Tensor | None, c_kl: torch.Tensor | None) -> Parts:
    """Any T, raw logits z and t: (ce, kl, dz or None); three exp passes (z/T, t/T, and z for the CE).
    Storage: t becomes t − z and then exp(z/T − max), z the CE's softmax; p is the one new (r, V) tensor."""
    inv_t = 1.0 / temperature
    z_top = z.amax(dim=-1, keepdim=True)
    picked = None if y is None else z.gather(1, y[:, None]).squeeze(1)
    t_top = t.amax(dim=-1, keepdim=True)
    p = _scaled_minus(t, inv_t, t_top * inv_t).exp_()
    sum_w = p.sum(dim=-1)
    cross = _cross(t, z, p)
    e_u = torch.mul(z, inv_t, out=t).sub_(z_top * inv_t).exp_()
    sum_u = e_u.sum(dim=-1)
    kl = (cross * inv_t / sum_w - (t_top.squeeze(-1) * inv_t + sum_w.log())
          + (z_top.squeeze(-1) * inv_t + sum_u.log())).sum()
    ce, grad = (e_u.new_zeros(()), None) if y is None else _ce_alone(z, y, z_top, picked, c_ce)
    if c_kl is not None:
        e_u.mul_((c_kl * inv_t / sum_u)[:, None]).sub_(p.mul_((c_kl * inv_t / sum_w)[:, None]))
        grad = e_u if grad is None else grad.add_(e_u)
    return ce, kl, grad


def _fused_chunk(z: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor | None, temperature: float, top_k: int,
                 scales: Scales, want_grad: bool, halved: bool) -> tuple[torch.Tensor, ...]:
    """(ce, kl, entropy, dz) of one chunk (r, V), dz = d(c_ce·ce + c_kl·kl + c_ent·ent)/d(raw logits), None
    when unwanted. ``halved``: z and t are the logits divided by T = 2 (see the module's docstring).

    ``z`` and ``t`` are consumed: the caller passes fresh chunks, and their storage is overwritten in
    place once their values are read (the paths' docstrings say with what).
    """
    c_ce, c_kl, c_ent = scales if want_grad else (None, None, None)
    shape = z.shape
    ent, ent_grad = _top_k_entropy(z, top_k, 2.0 if halved else 1.0, c_ent)
    if t is None:
        kl = z.new_zeros(())
        if y is None:
            ce, grad = kl, None
        else:
            z_top = z.amax(dim=-1, keepdim=True)
            ce, grad = _ce_alone(z, y, z_top, z.gather(1, y[:, None]).squeeze(1), c_ce)
    elif halved:
        ce, kl, grad = _with_teacher_halved(z, y, t, c_ce, c_kl)
    else:
        ce, kl, grad = _with_teacher(z, y, t, temperature, c_ce, c_kl)
    if want_grad:
        if grad is None:
            grad = ent.new_zeros(shape)
        if ent_grad is not None:
            grad.scatter_add_(1, *ent_grad)
    return ce, kl, ent, grad


class _HeadRowLoss(torch.autograd.Function):
    """L and the three sums (without gradient, for logging); dL/dH formed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, teacher_hidden, temperature, top_k, rows,  # type: ignore[override]
                coefficients):
        dtype = compute_dtype(hidden)
        wants = [torch.is_tensor(c) or c != 0.0 for c in coefficients]  # a tensor: on (no host sync to test it)
        scales = [None if not want else c.to(device=hidden.device, dtype=dtype) if torch.is_tensor(c)
                  else hidden.new_tensor(c, dtype=dtype) for c, want in zip(coefficients, wants, strict=True)]
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        halved = teacher_hidden is not None and _squares_to_power(temperature)
        if halved:  # exact: a power of two
            hidden, teacher_hidden = hidden * 0.5, teacher_hidden * 0.5
            bias = None if bias is None else bias * 0.5
        totals = [hidden.new_zeros((), dtype=dtype) for _ in range(3)]
        for start in range(0, hidden.shape[0], rows):
            sl = slice(start, start + rows)
            # fresh chunks, no reference kept here: _fused_chunk frees (or overwrites) them as it goes
            *parts, dz = _fused_chunk(
                _head_logits(hidden[sl], weight, bias).to(dtype), None if targets is None else targets[sl],
                None if teacher_hidden is None else _head_logits(teacher_hidden[sl], weight, bias).to(dtype),
                temperature, top_k, scales, grad is not None, halved)
            for total, part in zip(totals, parts, strict=True):
                total += part
            if grad is not None:
                grad[sl] = dz.to(weight.dtype) @ weight
            del dz
        loss = sum((c * t for c, t in zip(scales, totals, strict=True) if c is not None), totals[0].new_zeros(()))
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(*totals)
        return (loss, *totals)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, *_):  # type: ignore[override]
        grad, = ctx.saved_tensors
        if grad is None or g_loss is None:
            return (None,) * 9
        return (grad * g_loss.to(grad.dtype), *(None,) * 8)


def head_row_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk_rows: int,
                  coefficients: tuple[float | torch.Tensor, float, float], *, targets: torch.Tensor | None = None,
                  teacher_hidden: torch.Tensor | None = None, temperature: float = 2.0,
                  top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L, ce, kl, entropy)``: the sums of :func:`balora.row_terms.head_row_term_sums` and their weighted
    total L = c_ce·ce + c_kl·kl + c_ent·entropy, ``coefficients`` = (c_ce, c_kl, c_ent), numbers or 0-dim
    tensors (a tensor, e.g. 1 / num_items_in_batch on the device, is never read back to the host).

    Only L carries a gradient (to ``hidden``), computed during the forward chunk by chunk: the step that
    knows its weights when it calls (the trainer) pays one head matmul per logits for the gradient, as
    with materialised logits, and holds no (M, V) tensor at any time. A coefficient of 0 skips its term's
    gradient (its sum is still computed when its input is given: ``teacher_hidden`` for kl, ``top_k`` for
    the entropy). ``hidden`` (M, h), ``weight`` (V, h) frozen, ``bias`` (V,) frozen or None.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden (M, h) and weight (V, h), got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("head_row_loss needs a frozen head; use row_term_sums on the logits rows")
    if len(coefficients) != 3:
        raise ValueError(f"coefficients must be (c_ce, c_kl, c_ent), got {coefficients!r}")
    m, v = hidden.shape[0], weight.shape[0]
    kk = _check(m, v, targets, teacher_hidden, tuple(hidden.shape), temperature, top_k, chunk_rows)
    return _HeadRowLoss.apply(hidden, weight.detach(), None if bias is None else bias.detach(), targets,
                              None if teacher_hidden is None else teacher_hidden.detach(), float(temperature), kk,
                              int(chunk_rows), tuple(c if torch.is_tensor(c) else float(c) for c in coefficients))
