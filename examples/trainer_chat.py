"""BA-LoRA on SmolLM2-135M-Instruct with chat data, trained by ``balora.BALoRATrainer``.

Shows: loading the packaged model with ``from_pretrained``, ``balora.adapt(method="ba-lora")``, chat rows
(``messages``) tokenized through the model's chat template with the loss on the assistant turns only
(``balora.data.tokenize_chat``), the regularized training run, saving the adapter and reloading it onto a
fresh copy of the ORIGINAL model with ``balora.load``.

Run (offline; `make test` installs the packaged model):

    python examples/trainer_chat.py --max-steps 20 --output runs/example-chat
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

import balora
from balora.data import sft_collator, tokenize_chat
from balora.models import resolve_model_dir

CHATS = [
    [{"role": "user", "content": f"What is {a} plus {b}?"},
     {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
    for a, b in [(2, 3), (7, 5), (12, 9), (4, 4), (21, 13), (8, 17)]
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--output", default="runs/example-chat")
    args = parser.parse_args()

    folder = resolve_model_dir("smollm2-135m")  # the packaged model as a local folder (nothing downloaded)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = balora.adapt(model, method="ba-lora", r=8, target_modules=["q_proj", "v_proj"])  # a peft.PeftModel

    chats = Dataset.from_list([{"messages": messages} for messages in CHATS])
    train_set = tokenize_chat(chats, tokenizer, max_length=64)  # labels = -100 except on the assistant turns
    trainer = balora.BALoRATrainer(
        model=model,
        args=TrainingArguments(output_dir=args.output, max_steps=args.max_steps, per_device_train_batch_size=2,
                               learning_rate=5e-4, logging_steps=1, save_strategy="no", report_to=[],
                               use_cpu=True, disable_tqdm=True),
        train_dataset=train_set,
        eval_dataset=train_set,
        data_collator=sft_collator(tokenizer),
        balora_config=balora.BALoRAConfig(preset="paper"),  # or "official", per-term overrides
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()  # logs reg/consistency, reg/diversity, reg/svd (+ weighted)
    after = trainer.evaluate()["eval_loss"]
    print(f"assistant-turn loss: before {before:.4f} after {after:.4f}")

    model.save_pretrained(f"{args.output}/adapter")  # a plain rank-2r LoRA: stock peft loads it on the ORIGINAL model
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reloaded = balora.load(base, f"{args.output}/adapter")  # any method, dual-lora included

    batch = sft_collator(tokenizer)([train_set[0]])
    with torch.no_grad():
        logits = model(**batch).logits
        with balora.as_pretrained(model):  # the pre-trained model's outputs, no second copy
            reference_logits = model(**batch).logits
        gap = (reloaded(**batch).logits - logits).abs().max().item()
    moved = (logits - reference_logits).abs().max().item()
    print(f"trained vs pre-trained: max |logit difference| {moved:.2e}")
    print(f"adapter saved to {args.output}/adapter; reloaded vs trained: max |logit difference| {gap:.2e}")


if __name__ == "__main__":
    main()
