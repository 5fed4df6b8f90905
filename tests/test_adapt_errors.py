"""Bad input to adapt() and load() gets an error that says what to change."""

from __future__ import annotations

import pytest
from conftest import MODEL_KINDS

import balora
from balora.errors import ConfigError, ModelError


def _llama():
    return MODEL_KINDS["llama"][0]()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "qlora"}, "unknown method 'qlora'; choose one of: lora, pissa, ba-lora, dora, dual-lora, full"),
        ({"method": "lora", "r": 0}, "rank r must be an integer >= 1, got 0"),
        ({"method": "dual-lora", "r": 8, "r1": 3, "r2": 4}, "r1 + r2 == r, got r1=3 + r2=4 != r=8"),
        ({"method": "dual-lora", "r": 1}, "use r >= 2 or set r1 and r2"),
        ({"method": "lora", "r1": 2}, "r1 is an option of 'dual-lora' only, not of 'lora'"),
        ({"method": "lora", "target_modules": ["nonexistent_proj"]}, "matches no linear layer of LlamaForCausalLM"),
        ({"method": "pissa", "r": 64}, "rank r=64 is larger than layer"),
        ({"method": "full", "r1": 2}, "method 'full' takes no adapter options"),
    ],
)
def test_adapt_rejects_bad_input(kwargs, message):
    with pytest.raises(ConfigError) as info:
        balora.adapt(_llama(), **kwargs)
    assert message in str(info.value)


def test_target_error_lists_available_layer_names():
    with pytest.raises(ConfigError, match="q_proj"):
        balora.adapt(_llama(), "lora", target_modules=["nonexistent_proj"])


def test_adapting_twice_is_refused():
    model = balora.adapt(_llama(), "lora", r=2)
    with pytest.raises(ConfigError, match="already a PeftModel"):
        balora.adapt(model, "lora")


def test_load_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        balora.load(_llama(), tmp_path / "nope")


def test_load_directory_without_adapter(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="holds no adapter"):
        balora.load(_llama(), tmp_path)


def test_load_refuses_pickle_weights(tmp_path):
    model = balora.adapt(_llama(), "lora", r=2)
    model.save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "adapter_model.bin")
    with pytest.raises(ModelError, match="safetensors only"):
        balora.load(_llama(), tmp_path)


def test_load_adapter_for_another_base_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = balora.adapt(_llama(), "lora", r=2)
    model.save_pretrained(tmp_path)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ModelError, match="does not fit this base model"):
        balora.load(wider, tmp_path)


def test_as_pretrained_on_full_without_reference():
    model = balora.adapt(_llama(), "full")
    with pytest.raises(ConfigError, match="keep_reference=True"), balora.as_pretrained(model):
        pass


def test_as_pretrained_on_a_plain_model():
    with pytest.raises(ConfigError, match="adapt"), balora.as_pretrained(_llama()):
        pass
