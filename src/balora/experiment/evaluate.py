"""Evaluate a trained model on one split: GLUE metrics (NLU); held-out loss plus exact match or pass@1 (NLG).

Shared by ``balora train`` (validation, test, out-of-domain) and ``balora eval`` (a saved adapter).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..data import sft_collator, tokenize_chat, tokenize_nlu, tokenize_sft
from ..evaluation import (
    answer_accuracy,
    classification_metrics,
    evaluate_humaneval,
    extract_answer,
    generate_greedy,
    regression_metrics,
    scored_answer,
)
from .data import MESSAGES_COLUMN, answer_type, nlu_columns
from .settings import TrainSettings

logger = logging.getLogger("balora")


def response_column(task: str, settings: TrainSettings) -> str:
    """HumanEval-style data trains on the canonical solution as the response."""
    return "canonical_solution" if task == "code" else settings.response_column


def tokenize(dataset: Any, tokenizer: Any, task: str, settings: TrainSettings) -> Any:
    if task in ("classification", "regression"):
        columns = nlu_columns(settings, dataset.column_names)
        return tokenize_nlu(dataset, tokenizer, columns, max_length=settings.max_length)
    if task == "chat":
        return tokenize_chat(dataset, tokenizer, MESSAGES_COLUMN, max_length=settings.max_length)
    return tokenize_sft(dataset, tokenizer, prompt_column=settings.prompt_column,
                        response_column=response_column(task, settings), max_length=settings.max_length)


def collator(tokenizer: Any, task: str) -> Any:
    if task in ("classification", "regression"):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)
    return sft_collator(tokenizer)


def evaluate_split(trainer: Any, tokenizer: Any, dataset: Any, task: str, settings: TrainSettings,
                   num_labels: int | None = None, generations_file: Path | None = None,
                   predictions_file: Path | None = None) -> dict[str, float]:
    """Metrics of ``trainer.model`` on ``dataset`` (raw rows of the experiment's task).

    NLG only: the prompts, references and completions scored are written to ``generations_file``
    (JSON lines), so a reader can see what the model wrote, not just a number. ``predictions_file``
    gets one JSON line per scored example (:func:`write_predictions`), for paired per-example statistics.
    """
    if dataset is None or dataset.num_rows == 0:
        return {}
    tokenized = tokenize(dataset, tokenizer, task, settings)
    if task in ("classification", "regression"):
        predictions, labels = predict_nlu(trainer, tokenized)
        if task == "regression":
            values, targets = predictions.reshape(-1).tolist(), labels.reshape(-1).tolist()
            write_predictions(predictions_file, targets, values)
            return regression_metrics(values, targets)
        classes, targets = predictions.argmax(-1).tolist(), labels.tolist()
        write_predictions(predictions_file, targets, classes, [c == t for c, t in zip(classes, targets, strict=True)])
        return classification_metrics(classes, targets, num_labels=num_labels)
    loss = trainer.evaluate(eval_dataset=tokenized)["eval_loss"]
    metrics = {"eval_loss": float(loss), "perplexity": float(math.exp(min(loss, 50.0)))}
    if task == "chat":  # multi-turn: the held-out loss on the assistant turns is the metric
        return metrics
    metrics.update(_generation_metrics(trainer.model, tokenizer, dataset, task, settings, generations_file,
                                       predictions_file))
    return metrics


def predict_nlu(trainer: Any, tokenized: Any) -> tuple[np.ndarray, np.ndarray]:
    """(model outputs (N, C) or (N, 1), labels (N,)) of ``trainer.model`` on a tokenized NLU split, in row order:
    the Trainer's own prediction loop (eval mode, no grad, ``per_device_eval_batch_size``)."""
    output = trainer.predict(tokenized, metric_key_prefix="eval")
    predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return np.asarray(predictions), np.asarray(output.label_ids)


def write_predictions(path: Path | None, labels: list[Any], predictions: list[Any],
                      correct: list[bool] | None = None) -> None:
    """One JSON line per example of the split, in the split's order: ``id`` (the row's position, the same in
    every run with the same ``data_seed``), ``label``, ``prediction`` and, where it is defined, ``correct``."""
    if path is None:
        return
    rows = [{"id": i, "label": label, "prediction": pred} for i, (label, pred) in enumerate(zip(labels, predictions,
                                                                                              strict=True))]
    for row, ok in zip(rows, correct or [], strict=False):
        row["correct"] = bool(ok)
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def _generation_metrics(model: Any, tokenizer: Any, dataset: Any, task: str, settings: TrainSettings,
                        generations_file: Path | None, predictions_file: Path | None = None) -> dict[str, float]:
    if not settings.generate_size:
        return {}
    rows = dataset.select(range(min(settings.generate_size, dataset.num_rows)))
    prompts = list(rows[settings.prompt_column])
    with torch.no_grad():
        completions = generate_greedy(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                                      batch_size=settings.eval_batch_size)
    if task == "code":
        result = evaluate_humaneval([dict(r) for r in rows], completions,
                                    allow_unsafe_sandbox=settings.allow_unsafe_sandbox)
        _write_generations(generations_file, prompts, [r.get("task_id") for r in rows], completions, extract=None)
        return {"pass@1": float(result["pass@1"]), "code_n": float(result["n"])}
    references = rows["answer"] if "answer" in rows.column_names else rows[settings.response_column]
    kind = answer_type(settings)
    result = answer_accuracy(completions, list(references), kind)
    _write_generations(generations_file, prompts, list(references), completions, extract=kind)
    pairs = list(zip(completions, references, strict=True))
    # numbers as floats, so that prediction == label is the scorer's verdict (up to its 1e-6 tolerance)
    write_predictions(predictions_file, [scored_answer(str(r), kind) for _, r in pairs],
                      [scored_answer(c, kind) for c, _ in pairs],
                      [answer_accuracy([c], [r], kind)["accuracy"] == 1.0 for c, r in pairs])
    return {"exact_match": float(result["accuracy"]), "answered": float(result["answered"]),
            "generated_n": float(result["n"])}


def _write_generations(path: Path | None, prompts: list[str], references: list[Any], completions: list[str],
                       extract: str | None) -> None:
    """One JSON line per prompt; answer rows also carry what the scorer extracted from the completion
    (``extract``: the answer type; None for code)."""
    if path is None:
        return
    rows = [{"prompt": p, "reference": r, "completion": c} for p, r, c in zip(prompts, references, completions,
                                                                                strict=True)]
    if extract:
        for row in rows:
            row["extracted"] = extract_answer(row["completion"], extract)
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{key}": value for key, value in metrics.items()}
