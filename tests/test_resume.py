"""Nothing lost: exact resume, SIGTERM checkpoints, the NaN stop, pickle refusal."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import llama_batch, tiny_llama
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments

import balora
from balora.errors import NonFiniteLossError


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _run(method, out, stop_at=None, resume=False, steps=6):
    torch.manual_seed(0)
    model = balora.adapt(tiny_llama(), method, r=4, **({"warmup_steps": 4} if method == "dual-lora" else {}))
    data = Dataset.from_dict({k: v.tolist() for k, v in llama_batch(24, 10, seed=3).items()})
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, save_steps=3,
                             save_strategy="steps", report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
                             logging_steps=1, learning_rate=5e-3, lr_scheduler_type="cosine", warmup_steps=2)
    callbacks = [_StopAt(stop_at)] if stop_at else None
    trainer = balora.BALoRATrainer(model=model, args=args, train_dataset=data, callbacks=callbacks,
                                   balora_config=balora.BALoRAConfig(preset="official"))
    trainer.train(resume_from_checkpoint=resume or None)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}, trainer


@pytest.mark.parametrize("method", ["ba-lora", "dual-lora", "lora"])
def test_resume_gives_the_same_adapter_bit_for_bit(method, tmp_path):
    full, _ = _run(method, tmp_path / "full")
    _run(method, tmp_path / "half", stop_at=3)
    resumed, trainer = _run(method, tmp_path / "half", resume=True)
    assert trainer.state.global_step == 6
    for name, tensor in full.items():
        assert torch.equal(tensor, resumed[name]), name
    # the optimizer state and the λ schedule went on from the checkpoint, not from scratch
    logged = [h for h in trainer.state.log_history if "reg/lambda_consistency" in h]
    assert logged[-1]["step"] == 6


def test_resume_restores_the_checkpoints_pissa_residual(tmp_path, monkeypatch):
    """Resume with an SVD that came out differently (another seed): W_res and (B0, A0) come from the
    checkpoint, so the run continues as if the SVD had been identical."""
    full, _ = _run("ba-lora", tmp_path / "full")
    _run("ba-lora", tmp_path / "half", stop_at=3)
    original_adapt = balora.adapt

    def adapt_with_other_svd(model, method, **kw):
        torch.manual_seed(123)  # the randomized SVD draws other sketches
        return original_adapt(model, method, **kw)

    monkeypatch.setattr(balora, "adapt", adapt_with_other_svd)
    resumed, _ = _run("ba-lora", tmp_path / "half", resume=True)
    worst = max((full[n] - resumed[n]).abs().max().item() for n in full)
    assert worst < 1e-5, worst


def test_pissa_checkpoint_keeps_raw_adapter_and_initial_adapter(tmp_path):
    _run("ba-lora", tmp_path, stop_at=3)
    checkpoint = tmp_path / "checkpoint-3"
    assert (checkpoint / "balora_initial" / "adapter_model.safetensors").is_file()
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["r"] == 4  # raw, not the converted rank-2r export


def test_nonfinite_loss_stops_with_step_and_term(tmp_path):
    torch.manual_seed(0)
    model = balora.adapt(tiny_llama(), "ba-lora", r=4)
    data = Dataset.from_dict({k: v.tolist() for k, v in llama_batch(8, 10, seed=3).items()})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             disable_tqdm=True, use_cpu=True, save_strategy="no")
    trainer = balora.BALoRATrainer(model=model, args=args, train_dataset=data)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "down_proj.lora_B.default" in n).fill_(float("nan"))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(NonFiniteLossError, match=r"at step 0 \(bad term: task"):
        trainer.train()
    assert (tmp_path / "nonfinite_batch.safetensors").is_file()
    after = dict(model.named_parameters())
    for name, tensor in before.items():  # no update happened
        torch.testing.assert_close(after[name].detach(), tensor, equal_nan=True)


def test_adapter_with_pickle_weights_is_refused(tmp_path):
    model = balora.adapt(tiny_llama(), "lora", r=2)
    model.save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, tmp_path / "adapter_model.bin")
    with pytest.raises(balora.ModelError, match="pickle"):
        balora.load(tiny_llama(), tmp_path)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_that_resumes(tmp_path):
    from balora.models import tiny_model

    model, tokenizer = tiny_model("bert", "classification", num_labels=2)
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    with (tmp_path / "data.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([[f"word{i % 7} text {i}", i % 2] for i in range(400)])
    out = tmp_path / "run"
    command = [sys.executable, "-m", "balora.cli.main", "train", "--model", str(tmp_path / "tiny"),
               "--dataset", str(tmp_path / "data.csv"), "--method", "ba-lora", "--output", str(out),
               "--max-steps", "4000", "--batch-size", "4", "--max-length", "16", "--rank", "2",
               "--save-steps", "100000", "--logging-steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "config.yaml").is_file():
        time.sleep(0.2)
    time.sleep(2)  # set-up or the first steps: either way the run stops after a step, with a checkpoint
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "continue with --resume" in stderr
    checkpoints = list((out / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 0 < stopped_at < 4000
    resume = command[:]
    resume[resume.index("4000")] = str(stopped_at + 2)
    result = subprocess.run(resume + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["accuracy"] >= 0
    assert json.loads((out / "run_info.json").read_text())["global_steps"] == stopped_at + 2
