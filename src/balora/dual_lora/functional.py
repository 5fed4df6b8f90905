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
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SIGN_GRADS", "delta_weight", "dual_lora_forward", "sign_ste"]

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
            relu_m = torch.relu_(Bc @ Ac)  # ReLU(M); 1[M > 0] == 1[ReLU(M) > 0]
            s = Dc @ Cc
            sign_s = _hard_sign(s)  # Sign(S)
            inside = s.abs() <= 1 if ctx.sign_grad == "hardtanh" else None  # |S| <= 1, for hardtanh's STE
            del s
            if need_x:
                delta = (relu_m * sign_s).mul_(scale)
                grads[0] = (g @ delta).to(x.dtype)
                del delta
            if need_a or need_b or need_c or need_d:
                # G = Σ over leading dims of grad_outᵀ x, scaled: ∂L/∂(ReLU(M) ⊙ Sign(S)), (d_out, d_in).
                g_w = g.reshape(-1, g.shape[-1]).t() @ xc.reshape(-1, xc.shape[-1])
                g_w.mul_(scale)
                del g, xc
                if need_c or need_d:
                    # The STE maps the gradient w.r.t. Sign's output, scale · G ⊙ ReLU(M), to S's.
                    g_s = _sign_backward(g_w * relu_m, inside, ctx.sign_grad)
                    del inside
                    if need_c:
                        grads[3] = (Dc.t() @ g_s).to(C.dtype)
                    if need_d:
                        grads[4] = (g_s @ Cc.t()).to(D.dtype)
                    del g_s
                if need_a or need_b:
                    g_m = g_w.mul_(sign_s).mul_(relu_m > 0)
                    del relu_m, sign_s
                    if need_a:
                        grads[1] = (Bc.t() @ g_m).to(A.dtype)
                    if need_b:
                        grads[2] = (g_m @ Ac.t()).to(B.dtype)
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
