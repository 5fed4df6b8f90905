"""Shared fixtures: tiny random models built from configs (no network, well under a second)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

VOCAB = 128


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def tiny_bert(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def llama_batch(batch: int = 2, length: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    labels = input_ids.clone()
    labels[:, : length // 2] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def bert_batch(batch: int = 4, length: int = 8, seed: int = 1, num_labels: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    labels = torch.randint(0, num_labels, (batch,), generator=g)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


MODEL_KINDS = {
    "llama": (tiny_llama, llama_batch),
    "bert": (tiny_bert, bert_batch),
}


@pytest.fixture(params=sorted(MODEL_KINDS))
def model_kind(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random BERT classifier (2 labels) and its tokenizer saved as a local model directory."""
    from balora.models import tiny_model

    folder = tmp_path_factory.mktemp("tinybert")
    model, tokenizer = tiny_model("bert", "classification", num_labels=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory):
    """A tiny random Llama causal LM and its tokenizer saved as a local model directory."""
    from balora.models import tiny_model

    folder = tmp_path_factory.mktemp("tinyllama")
    model, tokenizer = tiny_model("llama", "causal-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


SENTIMENT_WORDS = {0: ["awful", "bad", "sad", "terrible"], 1: ["good", "great", "happy", "lovely"]}


def write_sentiment_csv(path: Path, rows: int) -> Path:
    """A separable 2-class text file (text, label neg/pos, alternating) of ``rows`` rows, seeded."""
    rng = random.Random(0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(rows):
            writer.writerow([" ".join(rng.choice(SENTIMENT_WORDS[i % 2]) for _ in range(4)), ["neg", "pos"][i % 2]])
    return path
