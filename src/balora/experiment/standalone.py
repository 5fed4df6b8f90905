"""Evaluate a saved adapter, or the base model itself, without training (``balora eval``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json_atomic
from ..errors import ConfigError, ModelError
from ..models import load_model
from ..persistence import load
from .data import NLU_TASKS, infer_task, nlu_columns, trl_columns
from .evaluate import collator, evaluate_split
from .run import model_task
from .settings import TrainSettings


def evaluate_adapter(settings: TrainSettings, adapter: str | None, output: str | None = None,
                     allow_other_base: bool = False) -> dict[str, float]:
    """Metrics of ``adapter`` on ``settings.model`` over the whole of ``settings.dataset`` (or
    ``settings.eval_size`` rows of it), read with the same options ``balora train`` uses.

    ``adapter=None`` evaluates the base model itself: the reference point of a generation task. A
    classifier has no such reference (its head would be untrained), so NLU tasks need an adapter.
    """
    from transformers import Trainer, TrainingArguments

    from ..data import load_dataset_any, prepare_nlu, subsample

    adapter_dir = Path(adapter) if adapter is not None else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise ModelError(f"adapter directory {adapter!r} does not exist.")
    run_file = adapter_dir / "balora_run.json" if adapter_dir is not None else None
    run_info: dict[str, Any] = _read_run_info(run_file) if run_file and run_file.is_file() else {}
    model, dataset, task, data_seed = settings.model, settings.dataset, settings.task, settings.data_seed
    data = trl_columns(load_dataset_any(dataset, seed=data_seed), settings)
    if task == "auto":
        task = run_info.get("task") or infer_task(settings, data.column_names)
    label_names = run_info.get("label_names")
    if adapter_dir is None and task in NLU_TASKS:
        raise ConfigError(f"evaluating a {task} model needs --adapter: without one its head is untrained "
                          "(--adapter may be omitted only for generation tasks).")
    if task in NLU_TASKS:
        data, label_names = prepare_nlu(data, nlu_columns(settings, data.column_names), task, label_names=label_names)
    if settings.eval_size is not None and settings.eval_size < data.num_rows:
        data = subsample(data, settings.eval_size, data_seed, "evaluation set")
    num_labels = 1 if task == "regression" else len(label_names or [])
    dtype = torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32
    base, tokenizer = load_model(model, model_task(task), num_labels=num_labels or None, label_names=label_names,
                                 dtype=dtype, trust_remote_code=settings.trust_remote_code)
    adapted = load(base, adapter_dir, is_trainable=False, allow_other_base=allow_other_base) \
        if adapter_dir is not None else base
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=settings.eval_batch_size, report_to=[],
                                 use_cpu=not torch.cuda.is_available(), disable_tqdm=False)
        trainer = Trainer(model=adapted, args=args, data_collator=collator(tokenizer, task),
                          processing_class=tokenizer)
        generations = Path(output).with_suffix(".generations.jsonl") if output else None
        metrics = evaluate_split(trainer, tokenizer, data, task, settings, num_labels, generations)
    if output:
        write_json_atomic(output, metrics)
    return metrics


def _read_run_info(file: Path) -> dict[str, Any]:
    try:
        info = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{file} is not valid JSON ({exc}); the adapter directory is damaged.") from exc
    if not isinstance(info, dict):
        raise ModelError(f"{file} does not describe a run; the adapter directory is damaged.")
    return info
