"""Each peft internal balora relies on (balora.peft_compat) still behaves as balora assumes.

These fail loudly when a peft release changes the internal, naming what to update.
"""

from __future__ import annotations

import torch
from conftest import llama_batch, tiny_bert, tiny_llama
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

import balora
from balora import peft_compat
from balora.dual_lora import DualLoraConfig, DualLoraLinear
from balora.methods import INITIAL_ADAPTER


def test_routed_to_adapter_switches_the_forward_and_nothing_else():
    original = tiny_llama()
    batch = llama_batch()
    with torch.no_grad():
        expected = original(**batch).logits
    model = balora.adapt(tiny_llama(), method="pissa", r=4, pissa_niter=None)
    with torch.no_grad():
        for layer in model.modules():  # move the trained adapter away from its initial value
            if isinstance(layer, LoraLayer):
                layer.lora_B["default"].weight.add_(0.5)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    with peft_compat.routed_to_adapter(model, INITIAL_ADAPTER), torch.no_grad():
        assert all(layer.active_adapters == [INITIAL_ADAPTER] for layer in layers)
        routed = model(**batch).logits
    assert all(layer.active_adapters == ["default"] for layer in layers)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert torch.allclose(routed, expected, atol=1e-5), (routed - expected).abs().max()
    with torch.no_grad():
        assert (model(**batch).logits - expected).abs().max() > 1e-2  # back on the trained adapter


def test_routed_to_adapter_restores_after_an_exception():
    model = balora.adapt(tiny_llama(), method="pissa", r=4)
    try:
        with peft_compat.routed_to_adapter(model, INITIAL_ADAPTER):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert all(m.active_adapters == ["default"] for m in model.modules() if isinstance(m, LoraLayer))


def test_targeted_linears_matches_what_peft_then_wraps():
    base = tiny_llama()
    config = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    names = set(peft_compat.targeted_linears(base, config))
    assert "lm_head" not in names and any(n.endswith("q_proj") for n in names)
    model = balora.adapt(tiny_llama(), method="lora", r=4)
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == names
    listed = peft_compat.targeted_linears(tiny_bert(), LoraConfig(r=2, target_modules=["query", "value"]))
    assert len(listed) == 4 and all(n.endswith(("query", "value")) for n in listed)


def test_register_lora_layer_makes_peft_build_the_custom_layer():
    model = balora.adapt(tiny_llama(), method="dual-lora", r=4)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers and all(isinstance(m, DualLoraLinear) for m in layers)
    assert isinstance(DualLoraConfig(r=4), LoraConfig)


def test_buffer_dict_is_saved_with_the_adapter():
    model = balora.adapt(tiny_llama(), method="dual-lora", r=4)
    layer = next(m for m in model.modules() if isinstance(m, DualLoraLinear))
    assert isinstance(layer.lora_warmup, peft_compat.BufferDict)
    assert any("lora_warmup" in key for key in model.state_dict())
