"""Dual LoRA on MiniLM (all-MiniLM-L6-v2) for 3-class tweet sentiment, then accuracy on held-out rows.

Shows: ``balora.adapt(method="dual-lora")`` on a sequence classifier (r1 magnitude + r2 direction ranks,
the update factor warmed up over the first steps by ``BALoRATrainer``), the packaged ``tweets`` data,
saving the adapter (Dual LoRA has no plain-LoRA form: ``balora.load`` reads it back).

Run (offline; `make test` installs the packaged model and data):

    python examples/dual_lora_minilm.py --max-steps 100 --output runs/example-dual-lora
"""

from __future__ import annotations

import argparse

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

import balora
from balora.data import load_packaged, tokenize_nlu
from balora.data.packaged import TWEET_LABELS
from balora.models import resolve_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--output", default="runs/example-dual-lora")
    args = parser.parse_args()

    folder = resolve_model_dir("minilm")  # the packaged model as a local folder (nothing downloaded)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    labels = {"id2label": dict(enumerate(TWEET_LABELS)), "label2id": {n: i for i, n in enumerate(TWEET_LABELS)}}
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, **labels)  # new random head
    model = balora.adapt(model, method="dual-lora", r=8, r1=4, r2=4, warmup_steps=2)  # the head trains in full

    tweets = load_packaged("tweets", size=8 * args.max_steps + 48, seed=0)  # text, label (0/1/2)
    train_set = tokenize_nlu(tweets.select(range(48, tweets.num_rows)), tokenizer, max_length=48)
    test_set = tokenize_nlu(tweets.select(range(48)), tokenizer, max_length=48)
    trainer = balora.BALoRATrainer(
        model=model,
        args=TrainingArguments(output_dir=args.output, max_steps=args.max_steps, per_device_train_batch_size=8,
                               learning_rate=2e-3, logging_steps=1, save_strategy="no", report_to=[],
                               use_cpu=True, disable_tqdm=True),
        train_dataset=train_set,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    before = trainer.predict(test_set)
    trainer.train()
    after = trainer.predict(test_set)
    predictions = after.predictions.argmax(-1)
    for name, result in (("before", before), ("after", after)):
        accuracy = np.mean(result.predictions.argmax(-1) == result.label_ids)
        print(f"{name} training: test loss {result.metrics['test_loss']:.4f}, accuracy {accuracy:.3f} "
              f"on {len(result.label_ids)} tweets")

    model.save_pretrained(f"{args.output}/adapter")  # adapter_model.safetensors + balora_adapter.json
    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, **labels)
    reloaded = balora.BALoRATrainer(model=balora.load(base, f"{args.output}/adapter"), args=trainer.args,
                                    data_collator=DataCollatorWithPadding(tokenizer))
    same = np.array_equal(reloaded.predict(test_set).predictions.argmax(-1), predictions)
    print(f"adapter saved to {args.output}/adapter; reloaded predictions identical: {same}")


if __name__ == "__main__":
    main()
