"""One training run end to end: data → model → adapt → BALoRATrainer → adapter → evaluation → files.

The run directory holds (all JSON/YAML written atomically):
``config.yaml`` (the resolved settings), ``adapter/`` (the shareable adapter, see :mod:`balora.persistence`),
``checkpoints/`` (resumable), ``log_history.json`` (every logged loss and regularizer term),
``noise_indices.json`` (rows whose label was changed), ``representations/`` (for t-SNE),
``run_info.json`` (task, labels, timings, the NLU target the regularizers used), ``metrics.json``, a
flat object of the final evaluation (test or ``--eval-dataset``), ``val_*`` (validation) and ``ood_*``,
and for generation tasks ``generations_{val,test,ood}.jsonl`` (what the model wrote for each prompt).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..atomic import LOCK_NAME, FolderLock, write_json_atomic, write_yaml_atomic
from ..errors import ConfigError, TrainingInterrupted
from ..methods import adapt
from ..models import load_model, resolve_model_dir
from ..training import BALoRAConfig, BALoRATrainer
from .callbacks import GracefulStop, RepresentationCallback
from .data import NLU_TASKS, ExperimentData, load_experiment_data
from .evaluate import collator, evaluate_split, prefixed, tokenize
from .settings import TrainSettings

logger = logging.getLogger("balora")

METRICS_FILE = "metrics.json"


def model_task(task: str) -> str:
    return task if task in NLU_TASKS else "causal-lm"


def _prepare_output(settings: TrainSettings) -> Path:
    out = Path(settings.output)
    finished = (out / METRICS_FILE).is_file()
    if finished and not settings.overwrite:
        raise ConfigError(f"{out} already holds a finished run ({METRICS_FILE}); use --overwrite to replace it "
                          "or choose another --output.")
    contents = [p for p in out.iterdir() if p.name != LOCK_NAME] if out.exists() else []
    if settings.overwrite:
        for path in contents:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif contents and not settings.resume:
        raise ConfigError(f"{out} holds an unfinished run; use --resume to continue it or --overwrite to restart.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _last_checkpoint(checkpoints: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None


def _total_steps(settings: TrainSettings, train_rows: int) -> int:
    """Optimizer steps of the run (single process), as the Trainer will count them."""
    if settings.max_steps:
        return settings.max_steps
    per_epoch = math.ceil(train_rows / settings.batch_size / settings.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * settings.epochs))


def build_trainer(settings: TrainSettings, data: ExperimentData, out: Path) -> tuple[BALoRATrainer, Any]:
    from transformers import TrainingArguments, set_seed

    set_seed(settings.seed)
    dtype = torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32
    model, tokenizer = load_model(settings.model, model_task(data.task), num_labels=data.num_labels or None,
                                  label_names=data.label_names, dtype=dtype,
                                  trust_remote_code=settings.trust_remote_code)
    options: dict[str, Any] = {}
    if settings.method != "full":
        targets = settings.target_modules
        options = {
            "r": settings.rank, "lora_alpha": settings.lora_alpha,
            "target_modules": targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            "pissa_niter": settings.pissa_niter or None,
        }
        if settings.method == "dual-lora":
            warmup = settings.dual_warmup_steps
            if warmup is None:
                warmup = min(100, max(1, round(0.1 * _total_steps(settings, data.train.num_rows))))
            options.update(r1=settings.r1, r2=settings.r2, warmup_steps=warmup)
    started = time.perf_counter()
    model = adapt(model, method=settings.method, **options)
    init_s = time.perf_counter() - started
    train_set = tokenize(data.train, tokenizer, data.task, settings)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.default_learning_rate,
        warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=settings.dtype == "bfloat16" and torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    config = BALoRAConfig(
        preset=settings.preset, auto_preset=settings.auto_preset, consistency_weight=settings.consistency_weight,
        diversity_weight=settings.diversity_weight, svd_weight=settings.svd_weight, nlu_target=settings.nlu_target,
    )
    callbacks = []
    if settings.representation_checkpoints and data.task in NLU_TASKS:
        reps = tokenize(data.validation, tokenizer, data.task, settings)
        callbacks.append(RepresentationCallback(reps, collator(tokenizer, data.task), out / "representations",
                                                settings.representation_checkpoints))
    trainer = BALoRATrainer(model=model, args=args, train_dataset=train_set,
                            data_collator=collator(tokenizer, data.task), processing_class=tokenizer,
                            balora_config=config, callbacks=callbacks)
    trainer.balora_info["adapter_init_s"] = round(init_s, 3)
    return trainer, tokenizer


def save_adapter_atomic(model: Any, folder: Path) -> None:
    """Write the adapter into a temporary sibling folder, then swap it in: never a half-written adapter."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)


def run_training(settings: TrainSettings) -> dict[str, float]:
    """Train, save and evaluate one run; returns the metrics also written to ``metrics.json``."""
    resolve_model_dir(settings.model)  # fail fast on a missing or partial model, before any data work
    Path(settings.output).mkdir(parents=True, exist_ok=True)
    with FolderLock(settings.output, "balora train"):
        return _run_training(settings)


def _run_training(settings: TrainSettings) -> dict[str, float]:
    started = time.perf_counter()
    out = _prepare_output(settings)
    write_yaml_atomic(out / "config.yaml", settings.to_dict())
    stopper = GracefulStop()
    with stopper.installed():  # a signal during set-up stops after the first step, with a checkpoint
        data = load_experiment_data(settings)
        write_json_atomic(out / "noise_indices.json", data.noise_indices)
        trainer, tokenizer = build_trainer(settings, data, out)
        trainer.add_callback(stopper)
        resume_from = _last_checkpoint(out / "checkpoints") if settings.resume else None
        if settings.resume and resume_from is None:
            logger.info("no checkpoint in %s: starting from the beginning", out / "checkpoints")
        trainer.train(resume_from_checkpoint=resume_from)
    if stopper.signal_name is not None:
        write_json_atomic(out / "log_history.json", trainer.state.log_history)
        raise TrainingInterrupted(
            f"{stopper.signal_name}: stopped at step {trainer.state.global_step} with a checkpoint in "
            f"{out / 'checkpoints'}; continue with --resume."
        )
    write_json_atomic(out / "log_history.json", trainer.state.log_history)
    save_adapter_atomic(trainer.model, out / "adapter")
    metrics = prefixed(evaluate_split(trainer, tokenizer, data.validation, data.task, settings, data.num_labels,
                                      out / "generations_val.jsonl"), "val_")
    metrics.update(evaluate_split(trainer, tokenizer, data.test, data.task, settings, data.num_labels,
                                  out / "generations_test.jsonl"))
    if data.ood is not None:
        metrics.update(prefixed(evaluate_split(trainer, tokenizer, data.ood, data.task, settings, data.num_labels,
                                               out / "generations_ood.jsonl"), "ood_"))
    runtime = time.perf_counter() - started
    metrics["train_runtime_s"] = round(runtime, 2)
    info = {**trainer.balora_info, "task": data.task, "label_names": data.label_names,
            "train_rows": data.train.num_rows, "validation_rows": data.validation.num_rows,
            "test_rows": data.test.num_rows, "global_steps": trainer.state.global_step,
            "runtime_s": round(runtime, 2), "balora_version": __version__}
    write_json_atomic(out / "adapter" / "balora_run.json", {"model": settings.model, **info})
    write_json_atomic(out / "run_info.json", info)
    write_json_atomic(out / METRICS_FILE, metrics)
    return metrics
