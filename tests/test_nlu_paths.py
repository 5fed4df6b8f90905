"""BA-LoRA's NLU paths against formulas written here, independently of balora.regularizers.

A regression head (one output: the consistency term normalises across the batch) and a decoder ``score``
head (the pooled vector is the last real token's hidden state), and the NLU SVD term against the
eigenvalues of the Gram matrix in float64 (not the ``svdvals`` the code calls).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import VOCAB, tiny_bert
from datasets import Dataset
from transformers import LlamaConfig, LlamaForSequenceClassification, TrainingArguments

import balora
from balora import regularizers as R
from balora.training import BALoRAConfig
from balora.training.terms import capture_head_input

WEIGHTS = {"consistency_weight": 0.7, "diversity_weight": 0.3, "svd_weight": 0.2}


def _svd_ratio_from_gram(z: np.ndarray, k: int) -> float:
    """sum of the top-k singular values over their total, from the eigenvalues of Z^T Z (float64)."""
    eig = np.clip(np.linalg.eigvalsh(z.T @ z), 0.0, None)
    sigma = np.sort(np.sqrt(eig))[::-1]
    return float(sigma[:k].sum() / sigma.sum())


def _diversity(z: torch.Tensor) -> torch.Tensor:
    centred = z - z.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (z.shape[0] - 1)
    off = cov - torch.diag(torch.diag(cov))
    return (off**2).sum() / z.shape[1]


def _consistency(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    s = student / student.norm(dim=1, keepdim=True)
    t = teacher / teacher.norm(dim=1, keepdim=True)
    return ((s - t) ** 2).mean(dim=1).mean()


@pytest.mark.parametrize("k", [1, 3])
def test_nlu_svd_equals_the_gram_eigenvalue_formula_in_value_and_gradient(k):
    z = torch.randn(9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    value = R.nlu_svd(z, k=k)
    assert value.item() == pytest.approx(-_svd_ratio_from_gram(z.numpy(), k), abs=1e-10)
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(R.nlu_svd(z, k=k), z)
    numeric = np.zeros(z.shape)
    base = z.detach().numpy()
    eps = 1e-6
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            up, down = base.copy(), base.copy()
            up[i, j] += eps
            down[i, j] -= eps
            numeric[i, j] = -(_svd_ratio_from_gram(up, k) - _svd_ratio_from_gram(down, k)) / (2 * eps)
    np.testing.assert_allclose(grad.numpy(), numeric, atol=1e-6)


def _trainer(model, rows, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=len(rows["labels"]),
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    config = BALoRAConfig(preset="paper", **WEIGHTS)
    return balora.BALoRATrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), balora_config=config)


def _perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.default" in name:
                p.add_(0.1 * torch.randn_like(p))


def test_regression_head_terms_normalise_across_the_batch(tmp_path):
    torch.manual_seed(0)
    model = balora.adapt(tiny_bert(num_labels=1), method="ba-lora", r=4)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (6, 8), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randn(6, generator=g)}
    trainer = _trainer(model, {k: v.tolist() for k, v in batch.items()}, tmp_path)
    assert trainer.balora_info["nlu_target"] == "pooled"  # C = 1 <= k
    _perturb(model)
    model.train()
    for module in model.modules():  # no dropout: the independent forward below sees the same numbers
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    total = trainer.compute_loss(model, dict(batch))
    with capture_head_input(trainer._head) as seen, torch.no_grad():
        out = model(**batch)
    pooled = seen[-1].double()
    with balora.as_pretrained(model), torch.no_grad():
        teacher = model(**batch).logits
    assert out.logits.shape == (6, 1)
    # one output per example: normalise the batch's column (a per-example norm of a 1-vector is +-1)
    consistency = _consistency(out.logits.double().T, teacher.double().T)
    assert consistency > 1e-6
    expected = (out.loss.double() + 0.7 * consistency + 0.3 * _diversity(pooled)
                - 0.2 * _svd_ratio_from_gram(pooled.numpy(), 5))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_decoder_score_head_pools_the_last_real_token(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         num_labels=3)
    model = balora.adapt(LlamaForSequenceClassification(config), method="ba-lora", r=4)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (5, 9), generator=g)
    lengths = torch.tensor([9, 4, 6, 2, 7])
    mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # right padding with pad id 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (5,), generator=g)}
    trainer = _trainer(model, {k: v.tolist() for k, v in batch.items()}, tmp_path)
    assert trainer.balora_info["nlu_target"] == "pooled" and trainer._head_pools_last_token
    _perturb(model)
    model.train()
    total = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        with balora.as_pretrained(model):
            teacher = model(**batch).logits
    hidden = out.hidden_states[-1]
    pooled = hidden[torch.arange(5), lengths - 1].double()
    head = trainer._head
    torch.testing.assert_close(head(pooled.float()), out.logits)  # the model's own pooling is the same row
    expected = (out.loss.double() + 0.7 * _consistency(out.logits.double(), teacher.double())
                + 0.3 * _diversity(pooled) - 0.2 * _svd_ratio_from_gram(pooled.numpy(), 5))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
