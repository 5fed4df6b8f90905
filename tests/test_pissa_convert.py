"""PiSSA's export from a whole state dict (sharded training) writes peft's own conversion, file for file."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import load_file

import balora
from balora.errors import ModelError


def _trained_ba_lora():
    model = balora.adapt(tiny_llama(), method="ba-lora", r=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".default." in name:
                param.add_(0.05 * torch.randn(param.shape, generator=g))
    return model


def test_export_from_state_dict_equals_peft_conversion(tmp_path):
    model = _trained_ba_lora()
    model.save_pretrained(tmp_path / "peft")  # peft's path_initial_model_for_weight_conversion
    model.save_pretrained(tmp_path / "gathered", state_dict=model.state_dict())
    peft_files = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    ours = load_file(str(tmp_path / "gathered" / "adapter_model.safetensors"))
    assert peft_files.keys() == ours.keys() and len(ours) == 28
    for name, tensor in peft_files.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0)
    assert next(t for n, t in ours.items() if "lora_A" in n).shape[0] == 8  # rank 2r
    configs = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("peft", "gathered")]
    for config in configs:
        config["target_modules"] = sorted(config["target_modules"])
    assert configs[0] == configs[1] and configs[1]["r"] == 8 and configs[1]["lora_alpha"] == 8


def test_export_without_the_initial_adapter_is_one_line_error(tmp_path):
    model = _trained_ba_lora()
    trainable_only = {n: t for n, t in model.state_dict().items() if "balora_initial" not in n}
    with pytest.raises(ModelError, match="no initial PiSSA adapter"):
        model.save_pretrained(tmp_path / "out", state_dict=trainable_only)
