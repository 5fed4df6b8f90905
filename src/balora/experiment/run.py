"""One training run end to end: data → model → adapt → BALoRATrainer → adapter → evaluation → files.

The run directory holds (all JSON/YAML written atomically):
``config.yaml`` (the resolved settings), ``adapter/`` (the shareable adapter, see :mod:`balora.persistence`),
``checkpoints/`` (resumable), ``log_history.json`` (every logged loss and regularizer term; with
``--epoch-eval`` also one ``epoch_eval/*`` entry per epoch, see :class:`~.callbacks.EpochEvalCallback`),
``noise_indices.json`` (rows whose label was changed), ``representations/`` (for t-SNE),
``run_info.json`` (task, labels, timings, the NLU target the regularizers used), ``metrics.json``, a
flat object of the final evaluation (test or ``--eval-dataset``), ``val_*`` (validation) and ``ood_*``,
``predictions_{val,test,ood}.jsonl`` (per example: id, label, prediction, correct; the exporter of
``experiments/`` keeps them for paired statistics), and for generation tasks ``generations_{val,test,ood}.jsonl``
(what the model wrote for each prompt); ``tensorboard/`` or ``wandb/`` with ``--report-to``.

``--resume`` continues from the newest COMPLETE checkpoint (:mod:`balora.training.checkpoints`); on a
finished run (``metrics.json`` present) it trains nothing and returns the stored metrics (exit code 0, so a
script may resume every run of a grid). A full disk anywhere is one :class:`~balora.errors.DiskFullError`
naming the file and the last complete checkpoint.
"""

from __future__ import annotations

import json
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
from ..methods import adapt, get_method
from ..models import load_model, resolve_model_dir
from ..training import BALoRATrainer
from ..training.checkpoints import last_complete_checkpoint, reporting_disk_full
from .callbacks import EpochEvalCallback, GracefulStop, RepresentationCallback
from .data import NLU_TASKS, ExperimentData, load_experiment_data
from .evaluate import collator, evaluate_split, prefixed, tokenize
from .reporting import (
    check_report_to,
    checkpointing_arguments,
    precision_arguments,
    report_callbacks,
    reporting_session,
)
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
    """The newest complete checkpoint; incomplete ones (a crash mid-write) are skipped and removed."""
    return last_complete_checkpoint(checkpoints)


def _end_of_training(checkpoint: str | None, total_steps: int) -> Any:
    """The checkpoint's TrainerState when it already holds every step of the run, else None."""
    from transformers import TrainerState

    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    return state if state.global_step >= total_steps else None


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
    method = get_method(settings.method)
    options = method.adapt_kwargs(settings.adapter, _total_steps(settings, data.train.num_rows))
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
        lr_scheduler_type=settings.lr_scheduler,
        max_grad_norm=settings.max_grad_norm,
        **checkpointing_arguments(settings.gradient_checkpointing),
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        **precision_arguments(settings.bf16, settings.dtype),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    callbacks = report_callbacks(settings.report_to, out)
    if settings.representation_checkpoints and data.task in NLU_TASKS:
        reps = tokenize(data.validation, tokenizer, data.task, settings)
        callbacks.append(RepresentationCallback(reps, collator(tokenizer, data.task), out / "representations",
                                                settings.representation_checkpoints))
    epoch_eval = None
    if settings.epoch_eval:
        epoch_eval = EpochEvalCallback(tokenize(data.test, tokenizer, data.task, settings), train_set,
                                       data.noise_indices, data.noise_originals)
        callbacks.append(epoch_eval)
    trainer = BALoRATrainer(model=model, args=args, train_dataset=train_set,
                            data_collator=collator(tokenizer, data.task), processing_class=tokenizer,
                            balora_config=settings.regularizers, callbacks=callbacks)
    trainer.balora_info["adapter_init_s"] = round(init_s, 3)
    if epoch_eval is not None:
        epoch_eval.trainer = trainer
    return trainer, tokenizer


def save_adapter_atomic(model: Any, folder: Path) -> None:
    """Write the adapter into a temporary sibling folder, then swap it in: never a half-written adapter."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a full disk: no 0-byte adapter_config.json left behind
        raise
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
    check_report_to(settings.report_to)  # and on a missing logging package, before the output folder exists
    Path(settings.output).mkdir(parents=True, exist_ok=True)
    with FolderLock(settings.output, "balora train"), reporting_session(settings.report_to, Path(settings.output)):
        return _run_training(settings)


def _finished_run(out: Path) -> dict[str, float]:
    """``--resume`` on a finished run: nothing to train; its metrics as they are (exit code 0)."""
    try:
        metrics = json.loads((out / METRICS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{out / METRICS_FILE} does not read ({exc}); use --overwrite to train the run again.") \
            from exc
    logger.info("%s already holds a finished run (%s): nothing to resume, nothing trained; --overwrite trains "
                "it again", out, METRICS_FILE)
    return metrics


def environment() -> dict[str, Any]:
    """Where a run ran (for run_info.json and the results tables): versions, device, visible CPU cores."""
    import contextlib
    import os
    import platform

    import peft
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu": cpu, "cpu_cores": cores, "torch_threads": torch.get_num_threads()}


def _write_json(path: Path, data: Any, checkpoints: Path) -> None:
    with reporting_disk_full(path, checkpoints):
        write_json_atomic(path, data)


def _run_training(settings: TrainSettings) -> dict[str, float]:
    started = time.perf_counter()
    if settings.resume and (Path(settings.output) / METRICS_FILE).is_file():
        return _finished_run(Path(settings.output))
    out = _prepare_output(settings)
    checkpoints = out / "checkpoints"
    with reporting_disk_full(out / "config.yaml", checkpoints):
        write_yaml_atomic(out / "config.yaml", settings.to_dict())
    stopper = GracefulStop()
    with stopper.installed():  # a signal during set-up stops after the first step, with a checkpoint
        data = load_experiment_data(settings)
        _write_json(out / "noise_indices.json", data.noise_indices, checkpoints)
        trainer, tokenizer = build_trainer(settings, data, out)
        trainer.add_callback(stopper)
        resume_from = _last_checkpoint(checkpoints) if settings.resume else None
        if settings.resume and resume_from is None:
            logger.info("no complete checkpoint in %s: starting from the beginning", checkpoints)
        end = _end_of_training(resume_from, _total_steps(settings, data.train.num_rows))
        if end is not None:  # Trainer.train would run one step past the end
            logger.info("%s is the end of training (step %d): nothing left to train", resume_from, end.global_step)
            trainer._load_from_checkpoint(resume_from)
            trainer.state = end
            for callback in trainer.callback_handler.callbacks:  # the last epoch's end, if not yet evaluated
                if isinstance(callback, EpochEvalCallback):
                    callback.catch_up(end)
        else:
            with reporting_disk_full(f"the training outputs in {out}", checkpoints):  # checkpoints name themselves
                trainer.train(resume_from_checkpoint=resume_from)
    if stopper.signal_name is not None:
        _write_json(out / "log_history.json", trainer.state.log_history, checkpoints)
        raise TrainingInterrupted(
            f"{stopper.signal_name}: stopped at step {trainer.state.global_step} with a checkpoint in "
            f"{checkpoints}; continue with --resume."
        )
    _write_json(out / "log_history.json", trainer.state.log_history, checkpoints)
    with reporting_disk_full(out / "adapter", checkpoints):
        save_adapter_atomic(trainer.model, out / "adapter")
    with reporting_disk_full(f"the evaluation outputs in {out}", checkpoints):
        metrics = prefixed(evaluate_split(trainer, tokenizer, data.validation, data.task, settings,
                                          data.num_labels, out / "generations_val.jsonl",
                                          out / "predictions_val.jsonl"), "val_")
        metrics.update(evaluate_split(trainer, tokenizer, data.test, data.task, settings, data.num_labels,
                                      out / "generations_test.jsonl", out / "predictions_test.jsonl"))
        if data.ood is not None:
            metrics.update(prefixed(evaluate_split(trainer, tokenizer, data.ood, data.task, settings,
                                                   data.num_labels, out / "generations_ood.jsonl",
                                                   out / "predictions_ood.jsonl"), "ood_"))
    runtime = time.perf_counter() - started
    metrics["train_runtime_s"] = round(runtime, 2)
    info = {**trainer.balora_info, "task": data.task, "label_names": data.label_names,
            "train_rows": data.train.num_rows, "validation_rows": data.validation.num_rows,
            "test_rows": data.test.num_rows, "global_steps": trainer.state.global_step,
            "runtime_s": round(runtime, 2), "balora_version": __version__, "environment": environment()}
    _write_json(out / "adapter" / "balora_run.json", {"model": settings.model, **info}, checkpoints)
    _write_json(out / "run_info.json", info, checkpoints)
    _write_json(out / METRICS_FILE, metrics, checkpoints)
    return metrics
