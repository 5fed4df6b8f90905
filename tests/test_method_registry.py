"""The method registry: a new method is one class plus one registration line, and then trains."""

from __future__ import annotations

import pytest
import torch
from conftest import llama_batch, tiny_llama
from peft.tuners.lora import LoraLayer
from transformers import TrainingArguments

import balora
from balora.errors import ConfigError
from balora.methods import AdapterMethod, get_method, method_names, method_of
from balora.methods.base import _REGISTRY
from balora.training import BALoRAConfig, BALoRATrainer


class HalfScaleLora(AdapterMethod):
    """A toy method: LoRA with alpha = r/2, regularized by default like BA-LoRA."""

    name = "toy-half-lora"

    def config_fields(self, **options):
        return options

    def peft_config(self, model, r=16, lora_alpha=None, target_modules="all-linear", **options):
        return super().peft_config(model, r, r / 2, target_modules, **options)

    def default_preset(self, auto_preset):
        return "official"


@pytest.fixture
def toy_method():
    balora.register_method(HalfScaleLora)
    yield get_method("toy-half-lora")
    _REGISTRY.pop("toy-half-lora")


def test_a_registered_method_adapts_and_trains(toy_method, tmp_path):
    assert "toy-half-lora" in method_names()
    model = balora.adapt(tiny_llama(), method="toy-half-lora", r=4)
    assert method_of(model) is toy_method
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["default"] == pytest.approx(0.5)
    batch = llama_batch(batch=4)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, learning_rate=1e-2, save_strategy="no", logging_steps=1)
    trainer = BALoRATrainer(model=model, args=args, train_dataset=rows, balora_config=BALoRAConfig())
    assert trainer.weight_schedule.consistency == pytest.approx(0.025)  # the toy method's default preset
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    # two steps: B moves off 0 in the first, then A gets a gradient through B
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert "reg/consistency" in trainer.state.log_history[0]
    with balora.as_pretrained(model), torch.no_grad():  # the inherited reference: disabling the adapter
        assert torch.allclose(model(**batch).logits, tiny_llama()(**batch).logits, atol=1e-5)
    model.save_pretrained(tmp_path / "adapter")
    loaded = balora.load(tiny_llama(), tmp_path / "adapter")
    assert method_of(loaded) is toy_method
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-5)


def test_unknown_and_nameless_methods_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of: lora, pissa"):
        get_method("nope")

    class Nameless(AdapterMethod):
        pass

    with pytest.raises(ConfigError, match="needs a class attribute `name`"):
        balora.register_method(Nameless)


def test_each_method_option_belongs_to_its_method():
    with pytest.raises(ConfigError, match="pissa_niter is an option of 'pissa' / 'ba-lora' only, not of 'dora'"):
        balora.adapt(tiny_llama(), method="dora", r=4, pissa_niter=2)
    assert get_method("dual-lora").reads >= {"r1", "r2", "dual_warmup_steps"}
    assert "pissa_niter" not in get_method("lora").reads
