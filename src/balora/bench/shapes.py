"""Model shapes the benchmark builds from a configuration alone (random weights, nothing to download).

- ``micro``: a test-sized Llama (hidden 32, 2 layers, vocabulary 128); it exists so tests run in seconds.
- ``tiny``: design §6's CPU shape: Llama, 4 layers, hidden 256, intermediate 688 (256·8/3 rounded up
  to a multiple of 16, Llama's FFN rule), 4 heads / 4 key-value heads, vocabulary 32,000, untied head.
- ``llama-1b``: the Llama-3.2-1B configuration (hidden 2048, intermediate 8192, 16 layers, 32 heads,
  8 key-value heads, vocabulary 128,256, tied embeddings, llama3 RoPE with theta 500,000); for a GPU.
- any local model directory (or a packaged model name): its ``config.json`` only, built with
  ``AutoModelForCausalLM.from_config``, so no weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Shape:
    """A named model shape: LlamaConfig fields plus the benchmark's defaults for it."""

    config: dict[str, Any]
    dtype: str
    batch_size: int
    seq_len: int
    description: str


SHAPES: dict[str, Shape] = {
    "micro": Shape(
        dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512),
        "float32", 2, 16, "test size: Llama, 2 layers, hidden 32, vocabulary 128",
    ),
    "tiny": Shape(
        dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False),
        "float32", 4, 128, "design §6 CPU shape: Llama, 4 layers, hidden 256, intermediate 688, vocabulary 32,000",
    ),
    "llama-1b": Shape(
        dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
             rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
             rope_theta=500000.0,
             rope_scaling={"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0,
                           "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
        "bfloat16", 8, 512, "Llama-3.2-1B configuration, random weights (for a GPU)",
    ),
}
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def model_config(model: str) -> Any:
    """The transformers config of a named shape or of a model directory (``config.json`` only)."""
    from transformers import AutoConfig, LlamaConfig

    if model in SHAPES:
        return LlamaConfig(**SHAPES[model].config)
    from ..models import resolve_model_dir

    folder = resolve_model_dir(model)
    return AutoConfig.from_pretrained(folder)


def default_dtype(model: str, device: str) -> str:
    """The shape's dtype; for a directory bfloat16 on a GPU and float32 on the CPU."""
    if model in SHAPES:
        return SHAPES[model].dtype
    return "bfloat16" if device == "cuda" else "float32"


def default_batch(model: str) -> tuple[int, int]:
    """(batch size, sequence length) the shape is benchmarked at; 4 × 128 for a directory."""
    if model in SHAPES:
        return SHAPES[model].batch_size, SHAPES[model].seq_len
    return 4, 128


def build_model(config: Any, dtype: str, device: str, seed: int) -> torch.nn.Module:
    """A causal LM with random weights, created directly on ``device`` in ``dtype`` (seeded: every method
    of a run starts from the same weights)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    except ValueError as exc:
        raise ConfigError(f"bench measures causal language models; this config is not one: {exc}") from exc
    return model


def make_batch(vocab_size: int, batch_size: int, seq_len: int, scored_fraction: float,
               seed: int) -> dict[str, torch.Tensor]:
    """Random token ids (B, T) with the first ``1 - scored_fraction`` of each sequence (the prompt) masked
    to -100 in the labels, as supervised fine-tuning does; CPU tensors."""
    generator = torch.Generator().manual_seed(seed)
    low = min(4, vocab_size - 1)  # keep clear of the usual special ids
    input_ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator)
    labels = input_ids.clone()
    labels[:, : seq_len - scored_length(seq_len, scored_fraction)] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def scored_length(seq_len: int, scored_fraction: float) -> int:
    """How many trailing tokens of each sequence carry labels."""
    return min(seq_len, max(0, round(seq_len * scored_fraction)))
