"""The pure math of Dual LoRA (design §3), importing only torch.

ΔW = scale · ReLU(B·A) ⊙ Sign(D·C), with A (r1, d_in), B (d_out, r1), C (r2, d_in), D (d_out, r2).
``scale`` is a Python float that already includes alpha / sqrt(r1·r2) and any warm-up factor.

Sign(x) is +1 for x > 0 and -1 otherwise (never 0, unlike ``torch.sign``); it is trained with a
straight-through estimator chosen by ``sign_grad`` (:data:`SIGN_GRADS`): ``"clip"`` (the default) passes the
incoming gradient clipped to [-1, 1]; ``"hardtanh"`` passes it where |x| <= 1 and zero elsewhere (the
derivative of hardtanh); ``"identity"`` passes it unchanged. The papers leave the variant open.

:func:`delta_weight` is the reference formula (plain autograd, used for merging). :func:`dual_lora_forward`
is the training path: a custom autograd Function that saves only x, A, B, C, D and recomputes the dense
(d_out, d_in) intermediates in backward, so activation memory stays close to LoRA's (design §3).
:func:`dual_lora_linear` is the same for a whole frozen linear layer, x @ (W + ΔW)ᵀ + b: since ΔW is built
densely anyway, folding it into W saves one large matmul in forward and one in backward.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SIGN_GRADS", "delta_weight", "dual_lora_forward", "dual_lora_linear", "sign_ste"]

SIGN_GRADS = ("clip", "hardtanh", "identity")  #: the straight-through variants of Sign's backward


def _hard_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x > 0, -1 elsewhere (NaN included), in x's dtype and shape."""
    return (x > 0).to(x.dtype).mul_(2).sub_(1)


def _check_sign_grad(sign_grad: str) -> None:
    if sign_grad not in SIGN_GRADS:
        raise ValueError(f"sign_grad must be one of {', '.join(SIGN_GRADS)}; got {sign_grad!r}")


def _sign_backward(grad: torch.Tensor, inside: torch.Tensor | None, sign_grad: str) -> torch.Tensor:
    """The straight-through gradient w.r.t. Sign's input from ``grad`` w.r.t. its output (same shape).

    ``inside`` is the mask |x| <= 1 (needed by ``"hardtanh"`` only). May work in place on ``grad``.
    """
    if sign_grad == "clip":
        return grad.clamp_(-1.0, 1.0)
    if sign_grad == "hardtanh":
        return grad.mul_(inside)
    return grad


class _SignSTE(torch.autograd.Function):
    """Sign with a straight-through backward; saves the mask |x| <= 1 for ``"hardtanh"`` only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sign_grad: str) -> torch.Tensor:
        ctx.sign_grad = sign_grad
        if sign_grad == "hardtanh":
            ctx.save_for_backward(x.abs() <= 1)
        return _hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        inside = ctx.saved_tensors[0] if ctx.sign_grad == "hardtanh" else None
        return _sign_backward(grad_out.clone(), inside, ctx.sign_grad), None


def sign_ste(x: torch.Tensor, sign_grad: str = "clip") -> torch.Tensor:
    """Sign(x) = +1 for x > 0, -1 otherwise, with a straight-through backward (design §3).

    Shape and dtype are those of ``x``. The straight-through gradient lets the direction group (C, D)
    learn although Sign's true derivative is zero almost everywhere. ``sign_grad``: ``"clip"`` (the
    incoming gradient clamped to [-1, 1], bounding the update), ``"hardtanh"`` (the incoming gradient
    where |x| <= 1, else 0) or ``"identity"`` (the incoming gradient unchanged).
    """
    _check_sign_grad(sign_grad)
    return _SignSTE.apply(x, sign_grad)


def delta_weight(
    A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, scale: float, sign_grad: str = "clip"
) -> torch.Tensor:
    """ΔW = scale · ReLU(B @ A) ⊙ Sign(D @ C), shape (d_out, d_in) (design §3).

    A (r1, d_in), B (d_out, r1), C (r2, d_in), D (d_out, r2). Differentiable through plain autograd and
    :func:`sign_ste`, so it keeps dense intermediates for backward: use it for merging and as the
    reference; train through :func:`dual_lora_forward`. ``sign_grad`` as in :func:`sign_ste`.
    """
    _check_shapes(A, B, C, D)
    return scale * torch.relu(B @ A) * sign_ste(D @ C, sign_grad)


def _check_shapes(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> None:
    if A.dim() != 2 or B.dim() != 2 or C.dim() != 2 or D.dim() != 2:
        raise ValueError("Dual LoRA factors A, B, C, D must all be 2-D matrices")
    (r1, d_in), (d_out, r1_b), (r2, d_in_c), (d_out_d, r2_d) = A.shape, B.shape, C.shape, D.shape
    if r1 != r1_b or r2 != r2_d or d_in != d_in_c or d_out != d_out_d:
        raise ValueError(
            "Dual LoRA factor shapes do not fit: expected A (r1, d_in), B (d_out, r1), C (r2, d_in), "
            f"D (d_out, r2); got A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}, "
            f"D {tuple(D.shape)}"
        )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype nn.Linear would compute in: the autocast dtype when autocast is on, else x's."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _no_autocast(x: torch.Tensor) -> Any:
    """Disable autocast inside the Function so forward and backward use one explicit dtype."""
    device = x.device.type
    if torch.amp.is_autocast_available(device):
        return torch.autocast(device_type=device, enabled=False)
    return nullcontext()


def _dense_delta(
    A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, scale: float
) -> torch.Tensor:
    """ΔW (d_out, d_in) without autograd, with two dense temporaries at most."""
    delta = torch.relu_(B @ A)
    sign = D @ C
    delta.mul_(_hard_sign(sign))
    del sign
    return delta.mul_(scale)


def _masks(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, sign_grad: str
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ReLU(B·A), Sign(D·C) and, for ``"hardtanh"`` only, the mask |D·C| <= 1; each (d_out, d_in)."""
    relu_m = torch.relu_(B @ A)  # ReLU(M); 1[M > 0] == 1[ReLU(M) > 0]
    pre = D @ C
    inside = pre.abs() <= 1 if sign_grad == "hardtanh" else None
    return relu_m, _hard_sign(pre), inside


def _factor_grads(g: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: torch.Tensor, masks: tuple, scale: float | torch.Tensor, sign_grad: str,
                  needs: tuple[bool, bool, bool, bool]) -> list[torch.Tensor | None]:
    """Gradients w.r.t. A, B, C, D (None where not needed) from grad_out ``g`` (..., d_out) and ``x`` (..., d_in).

    G = scale · Σ over leading dims of gᵀ x is ∂L/∂(ReLU(M) ⊙ Sign(S)), (d_out, d_in); the STE maps
    G ⊙ ReLU(M) (the gradient w.r.t. Sign's output) to S's, and G ⊙ Sign(S) · 1[M > 0] is M's.
    """
    need_a, need_b, need_c, need_d = needs
    grads: list[torch.Tensor | None] = [None] * 4
    if not any(needs):
        return grads
    relu_m, sign_s, inside = masks
    g_w = g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
    g_w.mul_(scale)
    if need_c or need_d:
        g_s = _sign_backward(g_w * relu_m, inside, sign_grad)
        grads[2] = (D.t() @ g_s) if need_c else None
        grads[3] = (g_s @ C.t()) if need_d else None
        del g_s
    if need_a or need_b:
        g_m = g_w.mul_(sign_s).mul_(relu_m > 0)
        grads[0] = (B.t() @ g_m) if need_a else None
        grads[1] = (g_m @ A.t()) if need_b else None
    return grads


class _DualLoraFunction(torch.autograd.Function):
    """x @ ΔWᵀ that saves only x, A, B, C, D and recomputes ΔW's pieces in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        scale: float,
        dtype: torch.dtype,
        sign_grad: str,
    ) -> torch.Tensor:
        ctx.scale = scale
        ctx.dtype = dtype
        ctx.sign_grad = sign_grad
        ctx.save_for_backward(x, A, B, C, D)
        if scale == 0:
            return x.new_zeros((*x.shape[:-1], B.shape[0]), dtype=dtype)
        with _no_autocast(x):
            delta = _dense_delta(A.to(dtype), B.to(dtype), C.to(dtype), D.to(dtype), scale)
            return F.linear(x.to(dtype), delta)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, A, B, C, D = ctx.saved_tensors
        scale, dtype = ctx.scale, ctx.dtype
        need_x, need_a, need_b, need_c, need_d = ctx.needs_input_grad[:5]
        grads: list[torch.Tensor | None] = [None] * 8
        if scale == 0:
            for i, (need, t) in enumerate(zip(ctx.needs_input_grad[:5], (x, A, B, C, D), strict=True)):
                if need:
                    grads[i] = torch.zeros_like(t)
            return tuple(grads)

        with _no_autocast(x):
            g = grad_out.to(dtype)
            xc, Ac, Bc, Cc, Dc = (t.to(dtype) for t in (x, A, B, C, D))
            masks = _masks(Ac, Bc, Cc, Dc, ctx.sign_grad)
            if need_x:
                delta = (masks[0] * masks[1]).mul_(scale)
                grads[0] = (g @ delta).to(x.dtype)
                del delta
            factor_grads = _factor_grads(g, xc, Ac, Bc, Cc, Dc, masks, scale, ctx.sign_grad,
                                         (need_a, need_b, need_c, need_d))
        for i, (grad, t) in enumerate(zip(factor_grads, (A, B, C, D), strict=True), start=1):
            grads[i] = None if grad is None else grad.to(t.dtype)
        return tuple(grads)


def dual_lora_forward(
    x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, scale: float,
    sign_grad: str = "clip",
) -> torch.Tensor:
    """The Dual LoRA update x @ ΔWᵀ: x (..., d_in) -> (..., d_out) (design §3).

    Memory-efficient training path: only x, A, B, C, D are saved for backward; ReLU(B @ A), Sign(D @ C)
    and ΔW are rebuilt in backward instead of being kept (each is a dense (d_out, d_in) matrix). The
    gradients equal autograd through :func:`delta_weight` with the same ``sign_grad``. Computes in x's dtype
    (or the autocast dtype when autocast is on), like nn.Linear; gradients come back in each input's
    dtype. Under ``torch.no_grad`` or without any input requiring grad it skips the autograd Function.
    """
    _check_shapes(A, B, C, D)
    _check_sign_grad(sign_grad)
    if x.shape[-1] != A.shape[1]:
        raise ValueError(f"x has last dim {x.shape[-1]}, but A expects d_in = {A.shape[1]}")
    scale = float(scale)
    dtype = _compute_dtype(x)
    tensors = (x, A, B, C, D)
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        if scale == 0:
            return x.new_zeros((*x.shape[:-1], B.shape[0]), dtype=dtype)
        with torch.no_grad(), _no_autocast(x):
            delta = _dense_delta(A.to(dtype), B.to(dtype), C.to(dtype), D.to(dtype), scale)
            return F.linear(x.to(dtype), delta)
    return _DualLoraFunction.apply(x, A, B, C, D, scale, dtype, sign_grad)


def _scale_tensor(factor: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """scale · factor as a 0-d tensor of ``dtype`` (the warm-up factor stays on the device: no host sync)."""
    return factor.detach().to(dtype) * scale


class _DualLinearFunction(torch.autograd.Function):
    """x @ (W + s·ΔW)ᵀ + b for a frozen W, b; saves x, W, A, B, C, D and rebuilds ΔW's pieces in backward.

    Against base(x) + x @ (s·ΔW)ᵀ: one (N, d_in) x (d_in, d_out) matmul less in forward and one
    (N, d_out) x (d_out, d_in) less in backward (the gradient w.r.t. x goes through W + s·ΔW at once).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor,
                B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, factor: torch.Tensor, scale: float,
                dtype: torch.dtype, sign_grad: str) -> torch.Tensor:
        ctx.scale, ctx.dtype, ctx.sign_grad = scale, dtype, sign_grad
        ctx.save_for_backward(x, weight, A, B, C, D, factor)
        with _no_autocast(x):
            s = _scale_tensor(factor, scale, dtype)
            merged = _dense_delta(A.to(dtype), B.to(dtype), C.to(dtype), D.to(dtype), 1.0).mul_(s)
            merged.add_(weight.to(dtype))
            return F.linear(x.to(dtype), merged, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, A, B, C, D, factor = ctx.saved_tensors
        dtype = ctx.dtype
        need_x, _, _, need_a, need_b, need_c, need_d = ctx.needs_input_grad[:7]
        grads: list[torch.Tensor | None] = [None] * 11
        with _no_autocast(x):
            s = _scale_tensor(factor, ctx.scale, dtype)
            g = grad_out.to(dtype)
            xc, Ac, Bc, Cc, Dc = (t.to(dtype) for t in (x, A, B, C, D))
            masks = _masks(Ac, Bc, Cc, Dc, ctx.sign_grad)
            if need_x:
                merged = (masks[0] * masks[1]).mul_(s).add_(weight.to(dtype))
                grads[0] = (g @ merged).to(x.dtype)
                del merged
            factor_grads = _factor_grads(g, xc, Ac, Bc, Cc, Dc, masks, s, ctx.sign_grad,
                                         (need_a, need_b, need_c, need_d))
        for i, (grad, t) in enumerate(zip(factor_grads, (A, B, C, D), strict=True), start=3):
            grads[i] = None if grad is None else grad.to(t.dtype)
        return tuple(grads)


def dual_lora_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor, scale: float, factor: torch.Tensor, sign_grad: str = "clip",
) -> torch.Tensor:
    """A frozen linear layer plus its Dual LoRA update, x @ (W + scale·factor·ΔW)ᵀ + b (design §3).

    x (..., d_in) -> (..., d_out); ``weight`` (d_out, d_in) and ``bias`` (d_out,) must not require grad;
    ``factor`` is the warm-up factor, a 0-d tensor. Equal to ``F.linear(x, weight, bias) + factor ·
    dual_lora_forward(x, A, B, C, D, scale)`` up to float rounding, with the same gradients for x, A, B, C, D,
    at two large matmuls less per training step. Computes in x's dtype (or the autocast dtype).
    """
    _check_shapes(A, B, C, D)
    _check_sign_grad(sign_grad)
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("dual_lora_linear needs a frozen weight and bias")
    if tuple(weight.shape) != (B.shape[0], A.shape[1]) or x.shape[-1] != A.shape[1]:
        raise ValueError(f"weight {tuple(weight.shape)} and x (..., {x.shape[-1]}) do not fit A {tuple(A.shape)} "
                         f"and B {tuple(B.shape)}")
    return _DualLinearFunction.apply(x, weight, bias, A, B, C, D, factor, float(scale), _compute_dtype(x),
                                     sign_grad)
