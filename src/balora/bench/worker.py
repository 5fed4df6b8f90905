"""One measurement: a method's real training step, its peak memory and its adapter initialisation time.

The step is exactly the Trainer's: :meth:`BALoRATrainer.training_step` (so ``compute_loss`` with the
reference forward and the three regularizers for ``ba-lora``, the ``paper`` preset; no regularizer for
the other methods), gradient clipping, ``optimizer.step()``, the scheduler step and ``zero_grad()``, plus
the Dual LoRA warm-up update the Trainer's callback does. ``ba-lora`` and ``lora`` therefore differ only
by the regularizers and the PiSSA initialisation. ``lora-nf4`` and ``ba-lora-nf4`` are the same methods
over an NF4 base (``balora.adapt(..., quantize="nf4")``: QLoRA and QPiSSA; opt-in, bitsandbytes needed).
``lora-stock`` is the usual setup with nothing of balora: ``peft.get_peft_model`` and a plain
``transformers.Trainer`` (its ``compute_loss`` builds the whole (B, T, V) logits), so its row shows what
balora's own LoRA step saves. ``python -m balora.bench --worker``
runs one spec in a fresh process (see :mod:`balora.bench.memory` for why).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..methods import DEFAULT_PISSA_NITER, METHODS
from .memory import MemoryMeter
from .shapes import build_model, make_batch, model_config
from .timing import synchronize, timed

BASELINE = "lora"  #: the row every ratio is taken against
DUAL = "dual-lora"
NAIVE_DUAL = f"{DUAL}-naive"  # Dual LoRA through the direct formula (dense ΔW kept for backward)
STOCK_LORA = "lora-stock"  # stock peft LoRA trained by a stock transformers.Trainer: nothing of balora
#: opt-in rows over a quantized base: bench name -> (method, ``quantize=``); never in the default run
QUANTIZED: dict[str, tuple[str, str]] = {"lora-nf4": ("lora", "nf4"), "ba-lora-nf4": ("ba-lora", "nf4")}
BENCH_METHODS: tuple[str, ...] = (*METHODS, STOCK_LORA, NAIVE_DUAL, *QUANTIZED)


@dataclass
class BenchSpec:
    """Everything one worker needs; plain values so it travels as JSON. ``task``: "step" or "svd-init"."""

    model: str
    method: str
    batch_size: int
    seq_len: int
    scored_fraction: float
    rank: int
    dtype: str
    device: str
    steps: int
    warmup: int
    breakdown: bool = False
    fresh_process: bool = True
    seed: int = 0
    task: str = "step"
    svd_niter: int = DEFAULT_PISSA_NITER
    threads: int | None = None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def naive_dual_lora() -> Iterator[None]:
    """Inside the block Dual LoRA layers train through the direct autograd formula
    ``x @ delta_weight(A, B, C, D, s).T``, which keeps the dense (d_out, d_in) ReLU/Sign intermediates
    for backward: the baseline the recomputing :func:`~balora.dual_lora.functional.dual_lora_forward`
    is measured against. Patches the module attribute the layer calls; restored on exit."""
    from ..dual_lora import functional

    original = functional.dual_lora_forward

    def direct(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
               scale: float, sign_grad: str = "clip") -> torch.Tensor:
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        delta = functional.delta_weight(A.to(dtype), B.to(dtype), C.to(dtype), D.to(dtype), float(scale), sign_grad)
        return F.linear(x.to(dtype), delta)

    def direct_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor,
                      B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, scale: float, factor: torch.Tensor,
                      sign_grad: str = "clip") -> torch.Tensor:
        return F.linear(x, weight, bias) + direct(x, A, B, C, D, scale, sign_grad) * factor.to(x.dtype)

    original_linear = functional.dual_lora_linear
    functional.dual_lora_forward, functional.dual_lora_linear = direct, direct_linear
    try:
        yield
    finally:
        functional.dual_lora_forward, functional.dual_lora_linear = original, original_linear


def adapt_for(model: nn.Module, method: str, rank: int, **options: Any) -> nn.Module:
    """``balora.adapt`` as training uses it (the naive Dual LoRA is the same model; ``*-nf4`` passes
    ``quantize="nf4"``); ``lora-stock`` is peft's own ``get_peft_model`` with the usual LoRA config (all
    linear layers, alpha = r)."""
    from .. import adapt
    from ..methods import AdapterMethod, get_method

    if method == STOCK_LORA:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear", task_type=TaskType.CAUSAL_LM)
        return get_peft_model(model, config)
    if method in QUANTIZED:
        name, kind = QUANTIZED[method]
        return adapt(model, method=name, r=rank, quantize=kind, **options)
    name = DUAL if method == NAIVE_DUAL else method
    if not isinstance(get_method(name), AdapterMethod):
        return adapt(model, method=name)
    return adapt(model, method=name, r=rank, **options)


def build_trainer(model: nn.Module, spec: BenchSpec, output_dir: str) -> Any:
    """A :class:`BALoRATrainer` (a plain ``transformers.Trainer`` for ``lora-stock``) with optimizer and
    scheduler, as ``Trainer.train`` would set it up."""
    from transformers import Trainer, TrainingArguments

    from ..training import BALoRAConfig, BALoRATrainer

    total = spec.warmup + spec.steps
    args = TrainingArguments(
        output_dir=output_dir, use_cpu=spec.device == "cpu", report_to=[], per_device_train_batch_size=spec.batch_size,
        max_steps=total, learning_rate=1e-4, save_strategy="no", logging_strategy="no", disable_tqdm=True,
        seed=spec.seed,
    )
    if spec.method == STOCK_LORA:
        trainer = Trainer(model=model, args=args)
    else:
        preset = "auto"  # each method's default: the paper's weights for ba-lora, none for the others
        trainer = BALoRATrainer(model=model, args=args, balora_config=BALoRAConfig(preset=preset))
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    trainer.state.max_steps = total
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train sets per step (no accumulation)
    return trainer


def train_step(trainer: Any, model: nn.Module, inputs: dict[str, torch.Tensor], num_items: Any) -> torch.Tensor:
    """One optimizer step of ``Trainer.train``'s inner loop (no gradient accumulation)."""
    from ..methods import set_training_step

    if getattr(trainer, "balora_config", None) is not None:  # a stock Trainer has no balora callback
        set_training_step(model, trainer.state.global_step)  # what DualLoraWarmupCallback does
    loss = trainer.training_step(model, inputs, num_items)
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad()
    trainer.state.global_step += 1
    return loss


def _num_items(trainer: Any, inputs: dict[str, torch.Tensor]) -> Any:
    """The Trainer's own count of scored tokens (it normalises the loss by it)."""
    count = getattr(trainer, "_get_num_items_in_batch", None)
    return count([inputs], inputs["labels"].device) if count else None


def measure_method(spec: BenchSpec) -> dict[str, Any]:
    """Build, adapt and train ``spec.method`` for warm-up + timed steps; one result row."""
    from ..training import BALoRATrainer  # noqa: F401  (the Trainer stack's imports are not the method's memory)

    device = spec.device
    config = model_config(spec.model)
    meter = MemoryMeter(device, spec.fresh_process)
    meter.start()
    model = build_model(config, spec.dtype, device, spec.seed)
    synchronize(device)
    start = time.perf_counter()
    model = adapt_for(model, spec.method, spec.rank)
    synchronize(device)
    init_s = time.perf_counter() - start
    batch = make_batch(config.vocab_size, spec.batch_size, spec.seq_len, spec.scored_fraction, spec.seed + 1)
    naive = naive_dual_lora() if spec.method == NAIVE_DUAL else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="balora-bench-") as output_dir, naive:
        trainer = build_trainer(model, spec, output_dir)
        inputs = trainer._prepare_inputs(batch)
        num_items = _num_items(trainer, inputs)
        times = []
        loss = torch.tensor(float("nan"))
        for i in range(spec.warmup + spec.steps):
            if i == spec.warmup:
                meter.steady()
            step_start = time.perf_counter()
            loss = train_step(trainer, model, inputs, num_items)
            synchronize(device)
            if i >= spec.warmup:
                times.append(time.perf_counter() - step_start)
        memory = meter.report(functools.partial(train_step, trainer, model, inputs, num_items))  # before breakdown
        step_s = statistics.median(times)
        tokens = spec.batch_size * spec.seq_len
        scored = int((batch["labels"][:, 1:] != -100).sum())
        row: dict[str, Any] = {
            "method": spec.method,
            "step_ms": round(1000 * step_s, 3),
            "step_ms_min": round(1000 * min(times), 3),
            "step_ms_max": round(1000 * max(times), 3),
            **memory,
            "tokens_per_s": round(tokens / step_s, 1),
            "scored_tokens_per_s": round(scored / step_s, 1),
            "init_s": round(init_s, 6),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "final_loss": float(loss.float()),
            "model": spec.model,
            "device": device,
            "device_name": device_name(device),
            "dtype": spec.dtype,
            "batch_size": spec.batch_size,
            "seq_len": spec.seq_len,
            "scored_tokens": scored,
            "rank": spec.rank,
            "steps": spec.steps,
            "warmup": spec.warmup,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "peft": _version("peft"),
            "threads": torch.get_num_threads(),
            "fresh_process": spec.fresh_process,
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }
        if spec.method in QUANTIZED:
            from ..quantize import is_bnb_layer

            row["quantize"] = QUANTIZED[spec.method][1]
            row["quantized_layers"] = sum(is_bnb_layer(m) for m in model.modules())
        if spec.breakdown:
            from .breakdown import balora_breakdown

            row["breakdown"] = balora_breakdown(trainer, model, inputs, device, max(3, spec.steps))
        del trainer
    if not math.isfinite(row["final_loss"]):
        raise FloatingPointError(f"{spec.method}: the training loss became {row['final_loss']}")
    return row


def measure_svd_init(spec: BenchSpec) -> dict[str, Any]:
    """adapt() time of PiSSA with the exact SVD and with the randomized ``pissa_niter_K`` (K = svd_niter)."""
    config = model_config(spec.model)
    out: dict[str, Any] = {"niter": spec.svd_niter}
    for key, niter in (("exact_s", None), ("randomized_s", spec.svd_niter)):
        model = build_model(config, spec.dtype, spec.device, spec.seed)
        out[key] = round(timed(lambda m=model, n=niter: adapt_for(m, "pissa", spec.rank, pissa_niter=n),
                               spec.device), 4)
        del model
    return out


def run_spec(spec: BenchSpec) -> dict[str, Any]:
    """One measurement (a method's step, or PiSSA's init times) with the spec's thread count."""
    threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        return measure_svd_init(spec) if spec.task == "svd-init" else measure_method(spec)
    finally:
        torch.set_num_threads(threads)
