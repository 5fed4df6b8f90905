"""Bad adapters are refused on load with one ModelError: non-finite, incomplete, damaged, foreign."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from conftest import bert_batch, tiny_bert
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification

import balora
from balora.errors import ModelError

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking LoRA adapter (lora_B non-zero) on tiny_bert, and its output on a batch."""
    folder = tmp_path_factory.mktemp("adapter")
    model = balora.adapt(tiny_bert(), "lora", r=2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.save_pretrained(folder)
    return folder


def _copy(saved, tmp_path):
    target = tmp_path / "adapter"
    shutil.copytree(saved, target)
    return target


def _edit_tensors(folder, change):
    tensors = load_file(folder / WEIGHTS)
    save_file(change(tensors), folder / WEIGHTS)


def test_a_good_adapter_loads_and_gives_the_saved_outputs(saved):
    model = balora.load(tiny_bert(), saved)
    again = balora.load(tiny_bert(), saved)
    batch = bert_batch()
    batch.pop("labels")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
        assert not torch.equal(model(**batch).logits, tiny_bert()(**batch).logits)  # the adapter does something


def test_non_finite_weights(saved, tmp_path):
    folder = _copy(saved, tmp_path)

    def poison(tensors):
        name = sorted(k for k in tensors if "lora_B" in k)[3]
        tensors[name][0, 0] = float("nan")
        return tensors

    _edit_tensors(folder, poison)
    with pytest.raises(ModelError, match=r"NaN or infinite weights in 1 tensor\(s\), e.g. .*lora_B"):
        balora.load(tiny_bert(), folder)


def test_every_lora_b_missing(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_tensors(folder, lambda t: {k: v for k, v in t.items() if "lora_B" not in k})
    with pytest.raises(ModelError, match=r"lacks 13 of the 28 tensors its config calls for \(e.g. .*lora_B"):
        balora.load(tiny_bert(), folder)


def test_unexpected_tensor(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    extra = "base_model.model.bert.encoder.layer.9.attention.self.query.lora_A.weight"
    _edit_tensors(folder, lambda t: {**t, extra: torch.zeros(2, 32)})
    with pytest.raises(ModelError, match=r"1 tensor\(s\) this base model has no place for \(e.g. .*layer.9"):
        balora.load(tiny_bert(), folder)


@pytest.mark.parametrize(("text", "message"), [
    ("garbage{", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ("{}", "names no 'peft_type'"),
    ('{"peft_type": "LORA", "r": "abc"}', "'r' is 'abc', not a positive integer"),
    ('{"peft_type": "LORA", "r": 2, "target_modules": 5}', "'target_modules' is 5"),
    ('{"peft_type": "NOPE", "r": 2}', "'peft_type' 'NOPE' is not a peft adapter type"),
])
def test_config_that_does_not_parse(saved, tmp_path, text, message):
    folder = _copy(saved, tmp_path)
    (folder / "balora_adapter.json").unlink()  # as a stock peft adapter: adapter_config.json is all there is
    (folder / "adapter_config.json").write_text(text)
    with pytest.raises(ModelError, match=message):
        balora.load(tiny_bert(), folder)


def test_truncated_weights(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="is truncated or damaged"):
        balora.load(tiny_bert(), folder)


def _saved_base(folder, seed):
    tiny_bert(seed=seed).save_pretrained(folder)
    return BertForSequenceClassification.from_pretrained(folder)


def test_adapter_naming_another_base_with_the_same_shapes(tmp_path, caplog):
    trained_on = _saved_base(tmp_path / "one" / "base-a", seed=0)
    balora.adapt(trained_on, "lora", r=2).save_pretrained(tmp_path / "adapter")
    other = tmp_path / "two" / "base-b"
    with pytest.raises(ModelError, match=r"was trained on '.*base-a', not on this base model '.*base-b'.*"
                                         r"--allow-other-base"):
        balora.load(_saved_base(other, seed=1), tmp_path / "adapter")
    with caplog.at_level(logging.WARNING, logger="balora"):
        model = balora.load(_saved_base(other, seed=1), tmp_path / "adapter", allow_other_base=True)
    assert "base-a" in caplog.text and "allow_other_base" in caplog.text
    assert any("lora_A" in n for n, _ in model.named_parameters())
    # the same base moved to another folder (same last two path parts) is the same base
    moved = tmp_path / "elsewhere" / "one" / "base-a"
    shutil.copytree(tmp_path / "one" / "base-a", moved)
    balora.load(BertForSequenceClassification.from_pretrained(moved), tmp_path / "adapter")


def test_dual_lora_missing_tensor(tmp_path):
    balora.adapt(tiny_bert(), "dual-lora", r=4, warmup_steps=2).save_pretrained(tmp_path)
    _edit_tensors(tmp_path, lambda t: {k: v for k, v in t.items() if "layer.1.output.dense.lora_C" not in k})
    with pytest.raises(ModelError, match=r"lacks 1 of the .* tensors .*layer.1.output.dense.lora_C"):
        balora.load(tiny_bert(), tmp_path)


def test_damaged_balora_file_config(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    info = json.loads((folder / "balora_adapter.json").read_text())
    info["peft_config"]["lora_alpha"] = "high"
    (folder / "balora_adapter.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match=r"balora_adapter.json \(peft_config\) is not a valid adapter config: "
                                         "'lora_alpha' is 'high'"):
        balora.load(tiny_bert(), folder)
