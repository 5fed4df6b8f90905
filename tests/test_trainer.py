"""BALoRATrainer: the reference, the terms in the loss, schedules and logging (SPEC 2, 7)."""

from __future__ import annotations

import pytest
import torch
from conftest import MODEL_KINDS, bert_batch, llama_batch
from datasets import Dataset
from transformers import TrainingArguments

import balora
from balora import regularizers as R
from balora.methods import METHODS
from balora.training import BALoRAConfig, make_schedule
from balora.training.terms import nlu_target_rule, reference_logits


def _dataset(kind: str, n: int = 16) -> Dataset:
    make_batch = llama_batch if kind == "llama" else bert_batch
    batch = make_batch(batch=n, length=10, seed=3)
    return Dataset.from_dict({k: v.tolist() for k, v in batch.items()})


def _trainer(model, kind, tmp_path, config: BALoRAConfig, steps=4, **args):
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, learning_rate=5e-3,
        logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, **args,
    )
    return balora.BALoRATrainer(model=model, args=arguments, train_dataset=_dataset(kind), balora_config=config)


def _adapt(kind, method, **kw):
    keep = {"keep_reference": True} if method == "full" else {}
    return balora.adapt(MODEL_KINDS[kind][0](), method=method, r=4, **keep, **kw)


def _move_adapter(model) -> None:
    """Move the adapter away from the reference (L_CR != 0): noise on every lora_B."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.default" in name:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("method", METHODS)
def test_consistency_is_zero_at_step_zero_in_train_mode(model_kind, method):
    """Before any update the reference equals the student, dropout included (BERT has dropout)."""
    model = _adapt(model_kind, method)
    model.train()
    batch = MODEL_KINDS[model_kind][1]()
    task = "nlg" if model_kind == "llama" else "nlu"
    reference = reference_logits(model, batch)
    student = model(**batch).logits
    if task == "nlg":
        value = R.nlg_consistency(student, reference, batch["labels"])
    else:
        value = R.nlu_consistency(student, reference)
    assert abs(value.item()) < 1e-6


@pytest.mark.parametrize("method", ["lora", "pissa", "ba-lora", "dora", "dual-lora", "full"])
def test_as_pretrained_equals_original_model_after_training(model_kind, method, tmp_path):
    make, make_batch = MODEL_KINDS[model_kind]
    batch = make_batch()
    with torch.no_grad():
        original = make()(**batch).logits
    model = _adapt(model_kind, method, **({"warmup_steps": 1} if method == "dual-lora" else {}))
    _trainer(model, model_kind, tmp_path, BALoRAConfig(preset="official")).train()
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
        with balora.as_pretrained(model):
            reference = model(**batch).logits
        after = model(**batch).logits
    assert (trained - original).abs().max() > 1e-3, "training did not change the model"
    torch.testing.assert_close(reference, original, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, trained, atol=0, rtol=0)  # the context restores the trained model


def test_loss_is_task_plus_weighted_terms_and_terms_reach_gradients(tmp_path):
    model = _adapt("llama", "ba-lora")
    config = BALoRAConfig(preset="paper", consistency_weight=0.5, diversity_weight=0.3, svd_weight=0.2)
    trainer = _trainer(model, "llama", tmp_path, config)
    trainer.state.max_steps = 4
    batch = llama_batch(batch=4, length=10, seed=5)
    model.train()
    _move_adapter(model)  # away from the reference so L_CR != 0
    total = trainer.compute_loss(model, dict(batch))
    task = model(**batch).loss
    rows = R.gather_valid(model(**batch).logits, batch["labels"])
    with balora.as_pretrained(model), torch.no_grad():
        teacher = R.gather_valid(model(**batch).logits, batch["labels"])
    expected = task + 0.5 * R.kl_rows(rows, teacher) - 0.3 * R.topk_entropy_rows(rows) - 0.2 * R.svd_ratio(rows, 10)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    assert R.kl_rows(rows, teacher) > 1e-6
    # the regularizers change the gradient (unlike code where they cannot affect training)
    params = [p for p in model.parameters() if p.requires_grad]
    with_terms = torch.autograd.grad(total, params)
    without = torch.autograd.grad(model(**batch).loss, params)
    assert max((a - b).abs().max() for a, b in zip(with_terms, without, strict=True)) > 1e-6


def test_terms_are_logged_raw_and_weighted(tmp_path):
    model = _adapt("bert", "ba-lora")
    trainer = _trainer(model, "bert", tmp_path, BALoRAConfig(preset="paper", nlu_target="logits"))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for entry in logs:
        for term in ("consistency", "diversity", "svd"):
            assert entry[f"reg/{term}_weighted"] == pytest.approx(entry[f"reg/lambda_{term}"] * entry[f"reg/{term}"],
                                                                    rel=1e-4, abs=1e-9)
    assert logs[0]["reg/lambda_diversity"] == 4e-4  # NLU paper preset
    assert trainer.balora_info["nlu_target"] == "logits"


def test_plain_methods_have_no_terms_by_default(tmp_path):
    trainer = _trainer(_adapt("llama", "lora"), "llama", tmp_path, BALoRAConfig())
    assert not trainer.weight_schedule.any_active
    trainer.train()
    assert not any(k.startswith("reg/") for h in trainer.state.log_history for k in h)


def test_ablation_turns_single_terms_off(tmp_path):
    config = BALoRAConfig(preset="paper", consistency_weight=0, svd_weight=0)
    trainer = _trainer(_adapt("llama", "ba-lora"), "llama", tmp_path, config, steps=2)
    trainer.train()
    keys = {k for h in trainer.state.log_history for k in h if k.startswith("reg/")}
    assert keys == {"reg/diversity", "reg/diversity_weighted", "reg/lambda_diversity"}


def test_regularizer_scale_follows_gradient_accumulation(tmp_path):
    trainer = _trainer(_adapt("llama", "ba-lora"), "llama", tmp_path, BALoRAConfig(), gradient_accumulation_steps=2)
    trainer.current_gradient_accumulation_steps = 2
    # causal LMs take num_items_in_batch: the task loss is already normalised over the accumulated batch
    assert trainer._regularizer_scale(num_items_in_batch=torch.tensor(40)) == 0.5
    assert trainer._regularizer_scale(num_items_in_batch=None) == 1.0


def test_causal_lm_step_gradient_equals_the_formula_on_full_logits(tmp_path):
    """The step's loss (head at the scored rows, gradient formed in the forward, no (M, V) rows) against
    task + scale * sum λ_i term_i written on transformers' full logits: value and every trainable gradient,
    with gradient accumulation (num_items_in_batch and the 1/steps term scale)."""
    model = _adapt("llama", "ba-lora")
    config = BALoRAConfig(preset="paper", consistency_weight=0.5, diversity_weight=0.3, svd_weight=0.2)
    trainer = _trainer(model, "llama", tmp_path, config, gradient_accumulation_steps=2)
    trainer.state.max_steps, trainer.current_gradient_accumulation_steps = 4, 2
    assert trainer._scored_head.frozen_linear
    batch = llama_batch(batch=4, length=10, seed=7)
    model.train()
    _move_adapter(model)
    items = torch.tensor(50)
    total = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
    logits = model(**batch).logits
    task = model(**batch, num_items_in_batch=items).loss
    rows = R.gather_valid(logits, batch["labels"])
    with balora.as_pretrained(model), torch.no_grad():
        teacher = R.gather_valid(model(**batch).logits, batch["labels"])
    terms = 0.5 * R.kl_rows(rows, teacher) - 0.3 * R.topk_entropy_rows(rows) - 0.2 * R.svd_ratio(rows, 10)
    expected = task + 0.5 * terms  # the per-batch terms divided by the 2 accumulation steps
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(total, params), torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_nlu_target_rule():
    assert nlu_target_rule(3, BALoRAConfig()) == "pooled"
    assert nlu_target_rule(5, BALoRAConfig()) == "pooled"  # C <= k: SVD of the logits would be constant
    assert nlu_target_rule(6, BALoRAConfig()) == "logits"
    assert nlu_target_rule(3, BALoRAConfig(nlu_target="logits")) == "logits"
    assert nlu_target_rule(9, BALoRAConfig(nlu_svd_k=10)) == "pooled"


def test_pooled_representation_is_what_the_head_reads(tmp_path):
    model = _adapt("bert", "ba-lora")
    trainer = _trainer(model, "bert", tmp_path, BALoRAConfig(preset="paper"))
    assert trainer.balora_info["nlu_target"] == "pooled"
    batch = bert_batch()
    model.eval()
    from balora.training.terms import capture_head_input

    with capture_head_input(trainer._head) as seen, torch.no_grad():
        model(**batch)
        pooler = model.base_model.model.bert(input_ids=batch["input_ids"]).pooler_output
    torch.testing.assert_close(seen[-1], pooler)


def test_official_schedule_values():
    schedule = make_schedule("official", "nlg")
    at = lambda step: schedule.weights_at(step, 1000)  # noqa: E731
    assert at(0) == {"consistency": 0.025, "diversity": 0.0, "svd": 0.0}
    assert at(200)["diversity"] == 0.0
    assert at(225)["diversity"] == pytest.approx(0.0025)
    assert at(250)["svd"] == pytest.approx(0.005)
    assert at(500)["consistency"] == pytest.approx(0.025 * (0.1 + 0.9 * 0.5))
    assert at(1000)["consistency"] == pytest.approx(0.0025)


def test_paper_presets_and_bad_overrides():
    assert make_schedule("paper", "nlu").weights_at(0, 10) == {"consistency": 1e-4, "diversity": 4e-4, "svd": 1e-4}
    assert make_schedule("paper", "nlg").weights_at(7, 10) == {"consistency": 1e-4, "diversity": 3e-4, "svd": 1e-4}
    with pytest.raises(balora.ConfigError, match="must be a finite number >= 0"):
        make_schedule("paper", "nlg", {"svd": -1.0})
    with pytest.raises(balora.ConfigError, match="unknown regularizer preset"):
        BALoRAConfig(preset="strong")


def test_dual_lora_warmup_follows_the_optimizer_step(tmp_path):
    model = _adapt("llama", "dual-lora", warmup_steps=8)
    trainer = _trainer(model, "llama", tmp_path, BALoRAConfig(), steps=4)
    trainer.train()
    layer = next(m for m in model.modules() if hasattr(m, "lora_warmup"))
    assert float(layer.lora_warmup["default"]) == pytest.approx(3 / 8)  # set before the 4th step (step 3)


def test_causal_lm_step_uses_the_scored_rows_and_equals_the_models_loss(tmp_path):
    model = _adapt("llama", "lora")
    trainer = _trainer(model, "llama", tmp_path, BALoRAConfig())
    assert trainer._scored_head is not None
    batch = llama_batch(batch=4, length=10, seed=5)
    model.train()
    for items in (None, torch.tensor(11)):
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
        expected = model(**batch, **({} if items is None else {"num_items_in_batch": items})).loss
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


def test_a_head_that_post_processes_logits_falls_back_to_the_full_forward(tmp_path, caplog):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                          pad_token_id=0, final_logit_softcapping=5.0)
    model = balora.adapt(Gemma2ForCausalLM(config), method="ba-lora", r=4)
    with caplog.at_level("INFO", logger="balora"):
        trainer = _trainer(model, "llama", tmp_path, BALoRAConfig(preset="paper", consistency_weight=0.5))
    assert trainer._scored_head is None and "scored-rows head off" in caplog.text
    batch = llama_batch(batch=4, length=10, seed=5)
    model.train()
    _move_adapter(model)
    total = trainer.compute_loss(model, dict(batch))
    out = model(**batch)
    with balora.as_pretrained(model), torch.no_grad():
        teacher = model(**batch).logits
    expected = (out.loss + 0.5 * R.nlg_consistency(out.logits, teacher, batch["labels"])
                + 3e-4 * R.nlg_diversity(out.logits, batch["labels"]) + 1e-4 * R.nlg_svd(out.logits, batch["labels"]))
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
