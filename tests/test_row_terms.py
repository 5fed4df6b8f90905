"""Fused chunked CE / KL / entropy sums and the SVD term through a frozen head, against float64 references."""

from __future__ import annotations

import pytest
import torch
from test_regularizers import _Float32Sizes, randn

from balora import regularizers as R
from balora.head_loss import head_row_loss
from balora.row_terms import head_row_term_sums, row_term_sums

# ----------------------------------------------------------------------------- float64 references (loops)


def ref_sums(z, y, t, temp, top_k):
    ce = kl = ent = 0.0
    for m in range(z.shape[0]):
        ce = ce + torch.log(torch.exp(z[m]).sum()) - z[m, y[m]]
        p = torch.softmax(t[m] / temp, -1)
        kl = kl + (p * (torch.log(p) - torch.log(torch.softmax(z[m] / temp, -1)))).sum()
        q = torch.softmax(torch.sort(z[m], descending=True).values[:top_k], -1)
        ent = ent - (q * torch.log(q)).sum()
    return ce, kl, ent


def ref_svd_ratio(z, k):
    return torch.linalg.svdvals(z)[:k].sum() / torch.sqrt((z**2).sum())


def targets(m, v, seed=0):
    return torch.randint(0, v, (m,), generator=torch.Generator().manual_seed(seed))


def combine(sums, weights=(0.7, 1.3, -0.4)):
    return sum(w * s for w, s in zip(weights, sums, strict=True))


# ---------------------------------------------------------------------------------------- row_term_sums


@pytest.mark.parametrize("temperature", [1.0, 1.7, 2.0])  # 2.0: the CE's exp is the KL's squared
@pytest.mark.parametrize("chunk_rows", [1, 3, 100])
def test_row_term_sums_match_reference_values_and_gradients(chunk_rows, temperature):
    z, t, y = randn(11, 17, seed=1, scale=3), randn(11, 17, seed=2, scale=3), targets(11, 17)
    expected = ref_sums(z, y, t, temperature, 5)
    x = z.float().requires_grad_(True)
    got = row_term_sums(x, chunk_rows, targets=y, teacher=t.float(), temperature=temperature, top_k=5)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(combine(got), x)
    zz = z.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(combine(ref_sums(zz, y, t, temperature, 5)), zz)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5)


def test_row_term_sums_gradcheck_float64_each_output_alone_and_together():
    z, t, y = randn(5, 7, seed=3), randn(5, 7, seed=4), targets(5, 7, seed=1)
    x = z.clone().requires_grad_(True)
    for pick in (0, 1, 2):  # the other outputs unused: their gradients arrive as None
        assert torch.autograd.gradcheck(
            lambda a, i=pick: row_term_sums(a, 2, targets=y, teacher=t, top_k=3)[i], (x,))
    assert torch.autograd.gradcheck(lambda a: combine(row_term_sums(a, 2, targets=y, teacher=t, top_k=3)), (x,))


def test_terms_that_are_off_are_zero_and_teacher_gets_no_gradient():
    z = randn(6, 9, seed=5).float().requires_grad_(True)
    t = randn(6, 9, seed=6).float().requires_grad_(True)
    ce, kl, ent = row_term_sums(z, 4, teacher=t)
    assert ce.item() == 0.0 and ent.item() == 0.0 and kl.item() > 1e-3
    kl.backward()
    assert t.grad is None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        row_term_sums(z, 4, targets=targets(5, 9))
    with pytest.raises(ValueError):
        row_term_sums(z, 0)


def test_kl_entropy_rows_is_one_pass_of_the_two_terms():
    z, t = randn(9, 13, seed=7, scale=2).float(), randn(9, 13, seed=8, scale=2).float()
    kl, ent = R.kl_entropy_rows(z, t, temperature=2.0, top_k=4, chunk_size=2)
    torch.testing.assert_close(kl, R.kl_rows(z, t, 2.0))
    torch.testing.assert_close(ent, R.topk_entropy_rows(z, 4))
    _, ref_kl, ref_ent = ref_sums(z.double(), targets(9, 13), t.double(), 2.0, 4)
    torch.testing.assert_close(kl.double(), 4 * ref_kl / 9, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ent.double(), ref_ent / 9, rtol=1e-5, atol=1e-7)


def test_bf16_rows_give_float32_sums_and_bf16_gradient_without_a_float32_copy():
    z, t, y = randn(12, 64, seed=9, scale=2).bfloat16(), randn(12, 64, seed=10).bfloat16(), targets(12, 64)
    x = z.clone().requires_grad_(True)
    with _Float32Sizes() as mode:
        got = row_term_sums(x, 2, targets=y, teacher=t, top_k=5)
        combine(got).backward()
    assert all(s.dtype == torch.float32 for s in got) and x.grad.dtype == torch.bfloat16
    assert 0 < mode.largest <= 2 * 64  # one 2-row chunk at a time, never 12 x 64
    for a, b in zip(got, row_term_sums(z.float(), 2, targets=y, teacher=t.float(), top_k=5), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------- head_row_term_sums


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [2, 50])
def test_head_row_term_sums_equal_the_sums_on_materialised_logits(with_bias, chunk_rows):
    h, w, t_h, y = randn(10, 6, seed=11), randn(30, 6, seed=12), randn(10, 6, seed=13), targets(10, 30)
    b = randn(30, seed=14) if with_bias else None
    x = h.clone().requires_grad_(True)
    got = head_row_term_sums(x, w, b, chunk_rows, targets=y, teacher_hidden=t_h, temperature=2.0, top_k=4)
    xx = h.clone().requires_grad_(True)
    expected = ref_sums(torch.nn.functional.linear(xx, w, b), y, torch.nn.functional.linear(t_h, w, b), 2.0, 4)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.autograd.grad(combine(got), x)[0],
                               torch.autograd.grad(combine(expected), xx)[0], rtol=1e-9, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda a: combine(head_row_term_sums(a, w, b, chunk_rows, targets=y, teacher_hidden=t_h, top_k=4)), (x,))


def test_head_row_term_sums_float32_never_builds_the_logits_and_needs_a_frozen_head():
    h, w, y = randn(16, 8, seed=15).float(), randn(64, 8, seed=16).float(), targets(16, 64)
    x = h.clone().requires_grad_(True)
    with _Float32Sizes() as mode:
        got = head_row_term_sums(x, w, None, 2, targets=y, teacher_hidden=h + 0.1, top_k=5)
        combine(got).backward()
    assert mode.largest <= 64 * 8  # the weight-sized gradient products; chunks are 2 x 64
    for a, b in zip(got, row_term_sums(h @ w.T, 2, targets=y, teacher=(h + 0.1) @ w.T, top_k=5), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="frozen"):
        head_row_term_sums(x, w.clone().requires_grad_(True), None, 2, targets=y)


def test_head_row_term_sums_bf16_computes_the_head_like_the_model():
    h, w, y = randn(12, 8, seed=25).bfloat16(), randn(40, 8, seed=26).bfloat16(), targets(12, 40)
    x, xx = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    got = head_row_term_sums(x, w, None, 5, targets=y, teacher_hidden=h * 0.5, top_k=4)
    expected = row_term_sums(xx @ w.T, 5, targets=y, teacher=(h * 0.5) @ w.T, top_k=4)  # bf16 logits, upcast
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    g, g_ref = torch.autograd.grad(combine(got), x)[0], torch.autograd.grad(combine(expected), xx)[0]
    assert g.dtype == torch.bfloat16
    torch.testing.assert_close(g, g_ref)


# ------------------------------------------------------------------------------- SVD through the head


@pytest.mark.parametrize("m, h, v, k, with_bias", [
    (14, 6, 40, 3, True),  # M > h: the (h+1) side is the small one
    (5, 12, 40, 2, False),  # M < h
    (9, 12, 8, 3, True),  # V < h: G is singular, the factor drops its zero directions
    (14, 6, 40, 10, False),  # k >= rank: nuclear over Frobenius
])
@pytest.mark.parametrize("method", ["exact", "auto"])
def test_svd_ratio_through_head_equals_exact_svd_of_the_logits(m, h, v, k, with_bias, method):
    hid, w = randn(m, h, seed=17, scale=2), randn(v, h, seed=18)
    b = randn(v, seed=19) if with_bias else None
    x = hid.clone().requires_grad_(True)
    got = R.svd_ratio_through_head(x, w, b, k=k, method=method)
    xx = hid.clone().requires_grad_(True)
    expected = ref_svd_ratio(torch.nn.functional.linear(xx, w, b), k)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    g, g_ref = torch.autograd.grad(got, x)[0], torch.autograd.grad(expected, xx)[0]
    assert (g - g_ref).abs().max() <= 1e-5 * g_ref.abs().max()


def test_head_gram_factor_reproduces_the_gram_matrix_and_drops_null_directions():
    w, b = randn(40, 6, seed=20), randn(40, seed=21)
    factor = R.head_gram_factor(w, b)
    wa = torch.cat([w, b[:, None]], 1)
    assert factor.shape == (7, 7)
    torch.testing.assert_close(factor @ factor.T, wa.T @ wa, rtol=1e-10, atol=1e-10)
    assert R.head_gram_factor(randn(8, 12, seed=22)).shape == (12, 8)  # rank 8


def test_svd_ratio_through_head_float32_and_bf16_match_the_rows_version():
    hid, w = randn(20, 16, seed=23).float(), randn(200, 16, seed=24).float()
    factor = R.head_gram_factor(w)
    got = R.svd_ratio_through_head(hid, k=4, factor=factor)
    torch.testing.assert_close(got, R.svd_ratio(hid @ w.T, 4, method="exact"), rtol=1e-5, atol=0)
    got16 = R.svd_ratio_through_head(hid.bfloat16(), k=4, factor=factor)
    assert got16.dtype == torch.float32
    torch.testing.assert_close(got16, R.svd_ratio(hid.bfloat16().float() @ w.T, 4), rtol=1e-5, atol=0)
    with pytest.raises(ValueError):
        R.svd_ratio_through_head(hid[:, :10], k=4, factor=factor)


# ----------------------------------------------------------------------------------- head_row_loss
@pytest.mark.parametrize("temperature", [2.0, 1.5])
@pytest.mark.parametrize("chunk_rows", [3, 50])
def test_head_row_loss_is_the_weighted_sums_with_the_gradient_formed_in_forward(temperature, chunk_rows):
    h, w, b, t_h, y = randn(10, 6, seed=31), randn(30, 6, seed=32), randn(30, seed=33), randn(10, 6, seed=34), \
        targets(10, 30)
    c = (0.7, 0.3, -0.2)
    x, xx = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    loss, *sums = head_row_loss(x, w, b, chunk_rows, c, targets=y, teacher_hidden=t_h, temperature=temperature,
                                top_k=4)
    expected = ref_sums(torch.nn.functional.linear(xx, w, b), y, torch.nn.functional.linear(t_h, w, b),
                        temperature, 4)
    for a, e in zip(sums, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
        assert not a.requires_grad  # the sums are for logging; the loss carries the gradient
    e_loss = sum(ci * e for ci, e in zip(c, expected, strict=True))
    torch.testing.assert_close(loss, e_loss, rtol=1e-10, atol=1e-10)
    # backward scales the gradient formed in forward by the incoming one (here 3)
    torch.testing.assert_close(torch.autograd.grad(3 * loss, x)[0], torch.autograd.grad(3 * e_loss, xx)[0],
                               rtol=1e-9, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda a: head_row_loss(a, w, b, chunk_rows, c, targets=y, teacher_hidden=t_h, top_k=4)[0], (x,))


@pytest.mark.parametrize("temperature", [2.0, 1.5])
@pytest.mark.parametrize(("c", "with_targets"), [((0.7, 0.0, 0.0), True), ((0.0, 0.3, 0.0), True),
                                                 ((0.0, 0.0, -0.2), True), ((0.7, 0.3, 0.0), True),
                                                 ((0.0, 0.3, -0.2), False), ((0.0, 0.0, 0.0), True)])
def test_head_row_loss_every_coefficient_pattern_against_autograd(temperature, c, with_targets):
    """Each path of the fused kernel (at T = 2 the halved logits, else the general one), float64: the loss
    and dL/dH against autograd through the materialised logits and the loop references."""
    h, w, b, t_h = randn(7, 5, seed=42), randn(25, 5, seed=43), randn(25, seed=44), randn(7, 5, seed=45)
    y = targets(7, 25, seed=1) if with_targets else None
    x, xx = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    loss, *sums = head_row_loss(x, w, b, 3, c, targets=y, teacher_hidden=t_h, temperature=temperature, top_k=4)
    z, t = torch.nn.functional.linear(xx, w, b), torch.nn.functional.linear(t_h, w, b)
    ce, kl, ent = ref_sums(z, targets(7, 25, seed=1), t, temperature, 4)
    expected = [ce if with_targets else torch.zeros((), dtype=z.dtype), kl, ent]
    for got, want in zip(sums, expected, strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-10)
    e_loss = sum(ci * e for ci, e in zip(c, expected, strict=True))
    torch.testing.assert_close(loss, e_loss.detach(), rtol=1e-10, atol=1e-10)
    # dL/dH against autograd (with every coefficient 0 both are exactly zero)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(e_loss, xx)[0],
                               rtol=1e-9, atol=1e-11)


def test_head_row_loss_zero_coefficients_tensor_coefficient_and_no_vocab_sized_tensor():
    h, w, y = randn(16, 8, seed=35).float(), randn(64, 8, seed=36).float(), targets(16, 64)
    x = h.clone().requires_grad_(True)
    with _Float32Sizes() as mode:
        loss, ce, kl, ent = head_row_loss(x, w, None, 2, (torch.tensor(0.25), 0.0, 0.0), targets=y,
                                          teacher_hidden=h + 0.1, top_k=5)
        loss.backward()
    assert mode.largest <= 64 * 8  # chunks are 2 x 64; nothing (M, V) = 16 x 64 is ever built
    sums = row_term_sums(h @ w.T, 2, targets=y, teacher=(h + 0.1) @ w.T, top_k=5)
    for a, b in zip((ce, kl, ent), sums, strict=True):  # a zero coefficient still reports its sum
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    xx = h.clone().requires_grad_(True)
    ce_only = row_term_sums(xx @ w.T, 2, targets=y)[0] * 0.25  # ...but adds nothing to the gradient
    torch.testing.assert_close(loss, ce_only, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, torch.autograd.grad(ce_only, xx)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="frozen"):
        head_row_loss(x, w.clone().requires_grad_(True), None, 2, (1.0, 0.0, 0.0), targets=y)
    with pytest.raises(ValueError, match="coefficients"):
        head_row_loss(x, w, None, 2, (1.0, 0.0), targets=y)


@pytest.mark.parametrize(("teacher", "temperature", "chunks_alive"), [(False, 2.0, 1), (True, 2.0, 3), (True, 1.5, 3)])
def test_head_row_loss_keeps_at_most_three_vocabulary_chunks_alive(teacher, temperature, chunks_alive):
    """Counted from torch's CPU allocation records: the CE alone holds one (r, V) chunk at a time (the
    logits, turned into the softmax in place), with the teacher three (z, t and p, then e_u, p and the CE's
    softmax); the rest is a few (r,)-sized vectors and the (M, h) gradient. Chunk: 16 x 4096 float32 = 256 KiB.
    """
    from balora.bench.memory import step_tensor_rise_bytes

    m, h_dim, v, rows = 64, 8, 4096, 16
    h, w, y = randn(m, h_dim, seed=39).float(), randn(v, h_dim, seed=40).float(), targets(m, v)
    t_h = h + 0.05 * randn(m, h_dim, seed=41).float() if teacher else None
    x = h.clone().requires_grad_(True)
    chunk = rows * v * 4
    out = []
    rise = step_tensor_rise_bytes(lambda: out.append(head_row_loss(
        x, w, None, rows, (1.0, 0.5 if teacher else 0.0, -0.1), targets=y, teacher_hidden=t_h,
        temperature=temperature, top_k=8)))
    if rise is None:
        pytest.skip("this torch's profiler records no CPU memory events")
    assert chunks_alive * chunk <= rise < (chunks_alive + 0.5) * chunk, (rise / chunk)


def test_head_row_loss_teacher_equal_to_student_gives_exactly_zero_kl():
    h, w, y = randn(9, 6, seed=37).float(), randn(40, 6, seed=38).float(), targets(9, 40)
    x = h.clone().requires_grad_(True)
    loss, ce, kl, _ = head_row_loss(x, w, None, 4, (0.0, 1.0, 0.0), targets=y, teacher_hidden=h, temperature=2.0)
    assert kl.item() == 0.0 and loss.item() == 0.0
    loss.backward()  # d KL / d z = (softmax(z/T) - softmax(t/T)) / T = 0 at t = z
    assert x.grad.abs().max().item() < 1e-7
