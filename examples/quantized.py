"""QLoRA and QPiSSA on SmolLM2-135M: ``balora.adapt(..., quantize="nf4")``, a few steps each.

Shows: ``method="lora"`` over NF4 base layers (QLoRA) and ``method="ba-lora"`` with the SVD on the
full-precision weights and the residual quantized to NF4 (QPiSSA), both in one call; only the adapter
trains. The saved adapters load with ``balora.load`` (or stock peft) onto the ORIGINAL full-precision model,
off by the quantization error. Needs bitsandbytes (``pip install 'balora[quant]'``; it runs on the CPU too).

Run (offline; `make test` installs the packaged model):

    python examples/quantized.py --max-steps 20 --output runs/example-quantized
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

import balora
from balora.data import sft_collator, tokenize_sft
from balora.models import resolve_model_dir

OPPOSITES = {"hot": "cold", "up": "down", "early": "late", "full": "empty", "light": "dark", "fast": "slow"}
PAIRS = [{"prompt": f"One word: the opposite of {word}?", "response": opposite} for word, opposite in OPPOSITES.items()]


def loss_on(model, batch) -> float:
    with torch.no_grad():
        return model(**batch).loss.item()


def train(folder, tokenizer, method: str, max_steps: int, output: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = balora.adapt(model, method=method, r=8, target_modules=["q_proj", "v_proj"], quantize="nf4")
    nf4 = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    train_set = tokenize_sft(Dataset.from_list(PAIRS), tokenizer, max_length=48)  # loss on the response only
    batch = sft_collator(tokenizer)(list(train_set))
    before = loss_on(model, batch)
    trainer = balora.BALoRATrainer(
        model=model,
        args=TrainingArguments(output_dir=output, max_steps=max_steps, per_device_train_batch_size=2,
                               learning_rate=5e-4, logging_steps=1, save_strategy="no", report_to=[],
                               use_cpu=True, disable_tqdm=True),
        train_dataset=train_set, data_collator=sft_collator(tokenizer),
    )
    trainer.train()
    after = loss_on(model, batch)
    model.save_pretrained(f"{output}/adapter")

    original = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)  # full precision
    reloaded = balora.load(original, f"{output}/adapter")
    print(f"{method} + nf4 ({nf4} Linear4bit layers): loss before {before:.4f} after {after:.4f}; "
          f"the adapter on the full-precision model {loss_on(reloaded, batch):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--output", default="runs/example-quantized")
    args = parser.parse_args()

    folder = resolve_model_dir("smollm2-135m")  # the packaged model as a local folder (nothing downloaded)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    train(folder, tokenizer, "lora", args.max_steps, f"{args.output}/qlora")  # QLoRA
    train(folder, tokenizer, "ba-lora", args.max_steps, f"{args.output}/qpissa")  # QPiSSA + BA-LoRA's terms


if __name__ == "__main__":
    main()
