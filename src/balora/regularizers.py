"""The three BA-LoRA regularizers for NLU and NLG (design §2.2, §2.3 and §7).

Every public ``nlu_*`` / ``nlg_*`` function returns a float scalar to ADD to the loss with a positive
weight, so a quantity the paper maximises appears with a minus sign. Inputs may be bf16/fp16; they are
upcast to float32 (float64 stays float64) only after the scored rows are selected, so no (B, T, V)
float32 copy is ever made.

NLG terms work on the M "valid" rows: position t of the logits is valid when ``labels[:, t + 1] != -100``
(the causal shift; the last position never is). The row-level helpers (:func:`gather_valid`,
:func:`kl_rows`, :func:`topk_entropy_rows`, :func:`kl_entropy_rows`, :func:`svd_ratio`,
:func:`svd_ratio_through_head`) let a trainer gather once and reuse the rows
(:func:`balora.training.terms.nlg_terms` is the trainer's one assembly of them). The helpers return the
named, non-negative quantity (KL, entropy, ratio); only the six public terms apply the loss sign.

Memory: the KL and entropy run in one fused pass (:mod:`balora.row_terms`) over chunks of ``chunk_size``
rows (default: as many rows as fit in :data:`CHUNK_ELEMENTS` elements, :data:`CPU_CHUNK_ELEMENTS` on the
CPU), so only a few float32 (rows x V) chunk temporaries are alive; the custom autograd function
recomputes each chunk in backward instead of keeping M x V float32 probabilities, and keeps only the
(M, top_k) top-K indices. The SVD term reads the
rows in upcast column blocks of CHUNK_ELEMENTS (Gram matrix / range finder) and keeps only the small
detached basis for backward; through a frozen linear head (design §2.3) it needs only the (M, h) head inputs.
Outputs are float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .row_terms import compute_dtype as _compute_dtype
from .row_terms import row_term_sums

__all__ = [
    "AUTO_EXACT_MAX",
    "CHUNK_ELEMENTS",
    "CPU_CHUNK_ELEMENTS",
    "IGNORE_INDEX",
    "gather_valid",
    "head_gram_factor",
    "kl_entropy_rows",
    "kl_rows",
    "nlg_consistency",
    "nlg_diversity",
    "nlg_svd",
    "nlu_consistency",
    "nlu_diversity",
    "nlu_svd",
    "rows_per_chunk",
    "svd_ratio",
    "svd_ratio_through_head",
    "topk_entropy_rows",
    "topk_singular_sum",
    "valid_token_mask",
]

IGNORE_INDEX = -100
#: Element budget of one chunk on an accelerator (2**24 float32 = 64 MiB per temporary): 130 rows at
#: V = 128,256, so few kernel launches per step.
CHUNK_ELEMENTS = 2**24
#: The CPU's budget (8 MiB per float32 temporary, 65 rows at V = 32,000): small enough that glibc reuses
#: the temporaries from its heap, large enough for the head's row-chunk matmuls to run at speed. Two
#: back-to-back ``balora bench --model tiny --threads 1`` runs, 65- vs 32-row chunks: every method's step
#: is 10-17 % faster in 65-row ones (LoRA 220 vs 250 ms, BA-LoRA 374 vs 442 ms, Dual LoRA 254 vs 303 ms),
#: at 25-35 MiB more peak RSS for the methods with the most temporaries (BA-LoRA 259 vs 224 MiB).
CPU_CHUNK_ELEMENTS = 2**21
#: ``method="auto"`` uses the exact SVD while min(M, V) <= this, the randomized one above it. Measured on
#: one CPU thread (V = 49,152): exact 115 ms vs randomized 294 ms at M = 256, 564 vs 602 ms at M = 744; on a
#: GPU the M x M float64 eigh grows costly (design §6: 96.5 ms at M = 2,048), so 512 is a conservative switch.
AUTO_EXACT_MAX = 512
_TINY = 1e-12


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A zero (compute dtype) attached to ``x``'s graph: backward works and gives a zero gradient."""
    return x.sum().to(_compute_dtype(x)) * 0


def rows_per_chunk(chunk_size: int | None, width: int, device: torch.device | None = None) -> int:
    """``chunk_size`` checked, or by default as many rows of ``width`` as fit in the element budget of
    ``device`` (:data:`CPU_CHUNK_ELEMENTS` on the CPU, :data:`CHUNK_ELEMENTS` elsewhere)."""
    if chunk_size is None:
        budget = CPU_CHUNK_ELEMENTS if device is not None and torch.device(device).type == "cpu" else CHUNK_ELEMENTS
        return max(1, budget // max(1, width))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


# ----------------------------------------------------------------------------------------------- NLU (2.2)


def nlu_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_CR for NLU: (1/N) sum_n (1/C) || zF/||zF|| - zP/||zP|| ||^2 (design §2.2).

    ``student_logits`` and ``teacher_logits``: (N, C). Normalising makes the term scale invariant, so it
    keeps the direction of the pre-trained logits without fixing their temperature. The teacher is
    detached (the reference carries no gradient). A zero logit vector normalises to zero.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"expected two (N, C) tensors, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    dtype = _compute_dtype(student_logits)
    zf = F.normalize(student_logits.to(dtype), dim=-1, eps=_TINY)
    zp = F.normalize(teacher_logits.detach().to(dtype), dim=-1, eps=_TINY)
    return F.mse_loss(zf, zp, reduction="mean")  # mean over N*C = (1/N) sum_n (1/C) ||.||^2


def nlu_diversity(z: torch.Tensor) -> torch.Tensor:
    """L_DR for NLU: (1/D) sum_{i != j} Cov_ij^2, Cov = Zc^T Zc / (N - 1), Zc centred per column (2.2).

    ``z``: (N, D) batch representations. Penalising off-diagonal covariance decorrelates the dimensions.
    With N < 2 the covariance is undefined and the term is a graph-attached zero.
    """
    if z.dim() != 2:
        raise ValueError(f"expected (N, D), got {tuple(z.shape)}")
    n, d = z.shape
    if n < 2 or d == 0:
        return _zero_like_graph(z)
    zc = z.to(_compute_dtype(z))
    zc = zc - zc.mean(dim=0, keepdim=True)
    cov = zc.T @ zc / (n - 1)
    off = cov - torch.diag_embed(torch.diagonal(cov))  # masking avoids sum(all) - sum(diag) cancellation
    return off.pow(2).sum() / d


def nlu_svd(z: torch.Tensor, k: int = 5) -> torch.Tensor:
    """L_SVDR for NLU: - sum_{i<=k} sigma_i / sum_j sigma_j over the singular values of ``z`` (2.2).

    ``z``: (N, D), small, so the SVD is exact (``torch.linalg.svdvals``, whose gradient U diag(g) V^T stays
    finite at repeated or zero singular values). If ``k >= min(N, D)`` all singular values are kept and
    the term is the constant -1 (zero gradient). An all-zero ``z`` gives 0.
    """
    if z.dim() != 2:
        raise ValueError(f"expected (N, D), got {tuple(z.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= min(z.shape):
        return _zero_like_graph(z) - 1
    s = torch.linalg.svdvals(z.to(_compute_dtype(z)))
    return -s[:k].sum() / s.sum().clamp_min(_TINY)


# -------------------------------------------------------------------------------------- NLG rows (2.3)


def valid_token_mask(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, T) bool: True at logit position t when ``labels[:, t + 1] != ignore_index``.

    ``labels`` are the unshifted causal-LM labels (B, T); position t predicts token t + 1, so these are
    exactly the positions the task loss scores. The last position is never valid.
    """
    if labels.dim() != 2:
        raise ValueError(f"expected labels of shape (B, T), got {tuple(labels.shape)}")
    mask = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask


def gather_valid(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(M, V) rows of ``logits`` (B, T, V) at the valid positions, in the logits' own dtype (no upcast)."""
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits (B, T, V) and labels (B, T) disagree: {tuple(logits.shape)} "
                         f"vs {tuple(labels.shape)}")
    return logits[valid_token_mask(labels, ignore_index).to(logits.device)]


def kl_rows(student_rows: torch.Tensor, teacher_rows: torch.Tensor, temperature: float = 2.0,
            chunk_size: int | None = None) -> torch.Tensor:
    """T^2 * (1/M) sum_m KL(softmax(zP_m/T) || softmax(zF_m/T)) over (M, V) rows (L_CR, design §2.3).

    The teacher is detached. Log-sum-exp throughout, never log(softmax). M = 0 gives a graph-attached zero.
    """
    return kl_entropy_rows(student_rows, teacher_rows, temperature, top_k=0, chunk_size=chunk_size)[0]


def topk_entropy_rows(rows: torch.Tensor, top_k: int = 20, chunk_size: int | None = None) -> torch.Tensor:
    """(1/M) sum_m H(softmax(top_K(z_m))): mean entropy of the renormalised top-K distribution (>= 0).

    ``rows``: (M, V). Only the (M, K) top-K indices are kept for backward. K is capped at V.
    M = 0 gives a graph-attached zero.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return kl_entropy_rows(rows, None, top_k=top_k, chunk_size=chunk_size)[1]


def kl_entropy_rows(student_rows: torch.Tensor, teacher_rows: torch.Tensor | None, temperature: float = 2.0,
                    top_k: int = 20, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`kl_rows`, :func:`topk_entropy_rows`) in ONE chunked pass over the student's (M, V) rows.

    ``teacher_rows`` None skips the KL (returned as a graph-attached zero); ``top_k`` 0 skips the entropy.
    Both are unsigned (the loss terms are +KL and -entropy).
    """
    if student_rows.dim() != 2:
        raise ValueError(f"expected (M, V) rows, got {tuple(student_rows.shape)}")
    if teacher_rows is not None and teacher_rows.shape != student_rows.shape:
        raise ValueError(f"expected two (M, V) tensors, got {tuple(student_rows.shape)} "
                         f"and {tuple(teacher_rows.shape)}")
    m, v = student_rows.shape
    if m == 0:
        return _zero_like_graph(student_rows), _zero_like_graph(student_rows)
    rows = rows_per_chunk(chunk_size, v, student_rows.device)
    _, kl, ent = row_term_sums(student_rows, rows, teacher=teacher_rows, temperature=temperature, top_k=top_k)
    return kl * (temperature**2 / m), ent / m


def _col_blocks(z: torch.Tensor, dtype: torch.dtype):
    """Column blocks (start, block) of z (S, L), each upcast to ``dtype``: one block of temporaries at a time."""
    cols, start = max(1, CHUNK_ELEMENTS // max(1, z.shape[0])), 0
    for blk in z.split(cols, dim=1):  # split (not slicing): one cat in backward, no zero-filled copies
        yield start, blk.to(dtype)
        start += blk.shape[1]


@torch.no_grad()
def _top_basis(z: torch.Tensor, q: int, method: str, niter: int, generator: torch.Generator | None,
               dtype: torch.dtype) -> torch.Tensor:
    """(S, q) orthonormal basis of (an approximation of) the top-q left singular subspace of z (S, L), S <= L.

    exact: eigenvectors (float64 eigh) of the S x S Gram matrix. randomized: Halko-Martinsson-Tropp range
    finder with ``niter`` QR-stabilised power iterations. Products run over upcast column blocks.
    """
    s, length = z.shape
    if method == "exact":
        gram = torch.zeros(s, s, dtype=dtype, device=z.device)
        for _, blk in _col_blocks(z, dtype):
            gram.addmm_(blk, blk.T)
        return torch.linalg.eigh(gram.double()).eigenvectors[:, -q:].to(dtype)
    omega = torch.randn(length, q, dtype=dtype, device=z.device, generator=generator)
    y = torch.zeros(s, q, dtype=dtype, device=z.device)
    for j, blk in _col_blocks(z, dtype):
        y.addmm_(blk, omega[j : j + blk.shape[1]])
    basis = torch.linalg.qr(y).Q
    for _ in range(niter):
        right = torch.linalg.qr(torch.cat([blk.T @ basis for _, blk in _col_blocks(z, dtype)])).Q  # (L, q)
        y.zero_()
        for j, blk in _col_blocks(z, dtype):
            y.addmm_(blk, right[j : j + blk.shape[1]])
        basis = torch.linalg.qr(y).Q
    return basis


def topk_singular_sum(z: torch.Tensor, k: int, method: str = "auto", oversample: int = 20, niter: int = 4,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """sum_{i<=k} sigma_i(z) for z (M, V) of any float dtype (computed in float32 or float64), differentiable.

    Both methods find a DETACHED orthonormal basis Q (M x q) of the top singular subspace, then take the
    exact singular values of the small q x V matrix Q^T z. The gradient, Q U' V'^T, is the true U_k V_k^T
    when Q spans the top-k subspace (the Ky Fan sum is stationary in Q there), and never differentiates
    through eigh/QR, so it stays finite at repeated or zero singular values. Values are lower bounds.
    ``"exact"``: Q = top-k eigenvectors of the M x M Gram matrix (float64 eigh); matches float64 svdvals
    to float32 precision and is ~10x faster than ``torch.linalg.svdvals`` with gradient on wide matrices
    (CPU, 256..744 x 49,152). With TF32 matmuls enabled the Gram/range products lose precision.
    ``"randomized"``: q = k + ``oversample`` columns from a randomized range finder with ``niter`` power
    iterations, test matrix drawn from ``generator`` (default: torch's global RNG); cost O(M V q niter).
    ``"auto"``: exact while min(M, V) <= :data:`AUTO_EXACT_MAX` (or q >= min(M, V)), else randomized.
    The Gram/range products run over upcast column blocks, so no M x V float32 copy is made.
    """
    if method not in ("auto", "exact", "randomized"):
        raise ValueError(f"method must be 'auto', 'exact' or 'randomized', got {method!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dtype = _compute_dtype(z)
    if z.shape[0] > z.shape[1]:
        z = z.T  # singular values are transpose invariant; keep the basis on the short side
    short = z.shape[0]
    if k >= short:  # every singular value counts; the matrix is tiny
        return torch.linalg.svdvals(z.to(dtype)).sum()
    q = k + oversample
    if method == "auto":
        method = "exact" if short <= AUTO_EXACT_MAX else "randomized"
    if method == "exact" or q >= short:
        basis = _top_basis(z.detach(), k, "exact", niter, generator, dtype)
    else:
        basis = _top_basis(z.detach(), q, "randomized", niter, generator, dtype)
    # Q^T z over column blocks: autograd keeps only Q per block, not an upcast copy of z.
    small = torch.cat([basis.T @ blk for _, blk in _col_blocks(z, dtype)], dim=1)
    return torch.linalg.svdvals(small)[:k].sum()


def svd_ratio(z: torch.Tensor, k: int = 10, method: str = "auto", oversample: int = 20, niter: int = 4,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """sum_{i<=k} sigma_i(Z) / ||Z||_F for Z (M, V) rows (>= 0; design §2.3's L_SVDR is its negative).

    The Frobenius norm is exact (reduced in float32 without an upcast copy); see
    :func:`topk_singular_sum` for ``method``. The ratio is NOT capped at 1: with k >= rank(Z) it is
    ||Z||_* / ||Z||_F, between 1 and sqrt(rank). M = 0 gives a graph-attached zero.

    Accuracy of ``"randomized"`` against exact (relative value error / relative Frobenius error of the
    gradient, worst of 5 draws), measured on SmolLM2-135M logits of GSM-style text (V = 49,152, whose
    spectrum is one dominant direction then a slow decay, sigma_10/sigma_16 ~ 1.27), M = 256 and 744:
    oversample=20, niter=4 (the default): 1e-6 / 4e-3; oversample=15, niter=4: 2e-6 / 6e-3;
    oversample=5, niter=2 (torch.svd_lowrank-style q = k+5): 3e-3 / 4e-1, i.e. its gradient is poor.
    """
    if z.dim() != 2:
        raise ValueError(f"expected (M, V), got {tuple(z.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if z.shape[0] == 0 or z.shape[1] == 0:
        return _zero_like_graph(z)
    top = topk_singular_sum(z, k, method=method, oversample=oversample, niter=niter, generator=generator)
    return top / torch.linalg.vector_norm(z, dtype=_compute_dtype(z)).clamp_min(_TINY)


@torch.no_grad()
def head_gram_factor(head_weight: torch.Tensor, head_bias: torch.Tensor | None = None) -> torch.Tensor:
    """L (h', r) with L L^T = G = Wa^T Wa, Wa = [W | b] (V, h'): h' = h, or h + 1 with a bias (design §2.3).

    Then Z Z^T = Ha G Ha^T = (Ha L)(Ha L)^T for Z = H W^T + b and Ha = [H | 1], so Z (M, V) and the small
    Ha L (M, r) have the same singular values and Frobenius norm. G is accumulated over row blocks of W
    upcast to float32 (float64 stays float64), so no (V, h) float32 copy; cost V h'^2 once per head.
    L = Q diag(sqrt(lambda)) from G's float64 eigendecomposition rather than a Cholesky factor: G is only
    positive SEMI-definite (V < h, tied or collinear columns), where Cholesky fails. Eigenvalues at or
    below h' * eps * lambda_max are round-off of zero directions and are dropped (r = numerical rank);
    dropping them changes any sigma^2 by at most that amount. Compute once per frozen head and reuse.
    """
    if head_weight.dim() != 2 or (head_bias is not None and head_bias.shape != head_weight.shape[:1]):
        raise ValueError(f"expected a head weight (V, h) and bias (V,), got {tuple(head_weight.shape)} "
                         f"and {None if head_bias is None else tuple(head_bias.shape)}")
    dtype = _compute_dtype(head_weight)
    width = head_weight.shape[1] + (head_bias is not None)
    gram = torch.zeros(width, width, dtype=dtype, device=head_weight.device)
    rows = max(1, CHUNK_ELEMENTS // width)
    for start in range(0, head_weight.shape[0], rows):
        blk = head_weight[start : start + rows].to(dtype)
        if head_bias is not None:
            blk = torch.cat([blk, head_bias[start : start + rows].to(dtype)[:, None]], dim=1)
        gram.addmm_(blk.T, blk)
    lam, vec = torch.linalg.eigh(gram.double())
    keep = lam > width * torch.finfo(dtype).eps * lam[-1].clamp_min(_TINY)
    return (vec[:, keep] * lam[keep].sqrt()).to(dtype)


def svd_ratio_through_head(hidden_rows: torch.Tensor, head_weight: torch.Tensor | None = None,
                           head_bias: torch.Tensor | None = None, k: int = 10, factor: torch.Tensor | None = None,
                           method: str = "auto", oversample: int = 20, niter: int = 4,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`svd_ratio` of Z = hidden_rows @ W^T (+ b) without building Z (M, V) (design §2.3).

    ``hidden_rows`` (M, h): the frozen linear head's inputs at the scored rows (gradient flows to them);
    ``head_weight`` (V, h) / ``head_bias`` (V,), or ``factor`` = :func:`head_gram_factor` of them (pass it
    to avoid the V h^2 product each call). The value is exactly svd_ratio(Z) because Z and
    [H | 1] L share their singular values; the gradient w.r.t. H is that of svd_ratio(Z) by the chain rule
    through the constant L. The spectrum is taken by :func:`topk_singular_sum` on the (M, r) matrix with
    ``method`` etc., so it keeps that function's stability (a detached basis, never a gradient through
    eigh). The head gets no gradient: use it only when the head is frozen.
    """
    if factor is None:
        if head_weight is None:
            raise ValueError("svd_ratio_through_head needs head_weight or factor")
        factor = head_gram_factor(head_weight, head_bias)
    if hidden_rows.dim() != 2 or hidden_rows.shape[1] not in (factor.shape[0], factor.shape[0] - 1):
        raise ValueError(f"hidden rows (M, h) do not fit the head factor: {tuple(hidden_rows.shape)} vs "
                         f"{tuple(factor.shape)}")
    h = hidden_rows.shape[1]
    dtype = torch.promote_types(_compute_dtype(hidden_rows), factor.dtype)
    y = hidden_rows.to(dtype) @ factor[:h].to(dtype)
    if factor.shape[0] == h + 1:  # the bias row: [H | 1] L = H L[:h] + 1 L[h]
        y = y + factor[h].to(dtype)
    return svd_ratio(y, k=k, method=method, oversample=oversample, niter=niter, generator=generator)


# ------------------------------------------------------------------------------------------- NLG (2.3)


def nlg_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    temperature: float = 2.0, chunk_size: int | None = None) -> torch.Tensor:
    """L_CR for NLG: T^2 * mean over valid positions of KL(softmax(zP/T) || softmax(zF/T)) (design §2.3).

    ``student_logits``, ``teacher_logits``: (B, T, V), any float dtype; ``labels``: (B, T) unshifted.
    The teacher is detached. No valid position gives a graph-attached zero.
    """
    return kl_rows(gather_valid(student_logits, labels), gather_valid(teacher_logits, labels),
                   temperature=temperature, chunk_size=chunk_size)


def nlg_diversity(student_logits: torch.Tensor, labels: torch.Tensor, top_k: int = 20,
                  chunk_size: int | None = None) -> torch.Tensor:
    """L_DR for NLG: - mean over valid positions of H(softmax(top_K(zF))) (design §2.3).

    The entropy is MAXIMISED, hence the minus sign. ``student_logits`` (B, T, V); ``labels`` (B, T).
    """
    return -topk_entropy_rows(gather_valid(student_logits, labels), top_k=top_k, chunk_size=chunk_size)


def nlg_svd(student_logits: torch.Tensor, labels: torch.Tensor, k: int = 10, method: str = "auto",
            oversample: int = 20, niter: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """L_SVDR for NLG: - sum_{i<=k} sigma_i(Z_F) / ||Z_F||_F over the M valid rows (design §2.3).

    ``student_logits`` (B, T, V); ``labels`` (B, T). See :func:`svd_ratio` for ``method`` and its
    measured accuracy. Unlike the NLU term this is not -1 when k >= min(M, V) (the denominator is the
    Frobenius, not the nuclear norm): it is then -||Z||_* / ||Z||_F.
    """
    return -svd_ratio(gather_valid(student_logits, labels), k=k, method=method, oversample=oversample,
                      niter=niter, generator=generator)
