"""Tests for the pure Dual LoRA math (SPEC section 3): sign STE, ΔW and the memory-efficient forward."""

from __future__ import annotations

import pytest
import torch

from balora.dual_lora.functional import delta_weight, dual_lora_forward, sign_ste


def _factors(d_in: int, d_out: int, r1: int, r2: int, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(r1, d_in), (d_out, r1), (r2, d_in), (d_out, r2)]
    return [torch.randn(*s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _direct(x, A, B, C, D, scale):
    """Reference: x @ ΔWᵀ through plain autograd, ΔW from delta_weight (sign_ste inside)."""
    return x @ delta_weight(A, B, C, D, scale).t()


def _grads(out, inputs, upstream):
    return torch.autograd.grad(out, inputs, grad_outputs=upstream)


# ---------------------------------------------------------------- sign_ste


def test_sign_ste_forward_values():
    x = torch.tensor([-2.0, -1e-30, 0.0, -0.0, 1e-30, 3.0])
    out = sign_ste(x)
    assert out.tolist() == [-1.0, -1.0, -1.0, -1.0, 1.0, 1.0]
    assert out.dtype == x.dtype


def test_sign_ste_backward_is_clipped_incoming_gradient():
    x = torch.tensor([-1.0, 0.0, 2.0, -5.0], requires_grad=True)
    (grad,) = torch.autograd.grad(sign_ste(x), x, grad_outputs=torch.tensor([-3.0, -0.5, 0.2, 5.0]))
    assert torch.equal(grad, torch.tensor([-1.0, -0.5, 0.2, 1.0]))


# ---------------------------------------------------------------- delta_weight


def test_delta_weight_matches_independent_formula():
    A, B, C, D = _factors(7, 5, 3, 2)
    scale = 0.37
    expected = (
        scale * torch.relu(B.detach() @ A.detach()) * torch.where(D.detach() @ C.detach() > 0, 1.0, -1.0).double()
    )
    got = delta_weight(A, B, C, D, scale)
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got.requires_grad


def test_delta_weight_sign_at_exact_zero_is_minus_one():
    # C = 0 makes D @ C exactly 0 everywhere: Sign must give -1, so ΔW = -scale * ReLU(B @ A).
    A, B, _, D = _factors(4, 3, 2, 2)
    C = torch.zeros(2, 4, dtype=torch.float64)
    got = delta_weight(A, B, C, D, 2.0)
    torch.testing.assert_close(got, -2.0 * torch.relu(B @ A), rtol=0, atol=0)


def test_delta_weight_rejects_bad_shapes():
    A, B, C, D = _factors(4, 3, 2, 2)
    with pytest.raises(ValueError, match="shapes"):
        delta_weight(A, B, C[:, :3], D, 1.0)


# ---------------------------------------------------------------- dual_lora_forward


@pytest.mark.parametrize(
    ("d_in", "d_out", "r1", "r2", "lead", "scale", "seed"),
    [
        (7, 5, 3, 2, (2, 3), 0.7, 0),
        (16, 11, 4, 4, (4, 1, 3), 1.3, 1),
        (9, 13, 1, 5, (6,), -0.4, 2),
    ],
)
def test_forward_and_grads_match_direct_formula(d_in, d_out, r1, r2, lead, scale, seed):
    A, B, C, D = _factors(d_in, d_out, r1, r2, seed=seed)
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(*lead, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(*lead, d_out, generator=gen, dtype=torch.float64)
    inputs = (x, A, B, C, D)

    out = dual_lora_forward(x, A, B, C, D, scale)
    ref = _direct(x, A, B, C, D, scale)
    assert out.shape == (*lead, d_out)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    assert out.grad_fn is not None and "DualLora" in type(out.grad_fn).__name__

    for got, want in zip(_grads(out, inputs, upstream), _grads(ref, inputs, upstream), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_clipping_active_with_large_scale():
    d_in, d_out = 10, 8
    A, B, C, D = _factors(d_in, d_out, 3, 3, seed=5)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 3, d_out, generator=gen, dtype=torch.float64)
    scale = 50.0
    inputs = (x, A, B, C, D)

    # The clip must actually bite: some entries of ∂L/∂Sign(S) = scale·G ⊙ ReLU(M) lie outside [-1, 1].
    g_w = upstream.reshape(-1, d_out).t() @ x.detach().reshape(-1, d_in)
    pre_clip = scale * g_w * torch.relu(B.detach() @ A.detach())
    assert (pre_clip.abs() > 1).any() and (pre_clip.abs() < 1).any()

    out = dual_lora_forward(x, A, B, C, D, scale)
    ref = _direct(x, A, B, C, D, scale)
    got = _grads(out, inputs, upstream)
    want = _grads(ref, inputs, upstream)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)

    # Without the clip the C/D gradients would be different: the check above is not vacuous.
    unclipped_dD = pre_clip @ C.detach().t()
    assert not torch.allclose(got[4], unclipped_dD)


def test_partial_requires_grad():
    A, B, C, D = _factors(6, 4, 2, 3, seed=3)
    x = torch.randn(5, 6, dtype=torch.float64)  # x does not require grad
    B.requires_grad_(False)
    D.requires_grad_(False)
    out = dual_lora_forward(x, A, B, C, D, 0.9)
    ref = _direct(x, A, B, C, D, 0.9)
    upstream = torch.randn(5, 4, dtype=torch.float64)
    for g, w in zip(_grads(out, (A, C), upstream), _grads(ref, (A, C), upstream), strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)

    # Only x requires grad (frozen adapter): grad_x is still x-gradient of x @ ΔWᵀ.
    A2, B2, C2, D2 = (t.detach() for t in _factors(6, 4, 2, 3, seed=4))
    x2 = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(dual_lora_forward(x2, A2, B2, C2, D2, 0.5).sum(), x2)
    expected = torch.ones(2, 5, 4, dtype=torch.float64) @ delta_weight(A2, B2, C2, D2, 0.5)
    torch.testing.assert_close(gx, expected, rtol=0, atol=1e-10)


def _saved_shapes(fn) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_no_dense_tensor_saved_for_backward():
    d_in, d_out = 12, 9
    A, B, C, D = _factors(d_in, d_out, 2, 3, seed=8)
    x = torch.randn(4, 5, d_in, dtype=torch.float64, requires_grad=True)

    direct = _saved_shapes(lambda: _direct(x, A, B, C, D, 1.0))
    assert (d_out, d_in) in direct  # the reference keeps dense intermediates (sanity: the hook sees them)

    ours = _saved_shapes(lambda: dual_lora_forward(x, A, B, C, D, 1.0))
    assert (d_out, d_in) not in ours
    assert sorted(ours) == sorted([tuple(t.shape) for t in (x, A, B, C, D)])


def test_no_grad_inference_builds_no_graph():
    A, B, C, D = _factors(6, 4, 2, 2, seed=9)
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        out = dual_lora_forward(x, A, B, C, D, 0.8)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, x @ delta_weight(A, B, C, D, 0.8).detach().t(), rtol=0, atol=1e-12)


def test_scale_zero_gives_zero_output_and_zero_grads():
    A, B, C, D = _factors(6, 4, 2, 2, seed=10)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    out = dual_lora_forward(x, A, B, C, D, 0.0)
    assert out.shape == (2, 3, 4) and out.dtype == torch.float64
    assert torch.count_nonzero(out) == 0
    (out * torch.randn_like(out)).sum().backward()
    for t in (x, A, B, C, D):
        assert t.grad is not None and t.grad.shape == t.shape
        assert torch.count_nonzero(t.grad) == 0
    with torch.no_grad():
        assert torch.count_nonzero(dual_lora_forward(x, A, B, C, D, 0.0)) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype):
    d_in, d_out = 32, 24
    A32, B32, C32, D32 = (t.detach().float() * 0.3 for t in _factors(d_in, d_out, 4, 4, seed=11))
    x32 = torch.randn(2, 5, d_in, generator=torch.Generator().manual_seed(12))
    upstream = torch.randn(2, 5, d_out, generator=torch.Generator().manual_seed(13))
    scale = 0.25

    low = [t.to(dtype).requires_grad_() for t in (x32, A32, B32, C32, D32)]
    out = dual_lora_forward(*low, scale)
    assert out.dtype == dtype
    out.backward(upstream.to(dtype))
    for t in low:
        assert t.grad is not None and t.grad.dtype == dtype and torch.isfinite(t.grad.float()).all()

    # Float32 reference computed from the same (rounded) inputs.
    ref_in = [t.detach().float().requires_grad_() for t in low]
    ref = _direct(*ref_in, scale)
    ref.backward(upstream)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    # x's gradient depends only on ΔW: tight enough to catch a wrong formula.
    torch.testing.assert_close(low[0].grad.float(), ref_in[0].grad, rtol=0.05, atol=0.05)
    for got, want in zip(low[1:], ref_in[1:], strict=True):
        rel = (got.grad.float() - want.grad).norm() / want.grad.norm().clamp_min(1e-6)
        assert rel < 0.05


def test_mixed_dtype_computes_in_input_dtype():
    A, B, C, D = (t.detach().float() for t in _factors(8, 6, 2, 2, seed=14))
    for t in (A, B, C, D):
        t.requires_grad_()
    x = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    out = dual_lora_forward(x, A, B, C, D, 0.5)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert all(t.grad.dtype == torch.float32 for t in (A, B, C, D))


def test_rejects_wrong_input_width():
    A, B, C, D = _factors(8, 6, 2, 2)
    with pytest.raises(ValueError, match="d_in"):
        dual_lora_forward(torch.randn(3, 7, dtype=torch.float64), A, B, C, D, 1.0)


def test_autocast_computes_in_autocast_dtype():
    A, B, C, D = (t.detach().float().requires_grad_() for t in _factors(8, 6, 2, 2, seed=15))
    x = torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dual_lora_forward(x, A, B, C, D, 0.5)
    assert out.dtype == torch.bfloat16  # like nn.Linear under autocast
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and all(t.grad.dtype == torch.float32 for t in (A, B, C, D))
    ref = _direct(x.detach(), A.detach(), B.detach(), C.detach(), D.detach(), 0.5)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
