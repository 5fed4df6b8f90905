"""PiSSA initialisation with an oversampled randomized SVD, and a measure of what a randomized SVD captures.

peft's ``init_lora_weights="pissa_niter_K"`` runs ``torch.svd_lowrank(W, q=r, niter=K)``: a range finder
with exactly r columns and no oversampling, which on a slowly decaying spectrum misses part of the top-r
singular subspace. Here the range finder gets q = r + ``oversample`` columns and the result is truncated
to r (Halko, Martinsson and Tropp 2011, section 4); everything else is peft's ``LoraLayer.pissa_init``
formula for formula, so with ``niter=None`` (exact SVD) the factors are peft's ``"pissa"`` ones.

- :func:`pissa_factors`: (A0, B0, W_res) of one weight matrix.
- :func:`apply_pissa_init`: turn every LoRA layer of a peft model made with ``init_lora_weights=True``
  into a PiSSA one, in place (base weight -> W_res).
- :func:`captured_mass` / :func:`captured_mass_by_layer`: the fraction of the exact top-r singular-value
  mass a randomized SVD captures (docs/benchmarks.md reports it for MiniLM and the bench ``tiny`` shape).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from .errors import ConfigError

#: Power iterations and extra range-finder columns (q = r + DEFAULT_OVERSAMPLE) of balora's PiSSA, chosen
#: on MiniLM and the bench ``tiny`` shape at r = 16 (docs/benchmarks.md, "PiSSA initialisation"): >= 99 %
#: of the exact top-r mass in every layer there, where peft's ``pissa_niter_4`` (4, 0) gets 95-96 %.
DEFAULT_NITER = 6
DEFAULT_OVERSAMPLE = 16
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(weight: torch.Tensor, r: int, niter: int | None, oversample: int) -> None:
    if weight.ndim != 2:
        raise ConfigError(f"PiSSA needs a 2-D weight matrix, got shape {tuple(weight.shape)}.")
    if weight.dtype not in _FLOAT_DTYPES:
        raise ConfigError(f"PiSSA runs on float32, float16 or bfloat16 weights, got {weight.dtype} "
                          "(run the SVD on the full-precision weight, then quantize the residual).")
    if not isinstance(r, int) or not 1 <= r <= min(weight.shape):
        raise ConfigError(f"rank r must be in [1, {min(weight.shape)}] for a {tuple(weight.shape)} weight, got {r!r}.")
    if niter is not None and niter < 0:
        raise ConfigError(f"niter must be >= 0 or None (exact SVD), got {niter}.")
    if oversample < 0:
        raise ConfigError(f"oversample must be >= 0, got {oversample}.")


def top_singular(weight: torch.Tensor, r: int, niter: int | None,
                 oversample: int = DEFAULT_OVERSAMPLE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r (m, r), S_r (r,), Vh_r (r, n)) of a float32 (m, n) matrix: exact when ``niter`` is None, else
    ``torch.svd_lowrank`` with q = min(r + oversample, m, n) columns, truncated to the leading r."""
    _check(weight, r, niter, oversample)
    if niter is None:
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        return U[:, :r], S[:r], Vh[:r]
    q = min(r + oversample, *weight.shape)
    U, S, V = torch.svd_lowrank(weight, q=q, niter=niter)
    return U[:, :r], S[:r], V[:, :r].t()


def pissa_factors(
    weight: torch.Tensor,
    r: int,
    niter: int | None = DEFAULT_NITER,
    oversample: int = DEFAULT_OVERSAMPLE,
    *,
    scaling: float = 1.0,
    fan_in_fan_out: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PiSSA's (A0 (r, d_in), B0 (d_out, r), W_res) for a layer weight, as peft's ``pissa_init`` computes them.

    W is taken in float32 as (d_out, d_in) (transposed first when ``fan_in_fan_out``, GPT-2's Conv1D);
    with U_r S_r V_rᵀ its top-r SVD and s = ``scaling``: A0 = diag(√(S_r/s))·V_rᵀ, B0 = U_r·diag(√(S_r/s))
    (both float32) and W_res = W − s·B0·A0, cast back to ``weight``'s dtype and layout. So
    W_res + s·B0·A0 = W up to that cast. ``niter=None`` is the exact SVD (peft's ``"pissa"``);
    ``niter=K, oversample=0`` is peft's ``"pissa_niter_K"`` (same random draws for the same seed).
    """
    dtype = weight.dtype
    _check(weight, r, niter, oversample)
    w = weight.detach().to(torch.float32)
    w = w.t() if fan_in_fan_out else w
    U, S, Vh = top_singular(w, r, niter, oversample)
    root = torch.sqrt(S / scaling)
    lora_A = root[:, None] * Vh
    lora_B = U * root[None, :]
    residual = w - scaling * lora_B @ lora_A
    residual = residual.t() if fan_in_fan_out else residual
    return lora_A, lora_B, residual.to(dtype)


def _lora_layers(peft_model: nn.Module, adapter_name: str) -> Iterator[tuple[str, nn.Module]]:
    """The (name, LoRA layer) pairs holding ``adapter_name`` with a linear adapter over a 2-D weight."""
    from peft.tuners.lora import LoraLayer

    found = False
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
            continue
        weight = getattr(module.get_base_layer(), "weight", None)
        if not isinstance(module.lora_A[adapter_name], nn.Linear) or weight is None or weight.ndim != 2:
            raise ConfigError(f"PiSSA initialises linear layers only; {name} ({type(module).__name__}) is not one.")
        found = True
        yield name, module
    if not found:
        raise ConfigError(f"the model has no LoRA layer with an adapter named {adapter_name!r}.")


@torch.no_grad()
def apply_pissa_init(
    peft_model: nn.Module,
    adapter_name: str = "default",
    niter: int | None = DEFAULT_NITER,
    oversample: int = DEFAULT_OVERSAMPLE,
) -> int:
    """(Re)initialise every LoRA layer of ``adapter_name`` to PiSSA factors, in place; returns the count.

    For a model made by ``get_peft_model`` with ``init_lora_weights=True`` (base weights untouched): each
    layer's base weight becomes W_res and its ``lora_A`` / ``lora_B`` become A0 / B0 of
    :func:`pissa_factors` with the layer's own r, scaling and ``fan_in_fan_out``, so the model's outputs
    do not change. The factors pass through the base weight's dtype before landing in the adapter's
    parameters, as peft's cast to the base layer's dtype does (bf16 base: bf16-rounded, then float32).
    Calling it on an already PiSSA-initialised layer would decompose W_res, not W.
    """
    count = 0
    for _, module in _lora_layers(peft_model, adapter_name):
        base = module.get_base_layer()
        A0, B0, residual = pissa_factors(base.weight, module.r[adapter_name], niter, oversample,
                                         scaling=module.scaling[adapter_name], fan_in_fan_out=module.fan_in_fan_out)
        module.lora_A[adapter_name].weight.copy_(A0.to(base.weight.dtype))
        module.lora_B[adapter_name].weight.copy_(B0.to(base.weight.dtype))
        base.weight.copy_(residual)
        count += 1
    return count


@torch.no_grad()
def captured_mass(weight: torch.Tensor, r: int, niter: int = DEFAULT_NITER,
                  oversample: int = DEFAULT_OVERSAMPLE) -> float:
    """Fraction of W's exact top-r singular-value mass that the randomized SVD (``niter``, q = r + oversample)
    captures: Σ_{i≤r} σ̃_i / Σ_{i≤r} σ_i, a number in [0, 1].

    σ_1 ≥ σ_2 ≥ … are W's singular values (float32, exact). The range finder returns an orthonormal
    Q (m × q); σ̃_i are the singular values of the projection QQᵀW (those of QᵀW), and σ̃_i ≤ σ_i because a
    projection does not lengthen. PiSSA's adapter s·B0·A0 is the rank-r truncation of QQᵀW, so this is
    the share of the principal part's nuclear norm (Σ σ_i of the top r) that lands in the adapter; the
    exact SVD gets 1. Uses torch's global RNG (seed it for repeatable numbers).
    """
    w = weight.detach().to(torch.float32)
    _check(w, r, niter, oversample)
    exact = torch.linalg.svdvals(w)[:r].sum()
    _, approx, _ = top_singular(w, r, niter, oversample)
    return float(approx.sum() / exact)


def captured_mass_by_layer(peft_model: nn.Module, adapter_name: str = "default", niter: int = DEFAULT_NITER,
                           oversample: int = DEFAULT_OVERSAMPLE) -> dict[str, float]:
    """:func:`captured_mass` of every LoRA layer's base weight (the model as ``apply_pissa_init`` takes it:
    base weights still W) at the layer's rank; keys are module names."""
    out = {}
    for name, module in _lora_layers(peft_model, adapter_name):
        weight = module.get_base_layer().weight
        weight = weight.t() if module.fan_in_fan_out else weight
        out[name] = captured_mass(weight, module.r[adapter_name], niter, oversample)
    return out
