"""An experiment's data: load, validate, split, then perturb the training split only (design §4).

Order: load → validate labels/columns → split train/validation/test (seeded, stratified) → subsample the
training split → class imbalance → label noise. Validation, test and out-of-domain sets stay clean.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from ..data import (
    PACKAGED_DATASETS,
    NLUColumns,
    add_label_noise,
    load_dataset_any,
    make_imbalanced,
    prepare_nlu,
    split,
    subsample,
)
from ..errors import ConfigError, DataError
from .settings import TrainSettings

logger = logging.getLogger("balora")

NLU_TASKS = ("classification", "regression")
MESSAGES_COLUMN = "messages"  # chat data (TRL's name)
TRL_COMPLETION = "completion"


@dataclass
class ExperimentData:
    task: str  # classification | regression | sft | code
    train: Any
    validation: Any
    test: Any
    ood: Any | None = None
    label_names: list[str] | None = None
    noise_indices: list[int] = field(default_factory=list)
    noise_originals: list[int] = field(default_factory=list)  #: the clean label of each ``noise_indices`` row

    @property
    def num_labels(self) -> int:
        return 1 if self.task == "regression" else len(self.label_names or [])


def nlu_columns(settings: TrainSettings, column_names: list[str]) -> NLUColumns:
    """The text / second text / label columns a run reads (the one place they are resolved)."""
    return NLUColumns.infer(column_names, text=settings.text_column, label=settings.label_column,
                            text_pair=settings.text_pair_column)


def infer_task(settings: TrainSettings, columns: list[str]) -> str:
    """The task of ``settings.dataset``: the packaged registry's, else from the columns."""
    if settings.task != "auto":
        return settings.task
    if settings.dataset in PACKAGED_DATASETS:
        kind = PACKAGED_DATASETS[settings.dataset].task
        return {"classification": "classification", "sft": "sft", "code": "code"}[kind]
    if MESSAGES_COLUMN in columns:
        return "chat"
    if settings.label_column in columns:
        return "classification"
    if settings.prompt_column in columns and settings.response_column in columns:
        return "sft"
    raise DataError(
        f"cannot tell the task of {settings.dataset!r} from its columns ({', '.join(columns)}): expected a "
        f"'{settings.label_column}' column (classification), '{settings.prompt_column}' and "
        f"'{settings.response_column}' or '{TRL_COMPLETION}' (sft), or '{MESSAGES_COLUMN}' (chat); set --task or "
        "the column options."
    )


def answer_type(settings: TrainSettings) -> str:
    """How generated answers are scored: ``--answer-type``, else the packaged data set's, else "number"."""
    if settings.answer_type != "auto":
        return settings.answer_type
    entry = PACKAGED_DATASETS.get(settings.dataset)
    return (entry.answer if entry is not None else None) or "number"


def default_metric(dataset: str) -> str:
    """The summary metric of ``balora compare`` for ``dataset``: the packaged entry's, else accuracy."""
    entry = PACKAGED_DATASETS.get(dataset)
    return entry.metric if entry is not None else "accuracy"


def fixed_labels(settings: TrainSettings, task: str) -> list[str] | None:
    """The classes ``--labels`` fixes (None: the values found in the data)."""
    if not settings.labels:
        return None
    if task != "classification":
        raise ConfigError(f"--labels applies to classification data only, not to {task}.")
    names = [n.strip() for n in settings.labels.split(",") if n.strip()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--labels names {', '.join(duplicates)} more than once.")
    if len(names) < 2:
        raise ConfigError(f"--labels needs at least 2 comma-separated classes, got {settings.labels!r}.")
    return names


def _load(name: str, settings: TrainSettings, size: int | None = None) -> Any:
    encoding = {"encoding": "latin-1"} if name.endswith(".csv") else {}
    try:
        dataset = load_dataset_any(name, size=size, seed=settings.data_seed)
    except UnicodeDecodeError:
        dataset = load_dataset_any(name, size=size, seed=settings.data_seed, **encoding)
    return trl_columns(dataset, settings)


def trl_columns(dataset: Any, settings: TrainSettings) -> Any:
    """TRL's prompt/completion data: ``completion`` is read as the response column when that is absent."""
    columns = dataset.column_names
    if TRL_COMPLETION in columns and settings.response_column not in columns and settings.prompt_column in columns:
        return dataset.rename_column(TRL_COMPLETION, settings.response_column)
    return dataset


def _generated_size(settings: TrainSettings) -> int | None:
    """Packaged generators (``PackagedDataset.generated``) make as many rows as the splits need."""
    entry = PACKAGED_DATASETS.get(settings.dataset)
    if entry is None or not entry.generated or settings.train_size is None:
        return None
    held_out = settings.validation_fraction + (0 if settings.eval_dataset else settings.test_fraction)
    return math.ceil(settings.train_size / (1 - held_out))


def load_experiment_data(settings: TrainSettings) -> ExperimentData:
    raw = _load(settings.dataset, settings, size=_generated_size(settings))
    task = infer_task(settings, raw.column_names)
    columns = nlu_columns(settings, raw.column_names)
    label_names = None
    if task in NLU_TASKS:
        raw, label_names = prepare_nlu(raw, columns, task, label_names=fixed_labels(settings, task))
    elif settings.label_noise or settings.imbalance_ratio:
        raise ConfigError("--label-noise and --imbalance-ratio apply to classification data only.")
    elif settings.labels:
        raise ConfigError("--labels applies to classification data only.")
    if settings.epoch_eval and task != "classification":
        raise ConfigError(f"--epoch-eval applies to classification data only, not to {task}.")
    test_fraction = 0.0 if settings.eval_dataset else settings.test_fraction
    parts = split(raw, settings.validation_fraction, test_fraction, seed=settings.data_seed,
                  stratify=task == "classification", label_column=settings.label_column)
    train, validation, test = parts["train"], parts["validation"], parts["test"]
    if settings.eval_dataset:
        test = _load_aligned(settings.eval_dataset, settings, task, columns, label_names)
    ood = _load_aligned(settings.ood_dataset, settings, task, columns, label_names) if settings.ood_dataset else None
    if settings.train_size is not None and settings.train_size < train.num_rows:
        train = subsample(train, settings.train_size, settings.data_seed, "training split")
    if settings.imbalance_ratio:
        train = make_imbalanced(train, settings.imbalance_ratio, seed=settings.data_seed,
                                label_column=settings.label_column)
    noise_indices: list[int] = []
    clean_labels = train[settings.label_column] if settings.label_noise else []
    if settings.label_noise:
        train, noise_indices = add_label_noise(train, settings.label_noise, len(label_names or []),
                                               seed=settings.data_seed, label_column=settings.label_column)
    if settings.eval_size is not None:
        validation, test = (_cap(d, settings) for d in (validation, test))
        ood = _cap(ood, settings) if ood is not None else None
    for name, part in (("training", train), ("test", test)):
        if part.num_rows == 0:
            raise DataError(f"the {name} split of {settings.dataset!r} is empty; use more data or smaller "
                            "--validation-fraction/--test-fraction.")
    logger.info("data: %s task, %d train / %d validation / %d test%s%s", task, train.num_rows, validation.num_rows,
                test.num_rows, f" / {ood.num_rows} out-of-domain" if ood is not None else "",
                f", {len(noise_indices)} noisy labels" if noise_indices else "")
    return ExperimentData(task, train, validation, test, ood, label_names, list(map(int, noise_indices)),
                          [int(clean_labels[i]) for i in noise_indices])


def _cap(dataset: Any, settings: TrainSettings) -> Any:
    if settings.eval_size is None or dataset.num_rows <= settings.eval_size:
        return dataset
    return subsample(dataset, settings.eval_size, settings.data_seed, "evaluation set")


def _load_aligned(name: str, settings: TrainSettings, task: str, columns: NLUColumns,
                  label_names: list[str] | None) -> Any:
    """An extra evaluation set with the training data's label mapping."""
    dataset = _load(name, settings)
    if task in NLU_TASKS:
        dataset, _ = prepare_nlu(dataset, nlu_columns(settings, dataset.column_names), task, label_names=label_names)
    return dataset
