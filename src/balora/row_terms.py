"""Cross-entropy, temperature KL and top-K entropy over scored rows, fused and chunked (design §2.3, 6).

One pass over row chunks computes the three SUMS (not means) the NLG step needs from the student's rows:

- ``ce``: sum_m [logsumexp(z_m) - z_m[y_m]] (the task loss before its normalisation);
- ``kl``: sum_m KL(softmax(t_m/T) || softmax(z_m/T)) (teacher t detached; T^2 and 1/M are the caller's);
- ``entropy``: sum_m H(softmax(top_K(z_m))).

Two inputs: :func:`row_term_sums` takes the (M, V) logits rows in the model's dtype;
:func:`head_row_term_sums` takes the head's inputs H (M, h) and a frozen head weight W (V, h) and never
builds the student's or the teacher's (M, V) logits: each chunk's logits are recomputed from H as
H_c @ W^T (+ b), in the head's dtype like the model's own head, in forward and again in backward
(the idea of Liger-Kernel's / Cut-Cross-Entropy's fused linear cross-entropy, written here from the math).
When the step knows the terms' coefficients as it calls, :mod:`balora.head_loss` forms dL/dH in the
forward instead (no chunk rebuilt in backward); it shares this module's chunk helpers and checks.

Memory: both are custom autograd functions that save only their inputs (and the (M, K) top-K indices and
the rows' (M, 3) log-sum-exps, so that backward needs one exp pass per softmax and no reduction);
each chunk is upcast to float32 (float64 stays float64), used, and dropped, so at most a few float32
chunks of ``rows x V`` are alive at once, never an (M, V) float32 copy. Backward recomputes each chunk:

    dCE/dz = softmax(z) - onehot(y);  dKL/dz = (softmax(z/T) - softmax(t/T)) / T;
    dH/dv_j = -p_j (log p_j + H) on the top-K values v (p = softmax(v)), scattered back to their columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["head_row_term_sums", "row_term_sums"]

Sums = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half/bf16/float32 inputs, float64 kept (so gradcheck works)."""
    return torch.promote_types(x.dtype, torch.float32)


def _shifted_exp_sum(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """e = exp(scale * (x - rowmax)) (r, V), its row sums s (r,) and rowmax (r,): ONE exp pass.

    logsumexp(scale * x) = scale * rowmax + log(s).
    """
    top = x.amax(dim=-1, keepdim=True)
    e = _scaled_minus(x, scale, top * scale).exp_()
    return e, e.sum(dim=-1), top.squeeze(-1)


def _scaled_minus(x: torch.Tensor, scale: float, shift: torch.Tensor) -> torch.Tensor:
    """scale * x - shift (r, V), shift (r, 1), in a new tensor (torch's addcmul measured slower than this)."""
    out = torch.mul(x, scale) if scale != 1.0 else x.clone()
    return out.sub_(shift)


def _squares_to_power(temperature: float) -> bool:
    """T = 2: exp(x - c) = exp((x - c)/2)^2, so the CE's exp pass is the KL's squared (a multiply, no exp)."""
    return temperature == 2.0


def _chunk_sums(z: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor | None, temperature: float,
                top_k: int, idx_out: torch.Tensor | None, lse_out: torch.Tensor) -> Sums:
    """The three sums over one chunk z (r, V) in the compute dtype.

    Writes the top-K indices to ``idx_out`` and the rows' log-sum-exps to ``lse_out`` (r, 3): of z (CE),
    of z/T and of t/T (KL), so backward gets every softmax with one exp pass and no reduction.
    KL(p || q) with p = softmax(w), q = softmax(u), w = t/T, u = z/T is sum_v p (w - u) - lse(w) + lse(u),
    and w - u = (t - z)/T: one exp pass per side. At T = 2 (the default) the CE's exp is the student's KL
    exp squared. Identical student and teacher rows give exactly 0.
    """
    zero = z.new_zeros(())
    ce = kl = ent = zero
    if t is not None:
        e_u, sum_u, z_top = _shifted_exp_sum(z, 1.0 / temperature)
        lse_out[:, 1] = z_top / temperature + sum_u.log()
        if y is not None and _squares_to_power(temperature):
            lse_out[:, 0] = z_top + e_u.square_().sum(dim=-1).log()
        del e_u
        t = t.to(z.dtype)
        p, sum_w, t_top = _shifted_exp_sum(t, 1.0 / temperature)
        lse_out[:, 2] = t_top / temperature + sum_w.log()
        diff = torch.sub(t, z)
        kl = (torch.linalg.vecdot(diff, p) / (sum_w * temperature) - lse_out[:, 2] + lse_out[:, 1]).sum()
        del p, diff
    if y is not None:
        if t is None or not _squares_to_power(temperature):
            lse_out[:, 0] = torch.logsumexp(z, dim=-1)
        ce = (lse_out[:, 0] - z.gather(1, y[:, None]).squeeze(1)).sum()
    if idx_out is not None:
        values, idx = z.topk(top_k, dim=-1, sorted=False)
        idx_out.copy_(idx)
        logp = F.log_softmax(values, dim=-1)
        ent = -(logp.exp() * logp).sum()
    return ce, kl, ent


def _softmax_from_lse(x: torch.Tensor, scale: float, lse: torch.Tensor) -> torch.Tensor:
    """softmax(scale * x) (r, V) from the rows' logsumexp(scale * x) (r,): one exp pass, no reduction."""
    return _scaled_minus(x, scale, lse[:, None]).exp_()


def _chunk_grad(z: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor | None, temperature: float,
                idx: torch.Tensor | None, lse: torch.Tensor, g_ce: torch.Tensor | None,
                g_kl: torch.Tensor | None, g_ent: torch.Tensor | None) -> torch.Tensor:
    """d(g_ce*ce + g_kl*kl + g_ent*ent)/dz for one chunk z (r, V); a term whose g is None is skipped.

    ``lse`` (r, 3) is what :func:`_chunk_sums` saved. dCE/dz = softmax(z) - onehot(y);
    dKL/dz = (softmax(z/T) - softmax(t/T)) / T; at T = 2, softmax(z) = softmax(z/2)^2 * exp(2 lse_u - lse_z).
    """
    want_ce = y is not None and g_ce is not None
    want_kl = t is not None and g_kl is not None
    grad = None
    if want_kl:
        q = _softmax_from_lse(z, 1.0 / temperature, lse[:, 1])
        if want_ce and _squares_to_power(temperature):
            row = torch.exp(2.0 * lse[:, 1] - lse[:, 0]).mul_(g_ce)
            grad = torch.square(q).mul_(row[:, None])
        q.sub_(_softmax_from_lse(t.to(z.dtype), 1.0 / temperature, lse[:, 2])).mul_(g_kl / temperature)
        grad = q if grad is None else grad.add_(q)
        del q
    if want_ce:
        if grad is None or not (want_kl and _squares_to_power(temperature)):
            probs = _softmax_from_lse(z, 1.0, lse[:, 0]).mul_(g_ce)
            grad = probs if grad is None else grad.add_(probs)
        grad.scatter_add_(1, y[:, None], (-g_ce).expand(y.shape[0], 1))
    if grad is None:
        grad = torch.zeros_like(z)
    if idx is not None and g_ent is not None:
        logp = F.log_softmax(z.gather(1, idx), dim=-1)
        p = logp.exp()
        entropy = -(p * logp).sum(dim=-1, keepdim=True)
        grad.scatter_add_(1, idx, p.mul_(logp + entropy).mul_(-g_ent))
    return grad


def _grad_scalars(grads: tuple[torch.Tensor | None, ...], dtype: torch.dtype) -> list[torch.Tensor | None]:
    """The incoming output gradients in the compute dtype; None (output unused) stays None."""
    return [None if g is None else g.to(dtype) for g in grads]


class _LogitRowSums(torch.autograd.Function):
    """(ce, kl, entropy) sums over the rows of ``student`` (M, V); backward recomputes chunk by chunk."""

    @staticmethod
    def forward(ctx, student, targets, teacher, temperature, top_k, rows):  # type: ignore[override]
        dtype = compute_dtype(student)
        idx = None if top_k == 0 else student.new_empty((student.shape[0], top_k), dtype=torch.long)
        lse = student.new_zeros((student.shape[0], 3), dtype=dtype)
        totals = [student.new_zeros((), dtype=dtype) for _ in range(3)]
        for start in range(0, student.shape[0], rows):
            sl = slice(start, start + rows)
            parts = _chunk_sums(student[sl].to(dtype), None if targets is None else targets[sl],
                                None if teacher is None else teacher[sl], temperature, top_k,
                                None if idx is None else idx[sl], lse[sl])
            for total, part in zip(totals, parts, strict=True):
                total += part
        ctx.save_for_backward(student, targets, teacher, idx, lse)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: its term is skipped
        return tuple(totals)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ce, g_kl, g_ent):  # type: ignore[override]
        student, targets, teacher, idx, lse = ctx.saved_tensors
        dtype = compute_dtype(student)
        g_ce, g_kl, g_ent = _grad_scalars((g_ce, g_kl, g_ent), dtype)
        grad = torch.empty_like(student)
        for start in range(0, student.shape[0], ctx.rows):
            sl = slice(start, start + ctx.rows)
            grad[sl] = _chunk_grad(student[sl].to(dtype), None if targets is None else targets[sl],
                                   None if teacher is None else teacher[sl], ctx.temperature,
                                   None if idx is None else idx[sl], lse[sl], g_ce, g_kl, g_ent)
        return grad, None, None, None, None, None


def _head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """H_c @ W^T (+ b) in the head's dtype, exactly what the model's nn.Linear head computes."""
    return F.linear(hidden.to(weight.dtype), weight, bias)


class _HeadRowSums(torch.autograd.Function):
    """(ce, kl, entropy) sums over Z = H W^T (+ b), rebuilt per chunk in forward and backward.

    Gradient only for ``hidden`` (M, h); the head (weight, bias) and ``teacher_hidden`` are constants.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, teacher_hidden, temperature, top_k, rows):  # type: ignore[override]
        dtype = compute_dtype(hidden)
        idx = None if top_k == 0 else hidden.new_empty((hidden.shape[0], top_k), dtype=torch.long)
        lse = hidden.new_zeros((hidden.shape[0], 3), dtype=dtype)
        totals = [hidden.new_zeros((), dtype=dtype) for _ in range(3)]
        for start in range(0, hidden.shape[0], rows):
            sl = slice(start, start + rows)
            teacher = None if teacher_hidden is None else _head_logits(teacher_hidden[sl], weight, bias)
            parts = _chunk_sums(_head_logits(hidden[sl], weight, bias).to(dtype),
                                None if targets is None else targets[sl], teacher, temperature, top_k,
                                None if idx is None else idx[sl], lse[sl])
            for total, part in zip(totals, parts, strict=True):
                total += part
        ctx.save_for_backward(hidden, weight, bias, targets, teacher_hidden, idx, lse)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.set_materialize_grads(False)
        return tuple(totals)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ce, g_kl, g_ent):  # type: ignore[override]
        hidden, weight, bias, targets, teacher_hidden, idx, lse = ctx.saved_tensors
        dtype = compute_dtype(hidden)
        g_ce, g_kl, g_ent = _grad_scalars((g_ce, g_kl, g_ent), dtype)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], ctx.rows):
            sl = slice(start, start + ctx.rows)
            teacher = None if teacher_hidden is None else _head_logits(teacher_hidden[sl], weight, bias)
            dz = _chunk_grad(_head_logits(hidden[sl], weight, bias).to(dtype),
                             None if targets is None else targets[sl], teacher, ctx.temperature,
                             None if idx is None else idx[sl], lse[sl], g_ce, g_kl, g_ent)
            grad[sl] = dz.to(weight.dtype) @ weight  # the backward of the head's matmul, in its dtype
        return grad, None, None, None, None, None, None, None


def _check(m: int, width: int, targets: torch.Tensor | None, teacher: torch.Tensor | None, teacher_shape: tuple,
           temperature: float, top_k: int, chunk_rows: int) -> int:
    if targets is not None and tuple(targets.shape) != (m,):
        raise ValueError(f"targets must have shape ({m},), got {tuple(targets.shape)}")
    if teacher is not None and tuple(teacher.shape) != teacher_shape:
        raise ValueError(f"teacher must have shape {teacher_shape}, got {tuple(teacher.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: no entropy), got {top_k}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return min(top_k, width)


def row_term_sums(student: torch.Tensor, chunk_rows: int, *, targets: torch.Tensor | None = None,
                  teacher: torch.Tensor | None = None, temperature: float = 2.0, top_k: int = 0) -> Sums:
    """(ce, kl, entropy) sums over ``student`` (M, V) logits rows of any float dtype, in float32 (float64).

    ``targets`` (M,) next-token ids or None (ce = 0); ``teacher`` (M, V) reference rows or None (kl = 0),
    detached; ``top_k`` 0 turns the entropy off (capped at V). ``chunk_rows`` rows are upcast at a time.
    Terms that are off are zeros with a zero gradient.
    """
    if student.dim() != 2:
        raise ValueError(f"expected (M, V) rows, got {tuple(student.shape)}")
    m, v = student.shape
    kk = _check(m, v, targets, teacher, (m, v), temperature, top_k, chunk_rows)
    return _LogitRowSums.apply(student, targets, None if teacher is None else teacher.detach(),
                               float(temperature), kk, int(chunk_rows))


def head_row_term_sums(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk_rows: int, *,
                       targets: torch.Tensor | None = None, teacher_hidden: torch.Tensor | None = None,
                       temperature: float = 2.0, top_k: int = 0) -> Sums:
    """:func:`row_term_sums` of Z = hidden @ weight^T (+ bias) without building Z (M, V).

    ``hidden`` (M, h) the head's inputs at the scored rows (gradient flows to it); ``weight`` (V, h) and
    ``bias`` (V,) a FROZEN linear head; ``teacher_hidden`` (M, h) the reference forward's head inputs (the
    reference goes through the same head). Costs one extra row-chunk matmul per logits (forward again in
    backward) in exchange for never holding (M, V).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden (M, h) and weight (V, h), got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("head_row_term_sums needs a frozen head; use row_term_sums on the logits rows")
    m, v = hidden.shape[0], weight.shape[0]
    kk = _check(m, v, targets, teacher_hidden, tuple(hidden.shape), temperature, top_k, chunk_rows)
    return _HeadRowSums.apply(hidden, weight.detach(), None if bias is None else bias.detach(), targets,
                              None if teacher_hidden is None else teacher_hidden.detach(),
                              float(temperature), kk, int(chunk_rows))
