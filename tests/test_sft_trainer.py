"""``balora.BALoRASFTTrainer`` (TRL's SFTTrainer + the BA-LoRA loss): the regularizer gradient on the adapter
is non-zero and equals ``BALoRATrainer``'s on the same batch and weights, and a run trains and logs."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

import balora
from balora.errors import ConfigError
from balora.models import tiny_model

trl = pytest.importorskip("trl")


def _data() -> Dataset:
    return Dataset.from_list([{"prompt": f"{a} plus {b} is", "completion": f" {a + b}"}
                              for a in range(5) for b in range(4)])


def _config(tmp_path, **extra):
    return trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, logging_steps=1,
                         report_to=[], use_cpu=True, max_length=32, save_strategy="no", learning_rate=1e-2,
                         dataloader_num_workers=0, **extra)


def _adapter_grads(trainer, model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    trainer.compute_loss(model, dict(batch)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_regularizer_gradient_is_nonzero_and_equals_balora_trainers(tmp_path, label_smoothing):
    """label_smoothing=0.1 takes the full-forward path, where TRL's own compute_loss would hand back logits
    recomputed without gradient."""
    base, tokenizer = tiny_model("llama", "causal-lm")
    model = balora.adapt(base, method="ba-lora", r=4)
    twin = copy.deepcopy(model)
    config = balora.BALoRAConfig(preset="paper")
    args = _config(tmp_path, label_smoothing_factor=label_smoothing)
    sft = balora.BALoRASFTTrainer(model=model, args=args, train_dataset=_data(), processing_class=tokenizer,
                                  balora_config=config)
    batch = sft.data_collator([sft.train_dataset[i] for i in range(4)])
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # completion-only loss
    plain = balora.BALoRATrainer(model=twin, args=args, processing_class=tokenizer, balora_config=config,
                                 data_collator=sft.data_collator)
    plain.state.max_steps = sft.state.max_steps = 100
    full_sft, full_plain = _adapter_grads(sft, model, batch), _adapter_grads(plain, twin, batch)
    assert full_sft.keys() == full_plain.keys() and full_sft
    for name in full_sft:
        torch.testing.assert_close(full_sft[name], full_plain[name], atol=1e-5, rtol=1e-5)
    task_only = balora.BALoRASFTTrainer(model=model, args=args, train_dataset=_data(), processing_class=tokenizer,
                                        balora_config=balora.BALoRAConfig(preset="none"))
    task_only.state.max_steps = 100
    task = _adapter_grads(task_only, model, batch)
    regularizer = {n: full_sft[n] - task[n] for n in full_sft}
    assert sum(g.abs().sum() for g in regularizer.values()) > 1e-4  # the terms do train the adapter


def test_sft_run_logs_terms_and_dual_lora_warms_up(tmp_path):
    base, tokenizer = tiny_model("llama", "causal-lm")
    model = balora.adapt(base, method="dual-lora", r=4, warmup_steps=2)
    trainer = balora.BALoRASFTTrainer(model=model, args=_config(tmp_path), train_dataset=_data(),
                                      processing_class=tokenizer, balora_config=balora.BALoRAConfig(preset="paper"))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all("reg/consistency" in entry and "reg/svd" in entry for entry in logs)
    warmup = [m.lora_warmup["default"].item() for m in model.modules() if hasattr(m, "lora_warmup")]
    assert warmup and all(value == 0.5 for value in warmup)  # the last step ran at step 1: min(1, 1 / 2)


def test_sft_options_the_regularizers_cannot_serve_are_one_line_errors(tmp_path):
    base, tokenizer = tiny_model("llama", "causal-lm")
    model = balora.adapt(base, method="ba-lora", r=4)
    with pytest.raises(ConfigError, match="'nll' loss only"):
        balora.BALoRASFTTrainer(model=model, args=_config(tmp_path, loss_type="dft"), train_dataset=_data(),
                                processing_class=tokenizer)
    with pytest.raises(ConfigError, match="pass no peft_config"):
        from peft import LoraConfig

        balora.BALoRASFTTrainer(model=model, args=_config(tmp_path), train_dataset=_data(),
                                processing_class=tokenizer, peft_config=LoraConfig())
