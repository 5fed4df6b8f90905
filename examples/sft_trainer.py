"""BA-LoRA through TRL: ``balora.BALoRASFTTrainer`` (TRL's ``SFTTrainer`` + the BA-LoRA loss) on SmolLM2-135M.

Shows: TRL's conversational prompt/completion rows (TRL applies the chat template and scores the completion
only), the same ``balora_config`` argument as ``BALoRATrainer``, saving the adapter and reloading it with
``balora.load``. Needs the TRL extra: ``pip install 'balora[trl]'``.

Run (offline; `make test` installs the packaged model):

    python examples/sft_trainer.py --max-steps 20 --output runs/example-sft
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

import balora
from balora.models import resolve_model_dir

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Kenya": "Nairobi", "Peru": "Lima",
            "Canada": "Ottawa"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--output", default="runs/example-sft")
    args = parser.parse_args()

    folder = resolve_model_dir("smollm2-135m")  # the packaged model as a local folder (nothing downloaded)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = balora.adapt(model, method="ba-lora", r=8, target_modules=["q_proj", "v_proj"])

    chat_set = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"What is the capital of {country}?"}],
         "completion": [{"role": "assistant", "content": f"The capital of {country} is {city}."}]}
        for country, city in CAPITALS.items()
    ])
    trainer = balora.BALoRASFTTrainer(  # TRL's SFTTrainer + the BA-LoRA loss; same balora_config
        model=model,
        args=SFTConfig(output_dir=args.output, max_steps=args.max_steps, per_device_train_batch_size=2,
                       learning_rate=5e-4, max_length=64, logging_steps=1, save_strategy="no", report_to=[],
                       use_cpu=True, disable_tqdm=True,
                       bf16=False, gradient_checkpointing=False),  # TRL turns both on by default; on a GPU keep them
        train_dataset=chat_set,  # "messages" or "prompt"/"completion" rows, as TRL reads them
        eval_dataset=chat_set,
        processing_class=tokenizer,
        balora_config=balora.BALoRAConfig(preset="paper"),
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print(f"completion loss: before {before:.4f} after {after:.4f}")

    model.save_pretrained(f"{args.output}/adapter")
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reloaded = balora.load(base, f"{args.output}/adapter")
    batch = tokenizer(["The capital of Peru is Lima."], return_tensors="pt")
    with torch.no_grad():
        gap = (reloaded(**batch).logits - model(**batch).logits).abs().max().item()
    print(f"adapter saved to {args.output}/adapter; reloaded vs trained: max |logit difference| {gap:.2e}")


if __name__ == "__main__":
    main()
