"""balora.pissa_init: PiSSA factors with an oversampled randomized SVD, checked against peft and exact SVDs."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import llama_batch, tiny_llama
from peft import LoraConfig, get_peft_model

from balora.errors import ConfigError
from balora.pissa_init import (
    DEFAULT_NITER,
    DEFAULT_OVERSAMPLE,
    apply_pissa_init,
    captured_mass,
    captured_mass_by_layer,
    pissa_factors,
)


def _decaying(m: int = 256, n: int = 512, decay: float = 0.99) -> torch.Tensor:
    """A float32 (m, n) matrix with singular values decay**i (i = 0..m-1) and random singular vectors."""
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    return ((U * decay ** torch.arange(m, dtype=torch.float64)) @ V.T).float()


def test_oversampling_captures_the_top_r_mass_of_a_slowly_decaying_spectrum():
    W = _decaying()
    torch.manual_seed(0)
    plain = captured_mass(W, 16, niter=4, oversample=0)  # peft's pissa_niter_4
    torch.manual_seed(0)
    default = captured_mass(W, 16)
    assert plain < 0.985  # the spectrum is flat enough that no oversampling loses > 1.5 %
    assert default >= 0.99
    assert captured_mass(W, 16, niter=None) == pytest.approx(1.0, abs=1e-6)  # the exact SVD captures everything


def _peft(model: torch.nn.Module, init, r: int = 8, alpha: int = 32):
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=init)
    return get_peft_model(copy.deepcopy(model), config)


def _layers(peft_model):
    return [m for m in peft_model.modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})]


def _compare_with_peft(dtype: torch.dtype, peft_init: str, niter, oversample: int, atol: float) -> None:
    model = tiny_llama(dtype=dtype)
    torch.manual_seed(3)
    reference = _peft(model, peft_init)
    ours = _peft(model, True)
    torch.manual_seed(3)
    assert apply_pissa_init(ours, niter=niter, oversample=oversample) == len(_layers(ours)) == 14
    for want, got in zip(_layers(reference), _layers(ours), strict=True):
        assert got.lora_A["default"].weight.dtype == want.lora_A["default"].weight.dtype
        product = got.lora_B["default"].weight @ got.lora_A["default"].weight
        torch.testing.assert_close(product, want.lora_B["default"].weight @ want.lora_A["default"].weight,
                                   rtol=0, atol=atol)
        torch.testing.assert_close(got.get_base_layer().weight, want.get_base_layer().weight, rtol=0, atol=atol)


def test_exact_factors_equal_peft_pissa():
    _compare_with_peft(torch.float32, "pissa", None, 0, atol=1e-5)


def test_no_oversampling_is_peft_pissa_niter_k_draw_for_draw():
    reference = _peft(tiny_llama(), True)
    ours = copy.deepcopy(reference)
    for i, (want, got) in enumerate(zip(_layers(reference), _layers(ours), strict=True)):
        torch.manual_seed(i)
        want.pissa_init("default", "pissa_niter_2")  # peft's own layer method
        torch.manual_seed(i)
        A, B, residual = pissa_factors(got.get_base_layer().weight, 8, niter=2, oversample=0, scaling=4.0)
        torch.testing.assert_close(A, want.lora_A["default"].weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(B, want.lora_B["default"].weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(residual, want.get_base_layer().weight, rtol=0, atol=1e-6)


def test_bf16_base_follows_peft_dtype_conventions():
    _compare_with_peft(torch.bfloat16, "pissa", None, 0, atol=1e-6)  # the same bf16 roundings


def test_residual_plus_scaled_adapter_is_the_weight_and_outputs_do_not_change():
    model = tiny_llama()
    batch = {k: v for k, v in llama_batch().items() if k != "labels"}
    with torch.no_grad():
        before = model(**batch).logits
    peft_model = _peft(model, True, r=8, alpha=32)  # scaling s = 4
    originals = [m.get_base_layer().weight.detach().clone() for m in _layers(peft_model)]
    apply_pissa_init(peft_model)
    for layer, W in zip(_layers(peft_model), originals, strict=True):
        s = layer.scaling["default"]
        assert s == 4
        delta = s * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        assert delta.abs().max() > 0.01  # the adapter holds the principal part, not zeros
        torch.testing.assert_close(layer.get_base_layer().weight + delta, W, rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, before, rtol=0, atol=1e-5)


def test_factors_shapes_and_fan_in_fan_out_transpose():
    W = _decaying(48, 80)
    torch.manual_seed(1)
    A, B, residual = pissa_factors(W, 4, niter=None, scaling=2.0)
    assert A.shape == (4, 80) and B.shape == (48, 4) and residual.shape == W.shape
    torch.testing.assert_close(residual + 2.0 * B @ A, W, rtol=0, atol=1e-6)
    A_t, B_t, residual_t = pissa_factors(W.t().contiguous(), 4, niter=None, scaling=2.0, fan_in_fan_out=True)
    torch.testing.assert_close(A_t, A, rtol=0, atol=1e-6)
    torch.testing.assert_close(B_t, B, rtol=0, atol=1e-6)
    torch.testing.assert_close(residual_t, residual.t(), rtol=0, atol=1e-6)


def test_captured_mass_by_layer_covers_every_lora_layer():
    peft_model = _peft(tiny_llama(), True, r=4)
    torch.manual_seed(0)
    mass = captured_mass_by_layer(peft_model)
    assert len(mass) == 14 and all(0.5 < v <= 1.0 + 1e-6 for v in mass.values())
    assert DEFAULT_NITER >= 4 and DEFAULT_OVERSAMPLE > 0


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="rank"):
        pissa_factors(torch.randn(8, 6), 7)
    with pytest.raises(ConfigError, match="oversample"):
        pissa_factors(torch.randn(8, 6), 2, oversample=-1)
    with pytest.raises(ConfigError, match="float32"):
        pissa_factors(torch.randn(8, 6).double(), 2)
    with pytest.raises(ConfigError, match="no LoRA layer"):
        apply_pissa_init(_peft(tiny_llama(), True), adapter_name="other")


def test_balora_adapt_uses_the_oversampled_svd_by_default():
    """adapt(method="pissa") keeps >= 99 % of each layer's exact top-r singular-value mass in B0·A0, and
    W_res + s·B0·A0 = W; pissa_oversample=0 is peft's own pissa_niter_K init."""
    from conftest import tiny_llama
    from peft.tuners.lora import LoraLayer

    import balora
    from balora.methods import INITIAL_ADAPTER

    original = dict(tiny_llama().named_parameters())
    model = balora.adapt(tiny_llama(), method="pissa", r=4)
    assert model.peft_config["default"].init_lora_weights is True  # balora's SVD, not peft's
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        W = original[name.removeprefix("base_model.model.") + ".weight"].detach().double()
        delta = layer.get_delta_weight(INITIAL_ADAPTER).double()
        exact = torch.linalg.svdvals(W)[:4].sum()
        assert torch.linalg.svdvals(delta)[:4].sum() / exact >= 0.99, name
        torch.testing.assert_close(layer.get_base_layer().weight.double() + delta, W, atol=1e-5, rtol=0)
    stock = balora.adapt(tiny_llama(), method="pissa", r=4, pissa_niter=4, pissa_oversample=0)
    assert stock.peft_config["default"].init_lora_weights == "pissa_niter_4"
