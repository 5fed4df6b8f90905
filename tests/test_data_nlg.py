"""balora.data.nlg.tokenize_sft: -100 exactly on the prompt tokens, truncation, the collator."""

from __future__ import annotations

import logging

import pytest

datasets = pytest.importorskip("datasets")

from balora.data import encode_prompt, sft_collator, tokenize_sft  # noqa: E402
from balora.errors import DataError  # noqa: E402
from balora.models import tiny_tokenizer  # noqa: E402

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_no_template_masks_bos_and_prompt():
    tok = tiny_tokenizer("llama")
    ds = datasets.Dataset.from_dict({"prompt": ["2+2=", "hi"], "response": ["4", "hello"], "extra": [1, 2]})
    out = tokenize_sft(ds, tok, use_chat_template=True)  # no template on this tokenizer: raw text
    assert out.column_names == ["input_ids", "attention_mask", "labels"]
    first = out[0]
    prompt = [tok.bos_token_id, *_ids(tok, "2+2=")]
    response = [*_ids(tok, "4"), tok.eos_token_id]
    assert first["input_ids"] == prompt + response
    assert first["labels"] == [-100] * len(prompt) + response
    assert first["attention_mask"] == [1] * len(prompt + response)


def test_chat_template_prompt_is_fully_masked():
    tok = tiny_tokenizer("llama", chat_template=TEMPLATE)
    ds = datasets.Dataset.from_dict({"question": ["ab"], "answer": ["cd"]})
    row = tokenize_sft(ds, tok, prompt_column="question", response_column="answer")[0]
    rendered = "<|user|>ab\n<|assistant|>"
    prompt = _ids(tok, rendered)
    assert row["input_ids"] == prompt + _ids(tok, "cd") + [tok.eos_token_id]
    assert row["labels"][: len(prompt)] == [-100] * len(prompt)
    assert row["labels"][len(prompt):] == _ids(tok, "cd") + [tok.eos_token_id]
    assert tok.decode([i for i in row["labels"] if i != -100]) == "cd</s>"
    assert encode_prompt(tok, "ab") == prompt
    plain = tokenize_sft(ds, tok, "question", "answer", use_chat_template=False)[0]
    assert plain["labels"] == [-100] * 3 + _ids(tok, "cd") + [tok.eos_token_id]  # <s> a b


def test_truncation_keeps_prompt_and_drops_empty_responses(caplog):
    tok = tiny_tokenizer("llama")
    ds = datasets.Dataset.from_dict({"prompt": ["abc", "abcdefgh", "ab", None], "response": ["wxyz", "q", "r", "s"]})
    with caplog.at_level(logging.INFO, logger="balora.data.nlg"):
        out = tokenize_sft(ds, tok, max_length=6)
    assert out.num_rows == 2  # "abcdefgh" (9 tokens with <s>) fills max_length; None is dropped
    first = out[0]
    assert first["input_ids"] == [tok.bos_token_id, *_ids(tok, "abc"), *_ids(tok, "wx")]  # response cut right
    assert first["labels"] == [-100] * 4 + _ids(tok, "wx")
    assert any("dropped 2 of 4" in r.message for r in caplog.records)
    with pytest.raises(DataError, match="max_length"):
        tokenize_sft(ds.select([1]), tok, max_length=6)
    with pytest.raises(DataError, match="'response'"):
        tokenize_sft(ds.remove_columns("response"), tok)


def test_collator_pads_labels_with_ignore_index_on_the_right():
    tok = tiny_tokenizer("llama")
    tok.padding_side = "left"
    ds = datasets.Dataset.from_dict({"prompt": ["a", "abcd"], "response": ["b", "e"]})
    out = tokenize_sft(ds, tok)
    batch = sft_collator(tok)([out[0], out[1]])
    assert tok.padding_side == "left"  # the caller's tokenizer is not changed
    assert batch["input_ids"].shape == (2, 7)
    assert batch["input_ids"][0].tolist() == out[0]["input_ids"] + [tok.pad_token_id] * 3
    assert batch["labels"][0].tolist() == out[0]["labels"] + [-100] * 3
    assert batch["attention_mask"][0].tolist() == [1] * 4 + [0] * 3
