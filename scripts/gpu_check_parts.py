"""Two parts of the one-shot GPU check (scripts/gpu_check.py): the regularizers on the CPU against the device,
and a short bf16 BA-LoRA training of MiniLM from the prepared folder. torch, transformers, peft only."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: (rtol, atol) of the CPU-vs-device comparison, by input dtype: the bound is atol + rtol * max|CPU value|.
TOLERANCE = {torch.float32: (1e-4, 1e-6), torch.bfloat16: (2e-2, 1e-4)}


def _regularizer_cases(gen: torch.Generator) -> dict[str, tuple[Callable[..., torch.Tensor], list[torch.Tensor]]]:
    """name -> (function of the device tensors, float32 CPU inputs); the first input is the student."""
    from balora import regularizers as R

    n, c, d = 24, 3, 48  # NLU: 24 examples, 3 classes, 48-wide representations
    b, t, v = 2, 20, 600  # NLG: 2 x 20 tokens over 600 logits, the first half of each sequence unscored
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[:, : t // 2] = -100

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen)

    def on(x: torch.Tensor) -> torch.Tensor:
        return labels.to(x.device)

    return {
        "nlu_consistency": (lambda s, te: R.nlu_consistency(s, te), [randn(n, c), randn(n, c)]),
        "nlu_diversity": (lambda z: R.nlu_diversity(z), [randn(n, d)]),
        "nlu_svd": (lambda z: R.nlu_svd(z, k=5), [randn(n, d)]),
        "nlg_consistency": (lambda s, te: R.nlg_consistency(s, te, on(s), temperature=2.0),
                            [randn(b, t, v, scale=3.0), randn(b, t, v, scale=3.0)]),
        "nlg_diversity": (lambda s: R.nlg_diversity(s, on(s), top_k=20), [randn(b, t, v, scale=3.0)]),
        "nlg_svd": (lambda s: R.nlg_svd(s, on(s), k=10), [randn(b, t, v, scale=3.0)]),
    }


def _value_and_grad(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], device: str,
                    dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    """fn on copies of ``inputs`` in ``dtype`` on ``device``: its value and the gradient of the student
    (first input), back on the CPU in float32."""
    moved = [x.to(device=device, dtype=dtype) for x in inputs]
    moved[0].requires_grad_(True)
    value = fn(*moved)
    (grad,) = torch.autograd.grad(value, moved[0])
    return float(value.detach().float().cpu()), grad.detach().float().cpu()


def regularizer_check(device: str, seed: int = 0) -> dict[str, Any]:
    """The six public regularizers on the same tensors on the CPU and on ``device``, in float32 and bf16:
    value and student-gradient differences against :data:`TOLERANCE`. On ``cpu`` both sides are the CPU
    (a dry run of the code, not a comparison)."""
    gen = torch.Generator().manual_seed(seed)
    results = []
    for name, (fn, inputs) in _regularizer_cases(gen).items():
        for dtype in (torch.float32, torch.bfloat16):
            rtol, atol = TOLERANCE[dtype]
            cpu_value, cpu_grad = _value_and_grad(fn, inputs, "cpu", dtype)
            dev_value, dev_grad = _value_and_grad(fn, inputs, device, dtype)
            value_diff = abs(cpu_value - dev_value)
            grad_diff = float((cpu_grad - dev_grad).abs().max())
            grad_scale = float(cpu_grad.abs().max())
            ok = (math.isfinite(dev_value) and value_diff <= atol + rtol * abs(cpu_value)
                  and grad_diff <= atol + rtol * grad_scale and grad_scale > 0)
            results.append({"function": name, "dtype": str(dtype).removeprefix("torch."), "cpu_value": cpu_value,
                            "device_value": dev_value, "value_abs_diff": value_diff, "grad_max_abs_diff": grad_diff,
                            "grad_max_abs": grad_scale, "rtol": rtol, "atol": atol, "passed": ok})
    return {"device": device, "seed": seed, "results": results, "passed": all(r["passed"] for r in results)}


def train_minilm(data: Path, device: str, steps: int, batch_size: int, seq_len: int | None = None,
                 rows: int | None = None, dtype: str = "bfloat16", learning_rate: float = 2e-3, rank: int = 8,
                 seed: int = 0) -> dict[str, Any]:
    """BA-LoRA (``paper`` preset) on MiniLM over the first ``rows`` prepared tweets (default all), cycled
    (shuffled each epoch), for ``steps`` optimizer steps at a constant learning rate. ``bfloat16``: weights
    in bf16 and bf16 autocast; ``float32``: the bf16 weights upcast, no autocast. The logged loss must fall:
    the mean of the last fifth of the steps below the mean of the first fifth."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, PrinterCallback, TrainingArguments

    import balora
    from balora.training import BALoRATrainer

    manifest = json.loads((data / "manifest.json").read_text())
    torch.manual_seed(seed)
    bf16 = dtype == "bfloat16"
    model = AutoModelForSequenceClassification.from_pretrained(
        data / manifest["model_dir"], num_labels=manifest["num_labels"], dtype=getattr(torch, dtype),
        use_safetensors=True)
    model = balora.adapt(model, method="ba-lora", r=rank, lora_alpha=rank)
    tensors = load_file(str(data / manifest["batches"]))
    width = seq_len or tensors["input_ids"].shape[1]
    count = min(rows or tensors["labels"].shape[0], tensors["labels"].shape[0])
    examples = [{k: (v[i, :width] if v.ndim == 2 else v[i]) for k, v in tensors.items()} for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="balora-gpu-check-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, use_cpu=device == "cpu", bf16=bf16, per_device_train_batch_size=batch_size,
            max_steps=steps, learning_rate=learning_rate, lr_scheduler_type="constant", logging_steps=1,
            save_strategy="no", report_to=[], disable_tqdm=True, seed=seed, dataloader_num_workers=0)
        trainer = BALoRATrainer(model=model, args=args, train_dataset=examples)
        trainer.remove_callback(PrinterCallback)  # the losses go to train.json, not one dict per step on stdout
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    base_dtypes = sorted({str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters()
                          if "lora_" not in n})
    return {"device": device, "steps": steps, "batch_size": batch_size, "seq_len": width, "rows": count,
            "rank": rank, "learning_rate": learning_rate, "dtype": dtype, "base_dtypes": base_dtypes,
            "bf16_autocast": bf16,
            "losses": losses, "first_mean": first, "last_mean": last, "window": k,
            "passed": len(losses) == steps and all(map(math.isfinite, losses)) and last < first}
