"""Trains tiny Llamas with BALoRATrainer under one engine; tests/test_distributed.py compares the engines.

    python dist_train.py OUT single --grad-accum 2           # one process, the global batch in two halves
    accelerate launch ... dist_train.py OUT ddp|fsdp2|zero2|zero3

For each method (lora, pissa, ba-lora, dual-lora; all with the three regularizers on, constant weights)
it writes under OUT/<method>/: ``rank<i>.safetensors`` (every adapter tensor, whole), ``rank<i>.json``
(the logged history, whether the parameters were sharded during the steps and inside the reference
forward), ``export/`` (``trainer.save_model``) and, with ``--resume``, ``resumed.safetensors`` (a second
run resumed from the checkpoint at half the steps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's tiny models
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import VOCAB, tiny_llama  # noqa: E402
from engines import engine_arguments, is_sharded, whole  # noqa: E402

import balora  # noqa: E402
from balora.methods import method_of  # noqa: E402
from balora.training import BALoRAConfig  # noqa: E402

METHODS = ("lora", "pissa", "ba-lora", "dual-lora")
PER_DEVICE = 2  # rows per process and micro-batch; the global batch is 4 rows
REGULARIZERS = BALoRAConfig(preset="paper", consistency_weight=0.05, diversity_weight=0.02, svd_weight=0.02)


class ProbedTrainer(balora.BALoRATrainer):
    """Records, at every training step, whether the adapter parameters are shards, also inside the
    method's pre-trained view (the reference forward runs on the same, sharded, modules)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.probe = {"step": [], "reference": [], "params": []}
        method = self.balora_method
        probe = self.probe
        original = type(method).reference

        def reference(this, model):  # the method object is shared; record only this trainer's model
            probe["reference"].append(_lora_sharded(model))
            probe["params"].append(sum(1 for _ in model.parameters()))
            return original(this, model)

        self._patched = (type(method), original)
        type(method).reference = reference

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.probe["step"].append(_lora_sharded(model))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def restore(self) -> None:
        cls, original = self._patched
        cls.reference = original


def _lora_sharded(model: torch.nn.Module) -> bool:
    params = [p for n, p in model.named_parameters() if "lora_A" in n]
    return bool(params) and all(is_sharded(p) for p in params)


def data() -> Dataset:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (16, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                              "labels": labels.tolist()})


def make_trainer(method: str, folder: Path, engine: str, steps: int, grad_accum: int,
                 save_steps: int | None) -> ProbedTrainer:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # one Accelerator per Trainer (DeepSpeed refuses a second one otherwise)
    extra = {"warmup_steps": 2} if method == "dual-lora" else {}
    model = balora.adapt(tiny_llama(seed=0), method=method, r=4, **extra)
    args = TrainingArguments(
        output_dir=str(folder / "trainer"), max_steps=steps, per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=grad_accum, learning_rate=5e-3, logging_steps=1, report_to=[],
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, disable_tqdm=True,
        seed=0, train_sampling_strategy="sequential", **engine_arguments(engine))
    return ProbedTrainer(model=model, args=args, train_dataset=data(), balora_config=REGULARIZERS)


def adapter_names(trainer: ProbedTrainer) -> list[str]:
    return sorted(n for n, _ in trainer.model.named_parameters() if "lora_" in n)


def run(method: str, out: Path, engine: str, steps: int, grad_accum: int, resume: bool) -> None:
    folder = out / method
    trainer = make_trainer(method, folder, engine, steps, grad_accum, steps // 2 if resume else None)
    trainer.train()
    trainer.restore()
    rank = trainer.args.process_index
    tensors = whole(trainer.model, adapter_names(trainer))
    trainer.save_model(str(folder / "export"))
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(folder / f"rank{rank}.safetensors"))
    info = {"world_size": trainer.args.world_size, "history": trainer.state.log_history, "probe": trainer.probe,
            "distributed_type": str(trainer.accelerator.distributed_type), "method": method_of(trainer.model).name}
    (folder / f"rank{rank}.json").write_text(json.dumps(info))
    if resume:
        checkpoint = folder / "trainer" / f"checkpoint-{steps // 2}"
        again = make_trainer(method, out / f"{method}-resumed", engine, steps, grad_accum, None)
        again.train(resume_from_checkpoint=str(checkpoint))
        again.restore()
        resumed = whole(again.model, adapter_names(again))
        if rank == 0:
            save_file({n: t.contiguous() for n, t in resumed.items()}, str(folder / "resumed.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("engine", choices=("single", "ddp", "fsdp2", "zero2", "zero3"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args()
    torch.set_num_threads(1)
    for method in options.methods.split(","):
        run(method, options.out, options.engine, options.steps, options.grad_accum, options.resume)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    os.makedirs(options.out, exist_ok=True)


if __name__ == "__main__":
    main()
