"""LoRA, DoRA and PiSSA (exact SVD) through balora.adapt are bit-identical to stock peft (design §1).

Same seed, same config: the initial weights, three SGD steps, and the saved adapter files are equal bit
for bit, so every difference a comparison shows comes from the method, not from balora's plumbing.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MODEL_KINDS
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

import balora

STOCK = {
    "lora": ({}, {}),
    "dora": ({}, {"use_dora": True}),
    "pissa": ({"pissa_niter": None}, {"init_lora_weights": "pissa"}),
}
TASK_TYPES = {"llama": "CAUSAL_LM", "bert": "SEQ_CLS"}


def _pair(kind: str, method: str):
    make, _ = MODEL_KINDS[kind]
    ours_options, stock_fields = STOCK[method]
    torch.manual_seed(7)
    ours = balora.adapt(make(), method=method, r=4, **ours_options)
    torch.manual_seed(7)
    config = LoraConfig(r=4, lora_alpha=4, target_modules="all-linear", task_type=TASK_TYPES[kind], **stock_fields)
    return ours, get_peft_model(make(), config)


def _sgd_steps(model, batch, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "balora_initial" not in k}


@pytest.mark.parametrize("method", sorted(STOCK))
def test_adapt_is_stock_peft_bit_for_bit(model_kind, method, tmp_path):
    ours, stock = _pair(model_kind, method)
    for key, value in _state(stock).items():  # initialisation, base residual included
        assert torch.equal(_state(ours)[key], value), key
    batch = MODEL_KINDS[model_kind][1]()
    for model in (ours, stock):
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    _sgd_steps(ours, batch)
    _sgd_steps(stock, batch)
    trained = _state(ours)
    for key, value in _state(stock).items():
        assert torch.equal(trained[key], value), key
    if method != "pissa":  # PiSSA's saved form is converted (tests/test_methods.py checks stock peft loads it)
        ours.save_pretrained(tmp_path / "ours")
        stock.save_pretrained(tmp_path / "stock")
        mine, theirs = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("ours", "stock"))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
