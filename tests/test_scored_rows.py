"""The scored-rows NLG step: transformers' own loss and gradients, no (B, T, V) tensor, fallbacks."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from balora import regularizers as R
from balora.training.scored_rows import nlg_step_loss, nlg_step_terms, scored_forward, scored_head

V, H = 96, 24


def llama(tied: bool = False, seed: int = 0, **extra) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=0, tie_word_embeddings=tied, **extra)
    return LlamaForCausalLM(config)


def batch(b: int = 3, t: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (b, t), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # prompt
    labels[1, :2] = -100
    labels[1, -3:] = -100  # padding
    labels[2, 5] = -100
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named]), strict=True))


def assert_same_loss_and_grads(model, inputs, head, num_items=None, logits=True):
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    expected = model(**inputs, **extra).loss
    g_expected = grads(model, expected)
    rows = scored_forward(model, {**inputs, **extra}, head, logits=logits)
    got = nlg_step_terms(rows, None, head, {}, num_items_in_batch=num_items)["task"]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    g_got = grads(model, got)
    assert g_got.keys() == g_expected.keys() and len(g_got) > 0
    for name, g in g_expected.items():
        torch.testing.assert_close(g_got[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("num_items", [None, torch.tensor(31)])
def test_task_loss_and_gradients_equal_transformers(tied, num_items):
    model = llama(tied)
    head = scored_head(model)
    assert head is not None and head.weight is model.lm_head.weight and not head.frozen_linear
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert_same_loss_and_grads(model, batch(), head, num_items)


@pytest.mark.parametrize("tied", [False, True])
def test_frozen_head_hidden_rows_path_equals_transformers(tied):
    model = llama(tied)
    model.lm_head.requires_grad_(False)
    model.model.embed_tokens.requires_grad_(False)
    head = scored_head(model)
    assert head.frozen_linear
    assert_same_loss_and_grads(model, batch(), head, logits=False)
    assert_same_loss_and_grads(model, batch(), head, torch.tensor(40), logits=False)


@pytest.mark.parametrize("head_setting", ["frozen", "modules_to_save", "lora_target"])
def test_peft_models(head_setting):
    targets = ["q_proj", "v_proj"] + (["lm_head"] if head_setting == "lora_target" else [])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                        modules_to_save=["lm_head"] if head_setting == "modules_to_save" else None)
    model = get_peft_model(llama(), config)
    head = scored_head(model)
    assert head is not None and head.frozen_linear == (head_setting == "frozen")
    assert (head.weight is None) == (head_setting != "frozen")
    assert_same_loss_and_grads(model, batch(), head)
    if head.frozen_linear:
        assert_same_loss_and_grads(model, batch(), head, logits=False)


def test_gpt2_with_tied_head():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=H, n_layer=2, n_head=4, n_positions=32,
                                       bos_token_id=1, eos_token_id=1)).eval()  # eval: no dropout
    assert_same_loss_and_grads(model, batch(), scored_head(model))


@pytest.mark.parametrize("make, reason", [
    (lambda: llama(final_logit_softcapping=30.0), "final_logit_softcapping"),
    (lambda: llama(logit_scale=0.5), "logit_scale"),
    (lambda: __import__("conftest").tiny_bert(), "not a causal LM"),
])
def test_fallback_returns_none_with_one_info_line(make, reason, caplog):
    with caplog.at_level(logging.INFO, logger="balora"):
        assert scored_head(make()) is None
    lines = [r for r in caplog.records if r.name == "balora"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and reason in lines[0].getMessage()


def test_unknown_architecture_and_non_linear_head_fall_back(caplog):
    model = llama()
    model.config.model_type = "my-new-arch"
    with caplog.at_level(logging.INFO, logger="balora"):
        assert scored_head(model) is None
    model = llama()
    model.lm_head = torch.nn.Sequential(torch.nn.Linear(H, V))
    with caplog.at_level(logging.INFO, logger="balora"):
        assert scored_head(model) is None
    assert "not known" in caplog.records[0].getMessage() and "not a linear" in caplog.records[1].getMessage()


class _Shapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((tuple(t.shape), t.dtype))
        return out


def vocab_sized(shapes, numel):
    return [s for s, _ in shapes if V in s and torch.Size(s).numel() >= numel]


@pytest.mark.parametrize("logits", [True, False])
def test_no_batch_by_vocab_tensor_in_a_ba_lora_step(logits):
    model = get_peft_model(llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    inputs, head = batch(), scored_head(model)
    weights = {"consistency": 1.0, "diversity": 1.0, "svd": 1.0}
    b, t = inputs["labels"].shape
    m = int(R.valid_token_mask(inputs["labels"]).sum())
    assert m < b * t
    with _Shapes() as mode:
        with torch.no_grad(), model.disable_adapter():
            reference = scored_forward(model, inputs, head, logits=logits)
        terms = nlg_step_terms(scored_forward(model, inputs, head, logits=logits), reference, head, weights,
                               chunk_size=4)
        sum(terms.values()).backward()
    assert vocab_sized(mode.shapes, b * t * V) == []
    # beyond the head weight (V, h) and its views: the (M, V) logits rows, or 4-row chunks of them
    biggest = max(torch.Size(s).numel() for s, _ in mode.shapes if V in s and s not in ((V, H), (H, V)))
    assert biggest == (m * V if logits else 4 * V)
    with _Shapes() as mode:
        model(**inputs).loss.backward()
    assert vocab_sized(mode.shapes, b * t * V)  # the check can fail: the full forward has them


@pytest.mark.parametrize("logits", [True, False])
def test_step_terms_equal_the_row_regularizers(logits):
    model = get_peft_model(llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    inputs, head = batch(), scored_head(model)
    weights = {"consistency": 1.0, "diversity": 1.0, "svd": 1.0}
    with torch.no_grad(), model.disable_adapter():
        reference = scored_forward(model, inputs, head, logits=logits)
        teacher = R.gather_valid(model(**inputs).logits, inputs["labels"])
    terms = nlg_step_terms(scored_forward(model, inputs, head, logits=logits), reference, head, weights,
                           temperature=1.5, top_k=7, svd_k=3, svd_method="exact", chunk_size=4)
    rows = R.gather_valid(model(**inputs).logits, inputs["labels"])
    expected = {"task": model(**inputs).loss, "consistency": R.kl_rows(rows, teacher, 1.5),
                "diversity": -R.topk_entropy_rows(rows, 7), "svd": -R.svd_ratio(rows, 3, method="exact")}
    assert terms.keys() == expected.keys()
    lora = [p for p in model.parameters() if p.requires_grad]
    for name, value in terms.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
        for a, b in zip(torch.autograd.grad(value, lora, retain_graph=True),
                        torch.autograd.grad(expected[name], lora, retain_graph=True), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(), msg=name)
    assert terms["consistency"] > 1e-4  # the adapter is not a no-op, so the KL is a real check


def test_only_active_terms_and_zero_weight_terms_skipped():
    model = llama()
    inputs, head = batch(), scored_head(model)
    terms = nlg_step_terms(scored_forward(model, inputs, head), None, head, {"consistency": 1.0, "svd": 0.0})
    assert set(terms) == {"task"}  # no reference: no KL; zero weight: no SVD
    terms = nlg_step_terms(scored_forward(model, inputs, head), None, head, {"diversity": 0.3, "svd": 0.1})
    assert set(terms) == {"task", "diversity", "svd"}


@pytest.mark.parametrize("logits", [True, False])
def test_nothing_scored_gives_zero_terms_and_a_working_backward(logits):
    model = get_peft_model(llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    inputs, head = batch(), scored_head(model)
    inputs["labels"][:, 1:] = -100
    weights = {"consistency": 1.0, "diversity": 1.0, "svd": 1.0}
    with torch.no_grad(), model.disable_adapter():
        reference = scored_forward(model, inputs, head, logits=logits)
    student = scored_forward(model, inputs, head, logits=logits)
    assert student.hidden.shape == (0, H) and student.targets.shape == (0,)
    terms = nlg_step_terms(student, reference, head, weights)
    assert set(terms) == {"task", "consistency", "diversity", "svd"}
    assert all(value.item() == 0.0 for value in terms.values())
    sum(terms.values()).backward()
    lora = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or (torch.isfinite(g).all() and not g.any()) for g in lora)


def test_bf16_model_rows_upcast_in_the_loss():
    model = llama().to(torch.bfloat16)
    inputs, head = batch(), scored_head(model)
    rows = scored_forward(model, inputs, head)
    assert rows.logits.dtype == torch.bfloat16
    task = nlg_step_terms(rows, None, head, {})["task"]
    assert task.dtype == torch.float32
    torch.testing.assert_close(task, model(**inputs).loss.float(), rtol=1e-5, atol=1e-5)


def test_gram_factor_is_cached_and_follows_in_place_updates():
    model = llama()
    model.lm_head.requires_grad_(False)
    head = scored_head(model)
    first = head.gram_factor()
    assert head.gram_factor() is first
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    second = head.gram_factor()
    assert second is not first
    torch.testing.assert_close(second @ second.T, 4 * first @ first.T, rtol=1e-4, atol=1e-4)
    model.lm_head.requires_grad_(True)
    with pytest.raises(ValueError):
        head.gram_factor()


@pytest.mark.parametrize("num_items", [None, torch.tensor(40)])
def test_step_loss_hidden_rows_equals_the_weighted_terms_on_logits(num_items):
    """nlg_step_loss on hidden rows (gradient formed in the forward) against nlg_step_terms on logits rows,
    combined by hand: value and every LoRA gradient, with the trainer's scales."""
    model = get_peft_model(llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    inputs, head = batch(), scored_head(model)
    assert head.frozen_linear
    weights = {"consistency": 0.6, "diversity": 0.4, "svd": 0.3}
    scales = {"task_scale": 2.0, "term_scale": 0.5}
    options = {"temperature": 2.0, "top_k": 7, "svd_k": 3, "svd_method": "exact", "num_items_in_batch": num_items}
    with torch.no_grad(), model.disable_adapter():
        ref_hidden = scored_forward(model, inputs, head, logits=False)
        ref_logits = scored_forward(model, inputs, head, logits=True)
    with _Shapes() as mode:
        loss, task, terms = nlg_step_loss(scored_forward(model, inputs, head, logits=False), ref_hidden, head,
                                          weights, chunk_size=4, **scales, **options)
    # beyond the head weight (V, h) and its views: chunks of 4 rows only, no (M, V) rows
    assert max(torch.Size(s).numel() for s, _ in mode.shapes if V in s and s not in ((V, H), (H, V))) == 4 * V
    parts = nlg_step_terms(scored_forward(model, inputs, head), ref_logits, head, weights, **options)
    expected = 2.0 * parts["task"] + 0.5 * sum(weights[k] * parts[k] for k in weights)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(task, 2.0 * parts["task"], rtol=1e-5, atol=1e-6)
    assert terms.keys() == weights.keys() and not task.requires_grad
    for name in weights:
        torch.testing.assert_close(terms[name], parts[name], rtol=1e-5, atol=1e-6, msg=name)
    lora = [p for p in model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(loss, lora), torch.autograd.grad(expected, lora), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    assert parts["consistency"] > 1e-4
