"""Launched by tests/test_distributed.py under `accelerate launch --num_processes 2 --cpu`.

Trains a tiny BA-LoRA Llama for a few steps with BALoRATrainer and writes, per rank, the adapter
tensors and the logged history, so the test can check that the ranks agree and the run trained.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

import balora
from balora.training import BALoRAConfig


def main(out_dir: str, method: str) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = balora.adapt(LlamaForCausalLM(config), method=method, r=4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (32, 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                              "labels": labels.tolist()})
    args = TrainingArguments(output_dir=os.path.join(out_dir, "trainer"), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=5e-3, logging_steps=2, report_to=[], save_strategy="no",
                             disable_tqdm=True, use_cpu=True, seed=0)
    trainer = balora.BALoRATrainer(model=model, args=args, train_dataset=data,
                                   balora_config=BALoRAConfig(preset="official"))
    trainer.train()
    rank = trainer.args.process_index
    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if "lora_" in n}
    save_file(tensors, os.path.join(out_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"world_size": trainer.args.world_size, "history": trainer.state.log_history}, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ba-lora")
