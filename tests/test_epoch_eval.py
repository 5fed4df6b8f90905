"""--epoch-eval: per-epoch test accuracy and label-noise memorisation, without changing what a run trains."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import write_sentiment_csv
from safetensors.torch import load_file

from balora.errors import ConfigError
from balora.experiment.data import load_experiment_data
from balora.experiment.evaluate import tokenize
from balora.experiment.run import build_trainer, run_training
from balora.experiment.settings import TrainSettings

KEYS = ("test_accuracy", "noisy_fit", "noisy_clean", "clean_train_accuracy")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "sentiment.csv", 80)


def _settings(tiny_dir, data_file, out, **extra) -> TrainSettings:
    # 64 training rows, 16 noisy; 4 steps per epoch; BERT's dropout is on, so the RNG matters
    values = {"model": str(tiny_dir), "dataset": str(data_file), "output": str(out), "method": "lora",
              "epochs": 2, "label_noise": 0.25, "batch_size": 16, "eval_batch_size": 8, "max_length": 16,
              "rank": 4, "learning_rate": 5e-3, "logging_steps": 2, "save_steps": 1000, "overwrite": True}
    return TrainSettings.from_dict({**values, **extra})


def _epoch_entries(out) -> list[dict]:
    history = json.loads((out / "log_history.json").read_text())
    return [h for h in history if "epoch_eval/test_accuracy" in h]


def test_noise_originals_are_the_labels_before_noise(tiny_dir, data_file, tmp_path):
    clean = load_experiment_data(_settings(tiny_dir, data_file, tmp_path, label_noise=0.0))
    noisy = load_experiment_data(_settings(tiny_dir, data_file, tmp_path))
    assert len(noisy.noise_indices) == 16 and clean.noise_originals == []
    before, after = clean.train["label"], noisy.train["label"]
    assert noisy.noise_originals == [before[i] for i in noisy.noise_indices]
    assert all(after[i] != before[i] for i in noisy.noise_indices)


def test_epoch_eval_changes_nothing_the_run_trains(tiny_dir, data_file, tmp_path):
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    run_training(_settings(tiny_dir, data_file, plain))
    metrics = run_training(_settings(tiny_dir, data_file, watched, epoch_eval=True))
    a = load_file(str(plain / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(watched / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert _epoch_entries(plain) == []
    losses = [[h["loss"] for h in json.loads((o / "log_history.json").read_text()) if "loss" in h]
              for o in (plain, watched)]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    entries = _epoch_entries(watched)
    assert [(e["epoch"], e["step"]) for e in entries] == [(1.0, 4), (2.0, 8)]
    for entry in entries:
        assert all(0.0 <= entry[f"epoch_eval/{k}"] <= 1.0 for k in KEYS)
        # two classes: a noisy row predicted as neither label is impossible
        assert entry["epoch_eval/noisy_fit"] + entry["epoch_eval/noisy_clean"] == pytest.approx(1.0)
    # the last epoch's end is the trained model: the same test rows give the same accuracy
    assert entries[-1]["epoch_eval/test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)


def test_epoch_eval_values_match_a_forward_pass_by_hand(tiny_dir, data_file, tmp_path):
    settings = _settings(tiny_dir, data_file, tmp_path, epochs=1, epoch_eval=True)
    data = load_experiment_data(settings)
    trainer, tokenizer = build_trainer(settings, data, tmp_path)
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "epoch_eval/noisy_fit" in h)
    model = trainer.model.eval()
    rows = tokenize(data.train, tokenizer, data.task, settings)
    with torch.no_grad():
        batch = tokenizer.pad({"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"]},
                              return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1).numpy()
    labels, noisy = np.asarray(data.train["label"]), np.asarray(data.noise_indices)
    clean = np.setdiff1d(np.arange(len(labels)), noisy)
    expected = {"noisy_fit": np.mean(predicted[noisy] == labels[noisy]),
                "noisy_clean": np.mean(predicted[noisy] == np.asarray(data.noise_originals)),
                "clean_train_accuracy": np.mean(predicted[clean] == labels[clean])}
    for key, value in expected.items():
        assert logged[f"epoch_eval/{key}"] == pytest.approx(value, abs=1e-6), key


def test_resume_at_an_epoch_boundary_evaluates_that_epoch(tiny_dir, data_file, tmp_path):
    """The checkpoint of step 4 is written before epoch 1's end is evaluated; the resumed run catches up."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_training(_settings(tiny_dir, data_file, whole, epoch_eval=True, save_steps=4))
    shutil.copytree(whole, resumed)
    for name in ("metrics.json", "log_history.json", "adapter"):
        path = resumed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-8")
    run_training(_settings(tiny_dir, data_file, resumed, epoch_eval=True, save_steps=4, overwrite=False,
                           resume=True))
    assert _epoch_entries(resumed) == _epoch_entries(whole)


def test_an_epoch_cut_short_by_a_signal_is_not_evaluated():
    from transformers import TrainerControl, TrainerState

    from balora.experiment.callbacks import EpochEvalCallback

    logged = []
    callback = EpochEvalCallback(None, None, [], [])
    callback.trainer = type("T", (), {"log": lambda self, values: logged.append(values)})()
    callback.measure = lambda: {"epoch_eval/test_accuracy": 0.5}
    for epoch, step, max_steps in ((1.5, 6, 16), (1.0, 4, 16), (2.5, 10, 10)):
        callback.on_epoch_end(None, TrainerState(epoch=epoch, global_step=step, max_steps=max_steps),
                              TrainerControl())
    assert len(logged) == 2  # the whole epoch and the end of a --max-steps run, not the part-epoch at 1.5


def test_epoch_eval_is_for_classification_only(tiny_dir, tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(20)))
    with pytest.raises(ConfigError, match="--epoch-eval applies to classification data only"):
        load_experiment_data(_settings(tiny_dir, path, tmp_path, label_noise=0.0, epoch_eval=True))
