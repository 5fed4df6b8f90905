"""Dual LoRA's Sign straight-through variants (SPEC 8.4): clip (default), hardtanh, identity.

Each variant is checked against gradients worked out by hand on 2x2 matrices, and the recomputing training
path against plain autograd through the direct formula; then the option's way from the command line to the
layer and into the saved adapter.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MODEL_KINDS

import balora
from balora.dual_lora import DualLoraConfig, DualLoraLinear
from balora.dual_lora.functional import SIGN_GRADS, delta_weight, dual_lora_forward, sign_ste
from balora.errors import ConfigError
from balora.methods.options import AdapterOptions

VARIANTS = ("clip", "hardtanh", "identity")


def test_variants_are_the_documented_three():
    assert SIGN_GRADS == VARIANTS
    assert AdapterOptions.__dataclass_fields__["sign_grad"].metadata["choices"] == VARIANTS


@pytest.mark.parametrize(("sign_grad", "expected"), [
    ("clip", [-1.0, 1.0, -0.5, 0.2, 1.0, -1.0, 0.7]),
    ("hardtanh", [0.0, 2.0, -0.5, 0.2, 5.0, -4.0, 0.0]),  # |x| <= 1 passes, |x| = 2 and 3 do not
    ("identity", [-3.0, 2.0, -0.5, 0.2, 5.0, -4.0, 0.7]),
])
def test_sign_ste_backward_by_hand(sign_grad, expected):
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([-3.0, 2.0, -0.5, 0.2, 5.0, -4.0, 0.7], dtype=torch.float64)
    out = sign_ste(x, sign_grad)
    assert out.tolist() == [-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    (grad,) = torch.autograd.grad(out, x, grad_outputs=upstream)
    assert grad.tolist() == expected
    assert upstream.tolist() == [-3.0, 2.0, -0.5, 0.2, 5.0, -4.0, 0.7]  # the incoming gradient is not modified


# A 2x2 case worked out by hand: M = B·A = [[1, 2], [0.5, 1]] (all > 0), S = D·C = [[0.5, -3], [0.1, -0.6]],
# Sign(S) = [[1, -1], [1, -1]], scale 2, x = [1, 1], upstream [1, 1] -> G = [[1, 1], [1, 1]].
# dL/dSign = 2·G ⊙ ReLU(M) = [[2, 4], [1, 2]]; its straight-through image g_s per variant:
#   clip [[1, 1], [1, 1]]; hardtanh (|S| <= 1 except S[0,1] = -3) [[2, 0], [1, 2]]; identity [[2, 4], [1, 2]].
# dL/dC = Dᵀ·g_s, dL/dD = g_s·Cᵀ. The magnitude group and x do not depend on the variant:
# g_m = 2·G ⊙ Sign(S) ⊙ 1[M > 0] = [[2, -2], [2, -2]], dL/dA = Bᵀ·g_m = [3, -3], dL/dB = g_m·Aᵀ = [-2, -2],
# ΔW = [[2, -4], [1, -2]], out = x·ΔWᵀ = [-2, -1], dL/dx = upstream·ΔW = [3, -6].
HAND_C = {"clip": [[1.2, 1.2]], "hardtanh": [[2.2, 0.4]], "identity": [[2.2, 4.4]]}
HAND_D = {"clip": [[-2.5], [-2.5]], "hardtanh": [[1.0], [-5.5]], "identity": [[-11.0], [-5.5]]}


def _hand_case():
    t = lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x, A, B, C, D = t([[1.0, 1.0]]), t([[1.0, 2.0]]), t([[1.0], [0.5]]), t([[0.5, -3.0]]), t([[1.0], [0.2]])
    return x, A, B, C, D


@pytest.mark.parametrize("path", ["recomputing", "direct"])
@pytest.mark.parametrize("sign_grad", VARIANTS)
def test_gradients_equal_the_hand_computed_ones(sign_grad, path):
    x, A, B, C, D = _hand_case()
    if path == "recomputing":
        out = dual_lora_forward(x, A, B, C, D, 2.0, sign_grad)
        assert "DualLora" in type(out.grad_fn).__name__
    else:
        out = x @ delta_weight(A, B, C, D, 2.0, sign_grad).t()
    assert out.tolist() == [[-2.0, -1.0]]
    gx, gA, gB, gC, gD = torch.autograd.grad(out, (x, A, B, C, D), grad_outputs=torch.ones_like(out))
    torch.testing.assert_close(gC, torch.tensor(HAND_C[sign_grad], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(gD, torch.tensor(HAND_D[sign_grad], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(gA, torch.tensor([[3.0, -3.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(gB, torch.tensor([[-2.0], [-2.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(gx, torch.tensor([[3.0, -6.0]], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sign_grad", VARIANTS)
def test_recomputing_path_equals_direct_formula(sign_grad):
    gen = torch.Generator().manual_seed(3)
    d_in, d_out, r1, r2, scale = 12, 9, 3, 4, 20.0  # large scale and |S| spread around 1: every variant bites
    shapes = [(r1, d_in), (d_out, r1), (r2, d_in), (d_out, r2)]
    A, B, C, D = (torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes)
    x = torch.randn(2, 5, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, d_out, generator=gen, dtype=torch.float64)
    S = (D @ C).detach()
    assert (S.abs() <= 1).any() and (S.abs() > 1).any()
    inputs = (x, A, B, C, D)
    out = dual_lora_forward(x, A, B, C, D, scale, sign_grad)
    ref = x @ delta_weight(A, B, C, D, scale, sign_grad).t()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    got = torch.autograd.grad(out, inputs, grad_outputs=upstream)
    want = torch.autograd.grad(ref, inputs, grad_outputs=upstream)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
    # the variants give different direction-group gradients here (the comparison above is not vacuous)
    others = [v for v in VARIANTS if v != sign_grad]
    for other in others:
        (g_other,) = torch.autograd.grad(dual_lora_forward(x, A, B, C, D, scale, other), C, grad_outputs=upstream)
        assert not torch.allclose(g_other, got[3])


def test_unknown_variant_is_refused():
    x, A, B, C, D = _hand_case()
    with pytest.raises(ValueError, match="sign_grad"):
        dual_lora_forward(x, A, B, C, D, 1.0, "tanh")
    with pytest.raises(ConfigError, match="sign_grad"):
        DualLoraConfig(r=4, sign_grad="tanh", target_modules=["q_proj"])
    with pytest.raises(ConfigError, match="--sign-grad"):
        AdapterOptions(sign_grad="tanh")


def test_adapted_layer_uses_the_variant_and_the_adapter_keeps_it(tmp_path):
    make, _ = MODEL_KINDS["llama"]
    model = balora.adapt(make(), "dual-lora", r=4, lora_alpha=400, warmup_steps=0, sign_grad="hardtanh")
    layer = next(m for m in model.modules() if isinstance(m, DualLoraLinear))
    assert layer.dual_sign_grad["default"] == "hardtanh"
    with torch.no_grad():  # at the default init |DC| ~ 1e-3 everywhere, where hardtanh passes all: widen D
        layer.lora_D["default"].weight.mul_(500)
    x = torch.randn(3, layer.in_features)
    y = layer(x)
    y.pow(2).sum().backward()
    A, B, C, D = (t.detach() for t in layer.dual_factors("default"))
    G = (2 * y.detach()).T @ x
    S = D @ C
    grad_sign = layer.scaling["default"] * G * torch.relu(B @ A) * (S.abs() <= 1)
    assert (S.abs() > 1).any() and (S.abs() <= 1).any()
    torch.testing.assert_close(layer.lora_C["default"].weight.grad, D.T @ grad_sign, rtol=1e-4, atol=1e-5)

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "balora_adapter.json").read_text())
    assert saved["peft_config"]["sign_grad"] == "hardtanh"
    loaded = balora.load(make(), tmp_path)
    assert next(m for m in loaded.modules() if isinstance(m, DualLoraLinear)).dual_sign_grad["default"] == "hardtanh"
    # an adapter saved before the option existed loads with the default
    del saved["peft_config"]["sign_grad"]
    (tmp_path / "balora_adapter.json").write_text(json.dumps(saved))
    old = balora.load(make(), tmp_path)
    assert next(m for m in old.modules() if isinstance(m, DualLoraLinear)).dual_sign_grad["default"] == "clip"


def test_command_line_option_reaches_adapt():
    from balora.cli.main import build_parser
    from balora.cli.train import settings_from_args
    from balora.methods import get_method

    parser = build_parser()
    args = parser.parse_args(["train", "--model", "m", "--dataset", "d", "--output", "o", "--method", "dual-lora",
                              "--sign-grad", "hardtanh"])
    settings = settings_from_args(args)
    assert settings.adapter.sign_grad == "hardtanh" and settings.to_dict()["sign_grad"] == "hardtanh"
    assert get_method("dual-lora").adapt_kwargs(settings.adapter, 50)["sign_grad"] == "hardtanh"
    with pytest.raises(ConfigError, match="--sign-grad is an option of --method dual-lora only"):
        settings_from_args(parser.parse_args(["train", "--model", "m", "--dataset", "d", "--output", "o",
                                              "--method", "lora", "--sign-grad", "identity"]))
