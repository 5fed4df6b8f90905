"""Quantized bases (design §9): QLoRA for lora/dora/dual-lora, QPiSSA for pissa/ba-lora, on tiny models."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
from conftest import bert_batch, llama_batch, tiny_bert, tiny_llama

import balora
from balora import regularizers
from balora.errors import ConfigError
from balora.methods.pissa import INITIAL_ADAPTER
from balora.quantize import (
    add_to_weight,
    dequantized_weight,
    is_bnb_layer,
    quantize_linears,
    quantized_storage,
)

pytest.importorskip("bitsandbytes")


def _bnb_names(model: nn.Module) -> set[str]:
    return {name.removesuffix(".base_layer").rsplit(".", 1)[-1] for name, m in model.named_modules()
            if is_bnb_layer(m)}


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_frozen_linears_become_bitsandbytes_layers_heads_stay(kind):
    model = balora.adapt(tiny_llama(), method="lora", r=4, quantize=kind)
    assert _bnb_names(model) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert type(model.get_output_embeddings()) is nn.Linear
    storage = quantized_storage(model)
    dtype = torch.uint8 if kind == "nf4" else torch.int8
    assert all(v.dtype == dtype for k, v in storage.items() if k.endswith(".weight"))
    assert len(storage) == 2 * 14  # 2 layers x 7 linears, each with its scales

    bert = balora.adapt(tiny_bert(), method="lora", r=4, quantize=kind)
    assert "classifier" not in _bnb_names(bert) and "dense" in _bnb_names(bert)
    assert any(p.requires_grad for n, p in bert.named_parameters() if "classifier" in n)


@pytest.mark.parametrize(("method", "kind"), [("lora", "nf4"), ("dora", "nf4"), ("dual-lora", "nf4"),
                                              ("ba-lora", "nf4"), ("pissa", "int8"), ("lora", "int8")])
def test_a_step_changes_only_the_adapter_and_leaves_the_quantized_storage_bit_identical(method, kind):
    model = balora.adapt(tiny_llama(), method=method, r=4, quantize=kind).train()
    balora.set_training_step(model, 10**6)  # Dual LoRA: past the warm-up, so every factor gets a gradient
    storage = quantized_storage(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model(**llama_batch()).loss.backward()
    optimizer.step()
    after = quantized_storage(model)
    assert storage.keys() == after.keys() and all(torch.equal(storage[k], after[k]) for k in storage)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= grads
    assert all("lora_" in n for n in grads)  # no base parameter is trainable
    if method != "lora":  # LoRA's A gets no gradient while B = 0
        assert changed == grads


@pytest.mark.parametrize("method", ["ba-lora", "pissa"])
def test_qpissa_step0_is_quantized_residual_plus_initial_adapter(method):
    batch = llama_batch()
    original = tiny_llama()
    model = balora.adapt(tiny_llama(), method=method, r=4, quantize="nf4")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    w = original.model.layers[0].self_attn.q_proj.weight.detach()
    delta0 = layer.get_delta_weight(INITIAL_ADAPTER)
    step0 = dequantized_weight(layer.get_base_layer()) + delta0
    residual = w - delta0
    # Q(W_res) + s·B0·A0 is W up to the quantization error of W_res, which is smaller than W's (QPiSSA).
    assert torch.equal(layer.get_delta_weight("default"), delta0)
    qpissa_err = (step0 - w).norm()
    qlora_err = (dequantized_weight(balora.adapt(tiny_llama(), method="lora", r=4, quantize="nf4")
                                    .base_model.model.model.layers[0].self_attn.q_proj.get_base_layer()) - w).norm()
    assert 0 < qpissa_err < qlora_err
    assert residual.norm() < w.norm()
    with torch.no_grad():
        student = model(**batch).logits
        with balora.as_pretrained(model):
            reference = model(**batch).logits
    assert torch.equal(student, reference)  # the reference is the step-0 model: L_CR = 0 at step 0
    assert regularizers.nlg_consistency(student, reference, batch["labels"]).item() == pytest.approx(0, abs=1e-7)
    assert (student - original(**batch).logits).abs().max() > 0  # and it is not the full-precision model


def test_saved_adapter_loads_with_stock_peft_on_the_original_full_precision_base(tmp_path):
    from peft import PeftModel

    batch = llama_batch()
    model = balora.adapt(tiny_llama(), method="ba-lora", r=4, quantize="nf4").train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    loaded_layer = loaded.base_model.model.model.layers[1].mlp.down_proj
    # the export is ΔW = s·(B·A − B0·A0), exactly, onto the original W
    expected = layer.get_delta_weight("default") - layer.get_delta_weight(INITIAL_ADAPTER)
    torch.testing.assert_close(loaded_layer.get_delta_weight("default"), expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        trained, exported, base = model(**batch).logits, loaded(**batch).logits, tiny_llama()(**batch).logits
    gap = (trained - exported).abs().max()
    assert gap < 0.2 * (trained - base).abs().max()  # what differs is the quantization error of W_res only


def test_an_already_quantized_model_works_for_lora_and_is_refused_for_pissa():
    base = tiny_llama()
    quantize_linears(base, "nf4")
    model = balora.adapt(base, method="dora", r=4)
    assert _bnb_names(model) and any(p.requires_grad for p in model.parameters())
    model(**llama_batch()).loss.backward()
    for method in ("pissa", "ba-lora"):
        prequantized = tiny_llama()
        quantize_linears(prequantized, "int8")
        with pytest.raises(ConfigError, match=r"full precision and pass quantize="):
            balora.adapt(prequantized, method=method, r=4)
    again = tiny_llama()
    quantize_linears(again, "nf4")
    with pytest.raises(ConfigError, match="already quantized"):
        balora.adapt(again, method="lora", r=4, quantize="nf4")


def test_bad_quantize_input_is_one_line(monkeypatch):
    with pytest.raises(ConfigError, match="one of nf4, int8"):
        balora.adapt(tiny_llama(), method="lora", quantize="fp8")
    with pytest.raises(ConfigError, match="method 'full' trains every weight"):
        balora.adapt(tiny_llama(), method="full", quantize="nf4")
    with pytest.raises(ConfigError, match="no linear layer to quantize"):
        quantize_linears(nn.Sequential(nn.Embedding(4, 4)), "nf4")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'balora\[quant\]'"):
        balora.adapt(tiny_bert(), method="lora", r=4, quantize="nf4")


def test_bert_classifier_trains_over_nf4():
    model = balora.adapt(tiny_bert(), method="ba-lora", r=4, quantize="nf4").train()
    loss = model(**bert_batch()).loss
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("classifier" in n for n in grads) and any("lora_A" in n for n in grads)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_add_to_weight_shifts_a_quantized_layer_within_its_rounding(kind):
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 32))
    quantize_linears(layer, kind)
    q = layer[0]
    before = dequantized_weight(q)
    delta = torch.full_like(before, 0.01)
    add_to_weight(q, delta)
    after = dequantized_weight(q)
    # re-rounding moves each weight by less than the widest quantization gap (NF4: 0.28·absmax, int8: absmax/127)
    gap = (before.abs().max() + 0.01) * (0.28 if kind == "nf4" else 1 / 127)
    assert (after - before - delta).abs().max() < gap
    assert (after - before).mean().item() == pytest.approx(0.01, abs=1e-3)
    x = torch.randn(3, 64)
    torch.testing.assert_close(q(x), x @ after.t() + q.bias, atol=2e-2, rtol=0)


def test_nf4_eval_forward_works_where_bitsandbytes_would_repack_for_avx512_bf16(monkeypatch):
    """bitsandbytes repacks 4-bit weights for its AVX512-BF16 CPU kernel at the first no-grad eval forward and
    fails when d_in is not a multiple of the blocksize: such layers must keep the plain path (any CPU)."""
    bnb = pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)  # as on such a CPU
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))  # d_in 16 and 8 < the blocksize 64
    quantize_linears(model, "nf4")
    x = torch.randn(3, 16)
    with torch.no_grad():
        out = model.eval()(x)
        first = x @ dequantized_weight(model[0]).T + model[0].bias
        expected = first @ dequantized_weight(model[1]).T + model[1].bias
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
