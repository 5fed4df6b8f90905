"""One experiment's settings: a dataclass whose fields ARE the ``balora train`` options and YAML keys.

Each field's metadata gives the command-line help; ``cli/train.py`` builds its parser from these fields,
``balora compare`` varies them in a grid, and the resolved values are written to ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..evaluation.answers import ANSWER_TYPES as SCORED_ANSWER_TYPES
from ..methods import AdapterOptions, get_method, method_names
from ..training import BALoRAConfig
from .schema import flatten, unflatten

TASKS = ("auto", "classification", "regression", "sft", "chat", "code")
ANSWER_TYPES = ("auto", *SCORED_ANSWER_TYPES)  # auto: the packaged data set's
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
REPORT_TO = ("none", "tensorboard", "wandb")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainSettings:
    """Everything ``balora train`` needs; see each field's help."""

    model: str = _opt(None, "packaged model (minilm, smollm2-135m) or a local model directory", required=True)
    dataset: str = _opt(None, "packaged data set (boolq, tweets, gsm-symbolic, chain-sum, word-sorting, "
                              "humaneval) or a local csv/json/jsonl/parquet file or saved datasets folder",
                        required=True)
    output: str = _opt(None, "run directory (adapter, config.yaml, logs, metrics.json)", required=True)
    method: str = _opt("ba-lora", "adaptation method", choices=method_names())
    eval_dataset: str | None = _opt(None, "evaluate on this data set instead of the held-out test split")
    ood_dataset: str | None = _opt(None, "also evaluate, without training on it, on this out-of-domain data set "
                                         "with the same labels (reported as ood_*)")
    task: str = _opt("auto", "classification, regression, sft (instruction/response), chat (a messages column: "
                             "loss on assistant turns), code (HumanEval-style), or auto (from the data set)",
                     choices=TASKS)
    epochs: float = _opt(1.0, "training epochs (ignored when --max-steps is given)")
    max_steps: int | None = _opt(None, "training steps (overrides --epochs)")
    label_noise: float = _opt(0.0, "symmetric label noise rate injected into the training split (0..1)")
    imbalance_ratio: float | None = _opt(None, "subsample the training split to this majority:minority ratio")
    train_size: int | None = _opt(None, "use at most this many training rows (seeded subsample)")
    eval_size: int | None = _opt(None, "evaluate on at most this many rows")
    validation_fraction: float = _opt(0.1, "share of the data held out for validation (model selection)")
    test_fraction: float = _opt(0.1, "share held out for the final test (ignored with --eval-dataset)")
    text_column: str = _opt("text", "NLU text column")
    text_pair_column: str | None = _opt(None, "NLU second text column (default: text_pair when present)")
    label_column: str = _opt("label", "NLU label column")
    labels: str | None = _opt(None, "comma-separated class names: fixes the classes and their order; any other "
                                    "label value is an error (default: the values found in the data)")
    prompt_column: str = _opt("prompt", "NLG instruction column")
    response_column: str = _opt("response", "NLG response column (TRL's completion column is read as well)")
    max_length: int = _opt(128, "maximum tokens per example")
    batch_size: int = _opt(16, "per-device training batch size")
    eval_batch_size: int = _opt(32, "evaluation batch size")
    gradient_accumulation_steps: int = _opt(1, "gradient accumulation steps")
    learning_rate: float | None = _opt(None, "learning rate (default 5e-4 for adapters, 3e-5 for full)")
    warmup_ratio: float = _opt(0.03, "share of steps with a linear learning-rate warm-up")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    lr_scheduler: str = _opt("linear", "learning-rate schedule after the warm-up", choices=LR_SCHEDULERS)
    max_grad_norm: float = _opt(1.0, "clip the gradient norm to this value (0: no clipping)")
    gradient_checkpointing: bool = _opt(False, "recompute activations in backward: less memory, ~30%% more time")
    bf16: bool = _opt(False, "bfloat16 mixed precision (autocast) over float32 weights, where the device supports it")
    report_to: str = _opt("none", "also log to tensorboard (OUTPUT/tensorboard) or wandb (offline unless WANDB_MODE "
                                  "is set)", choices=REPORT_TO)
    max_new_tokens: int = _opt(256, "generation length for math and code evaluation")
    generate_size: int | None = _opt(100, "evaluate generation on at most this many prompts")
    answer_type: str = _opt("auto", "exact match of generated answers: number (the final number, numerically), "
                                    "text (the final answer text, whitespace and quotes normalised) or auto "
                                    "(the packaged data set's, else number)", choices=ANSWER_TYPES)
    dtype: str = _opt("float32", "model weights dtype", choices=("float32", "bfloat16"))
    seed: int = _opt(0, "seed of the model init, adapter init and training order")
    data_seed: int = _opt(0, "seed of the data subsample, splits, noise and imbalance")
    logging_steps: int = _opt(10, "log the loss and every regularizer term every N steps")
    save_steps: int = _opt(200, "write a resumable checkpoint every N steps")
    representation_checkpoints: int = _opt(0, "save validation representations at N evenly spaced steps "
                                              "(for balora plot tsne)")
    epoch_eval: bool = _opt(False, "classification: at each epoch's end log (epoch_eval/* in log_history.json) the "
                                   "test accuracy, the share of label-noise training rows predicted as their "
                                   "corrupted label (noisy_fit) and as their clean label (noisy_clean), and the "
                                   "accuracy on the other training rows (clean_train_accuracy)")
    resume: bool = _opt(False, "continue from the last checkpoint in OUTPUT")
    overwrite: bool = _opt(False, "replace a finished run in OUTPUT")
    trust_remote_code: bool = _opt(False, "allow a model directory's own Python code to run")
    allow_unsafe_sandbox: bool = _opt(False, "run generated code (HumanEval) even where mount/PID/network "
                                             "namespaces are unavailable; the code can then change or delete your "
                                             "files, kill your processes and read their environment")
    adapter: AdapterOptions = field(default_factory=AdapterOptions, metadata={"group": True})
    regularizers: BALoRAConfig = field(default_factory=BALoRAConfig, metadata={"group": True})

    def __post_init__(self) -> None:
        for name in ("model", "dataset", "output"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required.")
        method = get_method(self.method)
        if not 0.0 <= self.label_noise <= 1.0:
            raise ConfigError(f"--label-noise must be between 0 and 1, got {self.label_noise}.")
        if self.imbalance_ratio is not None and self.imbalance_ratio < 1:
            raise ConfigError(f"--imbalance-ratio must be >= 1, got {self.imbalance_ratio}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}.")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs}.")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be > 0, got {self.learning_rate}.")
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if not self.max_grad_norm >= 0:
            raise ConfigError(f"--max-grad-norm must be >= 0, got {self.max_grad_norm}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}.")
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}.")
        if self.validation_fraction + (0 if self.eval_dataset else self.test_fraction) >= 1:
            raise ConfigError("--validation-fraction plus --test-fraction must leave data to train on.")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; choose one.")
        unread = [name for name in ("r1", "r2", "dual_warmup_steps", "quantize")
                  if getattr(self.adapter, name) is not None and name not in method.reads]
        if self.adapter.sign_grad != "clip" and "sign_grad" not in method.reads:
            unread.append("sign_grad")
        if unread:
            readers = [name for name in method_names() if unread[0] in get_method(name).reads]
            raise ConfigError(f"--{unread[0].replace('_', '-')} is an option of --method {'/'.join(readers)} only, "
                              f"not of {self.method}.")

    @property
    def default_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return get_method(self.method).default_learning_rate

    def to_dict(self) -> dict[str, Any]:
        """One flat mapping of every option (the ``config.yaml`` of a run)."""
        return flatten(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        """From one flat mapping (a YAML file, command-line options); unknown keys are an error."""
        return unflatten(cls, values)

    def replaced(self, **values: Any) -> TrainSettings:
        """A copy with some options changed (flat names), validated again."""
        return unflatten(TrainSettings, {**self.to_dict(), **values})
