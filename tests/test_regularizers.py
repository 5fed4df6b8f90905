"""BA-LoRA regularizers (SPEC 2.2, 2.3, 7) against float64 references written straight from the formulas."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from balora import regularizers as R

IGN = -100


# ----------------------------------------------------------------------------- float64 references (loops)


def ref_nlu_consistency(zf, zp):
    n, c = zf.shape
    total = 0.0
    for i in range(n):
        a = zf[i] / torch.sqrt((zf[i] ** 2).sum())
        b = zp[i] / torch.sqrt((zp[i] ** 2).sum())
        total = total + ((a - b) ** 2).sum() / c
    return total / n


def ref_nlu_diversity(z):
    n, d = z.shape
    zc = z - z.sum(0) / n
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                total = total + ((zc[:, i] * zc[:, j]).sum() / (n - 1)) ** 2
    return total / d


def ref_nlu_svd(z, k):
    s = torch.linalg.svdvals(z)
    return -s[:k].sum() / s.sum()


def ref_positions(labels):
    b, t = labels.shape
    return [(i, j) for i in range(b) for j in range(t - 1) if labels[i, j + 1] != IGN]


def ref_nlg_consistency(zf, zp, labels, temp):
    pos = ref_positions(labels)
    total = 0.0
    for i, j in pos:
        p = torch.softmax(zp[i, j] / temp, -1)
        q = torch.softmax(zf[i, j] / temp, -1)
        total = total + (p * (torch.log(p) - torch.log(q))).sum()
    return temp**2 * total / len(pos)


def ref_nlg_diversity(zf, labels, top_k):
    pos = ref_positions(labels)
    total = 0.0
    for i, j in pos:
        p = torch.softmax(torch.sort(zf[i, j], descending=True).values[:top_k], -1)
        total = total - (p * torch.log(p)).sum()
    return -total / len(pos)


def ref_nlg_svd(zf, labels, k):
    z = torch.stack([zf[i, j] for i, j in ref_positions(labels)])
    return -torch.linalg.svdvals(z)[:k].sum() / torch.sqrt((z**2).sum())


# ----------------------------------------------------------------------------------------------- helpers


def make_labels(b=3, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 50, (b, t), generator=g)
    labels[0, :3] = IGN  # prompt
    labels[1, -2:] = IGN  # padding
    labels[2, 4] = IGN
    return labels


def value_and_grads(fn, *inputs, dtype=torch.float32):
    xs = [x.detach().to(dtype).requires_grad_(True) for x in inputs]
    out = fn(*xs)
    grads = torch.autograd.grad(out, xs, allow_unused=True)
    return out.detach().double(), [None if g is None else g.double() for g in grads]


def assert_matches(fn, ref, *inputs, rtol=1e-5, grad_rtol=1e-4, n_grad=None):
    """fn in float32 vs ref in float64: value (rtol) and gradients (relative to the largest entry)."""
    v32, g32 = value_and_grads(fn, *inputs)
    v64, g64 = value_and_grads(ref, *inputs, dtype=torch.float64)
    torch.testing.assert_close(v32, v64, rtol=rtol, atol=1e-7)
    for a, b in list(zip(g32, g64, strict=True))[:n_grad]:
        scale = b.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(a, b, rtol=grad_rtol, atol=grad_rtol * scale)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# --------------------------------------------------------------------------------------------------- NLU


def test_nlu_consistency_matches_reference():
    zf, zp = randn(8, 5, seed=1), randn(8, 5, seed=2)
    assert_matches(R.nlu_consistency, ref_nlu_consistency, zf, zp, n_grad=1)


def test_nlu_consistency_zero_when_equal_scale_invariant_positive_otherwise():
    zp = randn(6, 4, seed=3, scale=3).float()
    assert R.nlu_consistency(zp, zp).item() == pytest.approx(0.0, abs=1e-7)
    assert R.nlu_consistency(3 * zp, zp).item() == pytest.approx(0.0, abs=1e-7)
    assert R.nlu_consistency(zp + randn(6, 4, seed=4).float(), zp).item() > 1e-3


def test_nlu_consistency_teacher_gets_no_gradient():
    zf = randn(4, 3, seed=5).float().requires_grad_(True)
    zp = randn(4, 3, seed=6).float().requires_grad_(True)
    R.nlu_consistency(zf, zp).backward()
    assert zp.grad is None and zf.grad.abs().sum() > 0


def test_nlu_diversity_matches_reference():
    assert_matches(R.nlu_diversity, ref_nlu_diversity, randn(9, 6, seed=7, scale=2))


def test_nlu_diversity_zero_for_decorrelated_columns():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # uncorrelated columns
    assert R.nlu_diversity(z).item() == pytest.approx(0.0, abs=1e-7)
    assert R.nlu_diversity(torch.cat([z[:, :1], z[:, :1]], 1)).item() > 0.1  # identical columns


@pytest.mark.parametrize("k", [1, 2, 5])
def test_nlu_svd_matches_reference(k):
    assert_matches(lambda z: R.nlu_svd(z, k), lambda z: ref_nlu_svd(z, k), randn(8, 7, seed=8 + k))


def test_nlu_svd_is_minus_one_when_k_covers_all_singular_values():
    z = randn(4, 3, seed=9).float().requires_grad_(True)
    out = R.nlu_svd(z, k=3)
    assert out.item() == -1.0
    out.backward()
    assert torch.count_nonzero(z.grad) == 0
    assert R.nlu_svd(z, k=2).item() > -1.0  # below min(N, D) it is a real ratio


# ------------------------------------------------------------------------------------------- NLG: masks


def test_valid_token_mask_is_the_causal_shift():
    labels = torch.tensor([[IGN, IGN, 5, 6, IGN], [1, 2, 3, IGN, IGN]])
    expected = torch.tensor([[False, True, True, False, False], [True, True, False, False, False]])
    assert torch.equal(R.valid_token_mask(labels), expected)
    logits = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    assert torch.equal(R.gather_valid(logits, labels), logits[expected])


NLG_FUNCS = {
    "consistency": lambda zf, zp, lab: R.nlg_consistency(zf, zp, lab),
    "diversity": lambda zf, zp, lab: R.nlg_diversity(zf, lab, top_k=4),
    "svd": lambda zf, zp, lab: R.nlg_svd(zf, lab, k=3),
}


@pytest.mark.parametrize("name", list(NLG_FUNCS))
def test_nlg_terms_ignore_invalid_positions(name):
    fn, labels = NLG_FUNCS[name], make_labels()
    zf, zp = randn(3, 7, 11, seed=10).float(), randn(3, 7, 11, seed=11).float()
    base = fn(zf, zp, labels)
    for i, j in [(0, 0), (0, 1), (1, 5), (1, 6), (2, 3), (2, 6)]:  # invalid: labels[i, j + 1] == -100 or last
        assert (i, j) not in ref_positions(labels)
        zf2, zp2 = zf.clone(), zp.clone()
        zf2[i, j] += 5 * torch.arange(11.0)
        zp2[i, j] -= 3 * torch.arange(11.0)
        torch.testing.assert_close(fn(zf2, zp2, labels), base)
    zf2 = zf.clone()
    zf2[0, 2] += 5 * torch.arange(11.0)  # a valid one (labels[0, 3] is scored)
    assert abs(fn(zf2, zp, labels).item() - base.item()) > 1e-4
    x = zf.clone().requires_grad_(True)
    fn(x, zp, labels).backward()
    valid = R.valid_token_mask(labels)
    assert torch.count_nonzero(x.grad[~valid]) == 0 and torch.count_nonzero(x.grad[valid]) > 0


@pytest.mark.parametrize("name", list(NLG_FUNCS))
def test_nlg_no_valid_position_gives_zero_and_backward_works(name):
    labels = torch.full((2, 5), IGN)
    labels[:, 0] = 3  # only position -1 would predict it: nothing is scored
    zf = randn(2, 5, 9, seed=12).float().requires_grad_(True)
    out = NLG_FUNCS[name](zf, randn(2, 5, 9, seed=13).float(), labels)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.isfinite(zf.grad).all() and torch.count_nonzero(zf.grad) == 0


# ------------------------------------------------------------------------------------- NLG: vs reference


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_nlg_consistency_matches_reference(chunk_size):
    labels = make_labels()
    zf, zp = randn(3, 7, 13, seed=14, scale=3), randn(3, 7, 13, seed=15, scale=3)
    assert_matches(lambda a, b: R.nlg_consistency(a, b, labels, chunk_size=chunk_size),
                   lambda a, b: ref_nlg_consistency(a, b, labels, 2.0), zf, zp, n_grad=1)
    assert_matches(lambda a, b: R.nlg_consistency(a, b, labels, temperature=0.7, chunk_size=chunk_size),
                   lambda a, b: ref_nlg_consistency(a, b, labels, 0.7), zf, zp, n_grad=1)


def test_nlg_consistency_gradcheck_float64():
    labels = make_labels()
    zp = randn(3, 7, 6, seed=16)
    zf = randn(3, 7, 6, seed=17).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: R.nlg_consistency(z, zp, labels, chunk_size=3), (zf,))


def test_nlg_consistency_zero_when_equal_and_no_teacher_gradient():
    labels = make_labels()
    z = randn(3, 7, 10, seed=18, scale=4).float()
    assert R.nlg_consistency(z, z, labels).item() == pytest.approx(0.0, abs=1e-6)
    zf, zp = z.clone().requires_grad_(True), (z + 1).requires_grad_(True)  # shift: same softmax
    out = R.nlg_consistency(zf, zp, labels)
    assert out.item() == pytest.approx(0.0, abs=1e-6)
    zp2 = randn(3, 7, 10, seed=19).float().requires_grad_(True)
    out = R.nlg_consistency(zf, zp2, labels)
    assert out.item() > 1e-3
    out.backward()
    assert zp2.grad is None and zf.grad.abs().sum() > 0


@pytest.mark.parametrize("top_k", [2, 4, 20])
def test_nlg_diversity_matches_reference(top_k):
    labels = make_labels()
    assert_matches(lambda z: R.nlg_diversity(z, labels, top_k=top_k, chunk_size=3),
                   lambda z: ref_nlg_diversity(z, labels, top_k), randn(3, 7, 12, seed=20, scale=2))


def test_nlg_diversity_top1_is_zero():
    labels = make_labels()
    assert R.nlg_diversity(randn(3, 7, 12, seed=20).float(), labels, top_k=1).item() == 0.0


def test_nlg_diversity_descent_step_raises_topk_entropy():
    labels = make_labels()
    z = randn(3, 7, 30, seed=21, scale=3).float().requires_grad_(True)
    loss = R.nlg_diversity(z, labels, top_k=5)
    loss.backward()
    entropy_before = -loss.item()
    entropy_after = -R.nlg_diversity(z.detach() - 0.1 * z.grad, labels, top_k=5).item()
    assert entropy_before > 0 and entropy_after > entropy_before + 1e-4


@pytest.mark.parametrize("k", [1, 3, 10])
def test_nlg_svd_exact_matches_reference(k):
    labels = make_labels()
    assert_matches(lambda z: R.nlg_svd(z, labels, k=k, method="exact"),
                   lambda z: ref_nlg_svd(z, labels, k), randn(3, 7, 40, seed=22 + k), grad_rtol=3e-4)


def test_nlg_svd_with_k_beyond_rank_is_nuclear_over_frobenius():
    labels = make_labels()  # 14 valid rows, so k = 20 keeps every singular value
    z = randn(3, 7, 30, seed=23)
    assert_matches(lambda x: R.nlg_svd(x, labels, k=20), lambda x: ref_nlg_svd(x, labels, 20), z)
    assert R.nlg_svd(z.float(), labels, k=20).item() < -1.5  # not the NLU constant -1


def logit_like(m, v, seed):
    """U diag(s) V^T with the singular-value profile of real SmolLM2 logits: one dominant direction, slow tail."""
    g = torch.Generator().manual_seed(seed)
    head = torch.tensor([1, .347, .143, .093, .086, .073, .069, .065, .061, .057, .054, .052, .049, .048, .046])
    s = torch.cat([head, 0.046 * (torch.arange(16.0, m + 1) / 15) ** -0.5]).double() * 100
    u = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
    w = torch.linalg.qr(torch.randn(v, m, generator=g, dtype=torch.float64)).Q
    return (u * s) @ w.T


def test_randomized_svd_agrees_with_exact_within_stated_tolerance():
    # Stated tolerance (svd_ratio docstring): value 1e-5 relative, gradient 2e-2 relative Frobenius.
    for seed in range(3):
        z = logit_like(64, 600, seed).float()
        ve, ge = value_and_grads(lambda x: R.svd_ratio(x, 10, method="exact"), z)
        gen = torch.Generator().manual_seed(seed)
        vr, gr = value_and_grads(lambda x, g=gen: R.svd_ratio(x, 10, method="randomized", generator=g), z)
        assert abs(vr - ve) / ve < 1e-5
        assert (gr[0] - ge[0]).norm() / ge[0].norm() < 2e-2
    # the tolerance is not vacuous: a crude sketch (no oversampling, no power iteration) misses it
    gen = torch.Generator().manual_seed(0)
    vr, gr = value_and_grads(lambda x: R.svd_ratio(x, 10, "randomized", oversample=0, niter=0, generator=gen), z)
    assert abs(vr - ve) / ve > 1e-5 and (gr[0] - ge[0]).norm() / ge[0].norm() > 2e-2


def test_svd_auto_picks_exact_for_small_and_randomized_for_large(monkeypatch):
    z = logit_like(64, 600, 0).float()
    exact = R.svd_ratio(z, 10, method="exact")
    crude = dict(oversample=0, niter=0, generator=torch.Generator().manual_seed(0))
    assert R.svd_ratio(z, 10, method="auto", **crude).item() == pytest.approx(exact.item(), rel=1e-6)
    monkeypatch.setattr(R, "AUTO_EXACT_MAX", 32)
    assert abs(R.svd_ratio(z, 10, method="auto", **crude).item() - exact.item()) > 1e-5 * exact.item()


# ------------------------------------------------------------------------------ dtypes, chunks, memory


@pytest.mark.parametrize("name", list(NLG_FUNCS))
def test_bf16_logits_give_the_float32_result(name):
    labels = make_labels()
    zf = randn(3, 7, 16, seed=24, scale=2).bfloat16()
    zp = randn(3, 7, 16, seed=25, scale=2).bfloat16()
    out = NLG_FUNCS[name](zf, zp, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, NLG_FUNCS[name](zf.float(), zp.float(), labels), rtol=1e-5, atol=1e-6)
    x = zf.clone().requires_grad_(True)
    NLG_FUNCS[name](x, zp, labels).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("fn", [
    lambda zf, zp, lab, c: R.nlg_consistency(zf, zp, lab, chunk_size=c),
    lambda zf, zp, lab, c: R.nlg_diversity(zf, lab, top_k=3, chunk_size=c),
])
def test_chunked_equals_unchunked(fn):
    labels = make_labels()
    zf, zp = randn(3, 7, 9, seed=26).float(), randn(3, 7, 9, seed=27).float()
    results = []
    for c in (1, 4, 10_000):
        x = zf.clone().requires_grad_(True)
        out = fn(x, zp, labels, c)
        out.backward()
        results.append((out.detach(), x.grad))
    for out, grad in results[:-1]:
        torch.testing.assert_close(out, results[-1][0])
        torch.testing.assert_close(grad, results[-1][1])


class _Float32Sizes(TorchDispatchMode):
    """Largest float32 tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", list(NLG_FUNCS))
def test_no_float32_copy_of_the_valid_rows(name, monkeypatch):
    monkeypatch.setattr(R, "CHUNK_ELEMENTS", 64)  # column blocks of the SVD
    labels = make_labels(4, 8)
    v = 64
    zf = randn(4, 8, v, seed=28).bfloat16().requires_grad_(True)
    zp = randn(4, 8, v, seed=29).bfloat16()
    fns = {"consistency": lambda: R.nlg_consistency(zf, zp, labels, chunk_size=2),
           "diversity": lambda: R.nlg_diversity(zf, labels, top_k=4, chunk_size=2),
           "svd": lambda: R.nlg_svd(zf, labels, k=2, method="exact")}
    saved = []
    with _Float32Sizes() as mode, torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() if t.dtype == torch.float32 else 0) or t, lambda t: t):
        fns[name]().backward()
    m = int(R.valid_token_mask(labels).sum())
    assert m == 23 and m * v > max(2 * v, m * m)
    assert 0 < mode.largest <= max(2 * v, m * m)  # one 2-row chunk, or the M x M Gram matrix; never M x V
    assert max(saved, default=0) <= 2 * v  # nothing float32 of size M x V kept for backward


def test_the_trainers_nlg_assembly_equals_the_individual_functions():
    from balora.training import BALoRAConfig
    from balora.training.terms import nlg_terms, rows_of_logits

    labels = make_labels()
    labels = torch.where(labels >= 0, labels % 15, labels)  # token ids inside the 15-word vocabulary
    zf, zp = randn(3, 7, 15, seed=30).float(), randn(3, 7, 15, seed=31).float()
    config = BALoRAConfig(top_k=5, nlg_svd_k=4, svd_method="exact")
    weights = {"consistency": 1.0, "diversity": 1.0, "svd": 1.0}
    terms = nlg_terms(rows_of_logits(zf, labels), rows_of_logits(zp, labels), None, weights, config)
    torch.testing.assert_close(terms["consistency"], R.nlg_consistency(zf, zp, labels))
    torch.testing.assert_close(terms["diversity"], R.nlg_diversity(zf, labels, top_k=5))
    torch.testing.assert_close(terms["svd"], R.nlg_svd(zf, labels, k=4, method="exact"))
    ce = torch.nn.functional.cross_entropy(zf[:, :-1].reshape(-1, 15), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(terms["task"], ce)
    only_svd = nlg_terms(rows_of_logits(zf, labels), None, None, {"consistency": 1.0, "diversity": 0, "svd": 1}, config)
    assert set(only_svd) == {"task", "svd"}  # no reference: no consistency term
