"""Dual LoRA as a peft layer: ΔW from the parameters, warm-up, merge/unmerge (SPEC 3 and 7)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MODEL_KINDS

import balora
from balora.dual_lora import DualLoraLinear


def _dual_model(r=6, r1=2, r2=4, lora_alpha=8, warmup_steps=4, dtype=torch.float32):
    make, _ = MODEL_KINDS["llama"]
    return balora.adapt(
        make(dtype=dtype), "dual-lora", r=r, r1=r1, r2=r2, lora_alpha=lora_alpha, warmup_steps=warmup_steps
    )


def _layers(model):
    return [m for m in model.modules() if isinstance(m, DualLoraLinear)]


def test_parameter_names_and_shapes():
    model = _dual_model()
    layer = _layers(model)[0]
    d_out, d_in = layer.get_base_layer().weight.shape
    assert layer.lora_A["default"].weight.shape == (2, d_in)
    assert layer.lora_B["default"].weight.shape == (d_out, 2)
    assert layer.lora_C["default"].weight.shape == (4, d_in)
    assert layer.lora_D["default"].weight.shape == (d_out, 4)
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(2 * 4))


def test_get_delta_weight_matches_formula_with_warmup():
    model = _dual_model()
    balora.set_training_step(model, 3)  # factor 3/4
    for layer in _layers(model):
        A, B, C, D = (t.double() for t in layer.dual_factors("default"))
        sign = torch.where(D @ C > 0, 1.0, -1.0).double()
        expected = 0.75 * 8 / math.sqrt(8) * torch.relu(B @ A) * sign
        torch.testing.assert_close(layer.get_delta_weight("default").double(), expected, rtol=1e-6, atol=1e-7)


def test_warmup_factor_schedule_and_saved(tmp_path):
    model = _dual_model(warmup_steps=4)
    layer = _layers(model)[0]
    factors = []
    for step in (0, 1, 2, 4, 9):
        balora.set_training_step(model, step)
        factors.append(float(layer.lora_warmup["default"]))
    assert factors == [0.0, 0.25, 0.5, 1.0, 1.0]
    balora.set_training_step(model, 2)
    model.save_pretrained(tmp_path)
    loaded = balora.load(MODEL_KINDS["llama"][0](), tmp_path)
    assert float(_layers(loaded)[0].lora_warmup["default"]) == 0.5


def test_layer_forward_equals_base_plus_delta_weight():
    model = _dual_model()
    balora.set_training_step(model, 2)
    layer = _layers(model)[0]
    x = torch.randn(3, 5, layer.in_features)
    base = layer.get_base_layer()
    expected = base(x) + x @ layer.get_delta_weight("default").T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_sign_gradient_is_clipped_straight_through():
    """The gradient reaching C and D is D/C-products of clamp(dL/dSign, -1, 1) (SPEC 3)."""
    model = _dual_model(warmup_steps=0, lora_alpha=400)  # large scale: clipping is active
    layer = _layers(model)[0]
    x = torch.randn(4, layer.in_features)
    layer(x).pow(2).sum().backward()
    A, B, C, D = (t.detach() for t in layer.dual_factors("default"))
    y = layer(x).detach()
    grad_out = 2 * y  # d/dy of sum(y^2)
    G = grad_out.T @ x  # dL/dΔW, (d_out, d_in)
    s = layer.scaling["default"]
    grad_sign = (s * G * torch.relu(B @ A)).clamp(-1, 1)
    assert (s * G * torch.relu(B @ A)).abs().max() > 1, "test needs active clipping"
    torch.testing.assert_close(layer.lora_D["default"].weight.grad, grad_sign @ C.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.lora_C["default"].weight.grad, D.T @ grad_sign, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_keeps_outputs_and_unmerge_restores_weights(dtype):
    _, make_batch = MODEL_KINDS["llama"]
    batch = make_batch()
    model = _dual_model(dtype=dtype)
    balora.set_training_step(model, 3)
    with torch.no_grad():
        before = model(**batch).logits.float()
    weights = {n: m.get_base_layer().weight.detach().clone() for n, m in model.named_modules()
               if isinstance(m, DualLoraLinear)}
    model.merge_adapter()
    with torch.no_grad():
        merged = model(**batch).logits.float()
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(merged, before, atol=tol, rtol=tol)
    model.unmerge_adapter()
    for name, module in model.named_modules():
        if isinstance(module, DualLoraLinear):
            torch.testing.assert_close(module.get_base_layer().weight, weights[name], atol=tol / 10, rtol=0)


def test_merge_and_unload_gives_plain_model_with_same_outputs():
    _, make_batch = MODEL_KINDS["llama"]
    batch = make_batch()
    model = _dual_model()
    balora.set_training_step(model, 4)
    with torch.no_grad():
        before = model(**batch).logits
    plain = model.merge_and_unload()
    assert not _layers(plain)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, before, atol=1e-5, rtol=1e-5)


def test_stock_peft_refuses_dual_lora_directory(tmp_path):
    from peft import PeftModel

    model = _dual_model()
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    with pytest.raises(ValueError):
        PeftModel.from_pretrained(MODEL_KINDS["llama"][0](), tmp_path)


def _grads_of(layer, x, forward):
    """(output, dL/dx, dL/dA, dL/dB, dL/dC, dL/dD) for L = sum(output * fixed weights)."""
    x = x.clone().requires_grad_(True)
    out = forward(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    params = layer.dual_factors("default")
    return (out, *torch.autograd.grad((out * weights).sum(), (x, *params)))


@pytest.mark.parametrize("sign_grad", ["clip", "hardtanh", "identity"])
@pytest.mark.parametrize("step", [0, 2, 4])  # warm-up factor 0, 1/2, 1
def test_folded_forward_equals_peft_path_in_value_and_gradient(step, sign_grad):
    from peft.tuners.lora.layer import Linear as LoraLinear

    model = _dual_model(dtype=torch.float64)
    balora.set_training_step(model, step)
    for layer in _layers(model)[:3]:
        layer.dual_sign_grad["default"] = sign_grad
        x = torch.randn(2, 5, layer.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        assert layer._foldable_adapter(x, (), {}) == "default"
        folded = _grads_of(layer, x, layer)
        peft_path = _grads_of(layer, x, lambda inp, lyr=layer: LoraLinear.forward(lyr, inp))
        for a, b in zip(folded, peft_path, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        if step == 0:  # warm-up factor 0: the layer is the base layer and the factors get zero gradients
            assert all(g.abs().max() == 0 for g in folded[2:])


def test_folding_falls_back_to_peft_for_dropout_disabled_adapters_and_other_dtypes():
    model = _dual_model()
    layer = _layers(model)[0]
    x = torch.randn(2, layer.in_features)
    assert layer._foldable_adapter(x, (), {}) == "default"
    assert layer._foldable_adapter(x.double(), (), {}) is None  # peft casts x to the adapter's dtype
    with model.disable_adapter():
        assert layer._foldable_adapter(x, (), {}) is None
    dropped = balora.adapt(MODEL_KINDS["llama"][0](), "dual-lora", r=6, r1=2, r2=4, lora_dropout=0.1)
    assert _layers(dropped)[0]._foldable_adapter(x, (), {}) is None
