"""The run options that become ``TrainingArguments`` knobs: logging backends, mixed precision, checkpointing.

``--report-to tensorboard`` writes event files to ``OUTPUT/tensorboard`` (every logged value, the
``reg/*`` terms included); ``--report-to wandb`` runs offline (files under ``OUTPUT/wandb``) unless
``WANDB_MODE`` is set, so a machine without network never blocks on it. Both are optional packages,
imported here only when asked for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError


def report_callbacks(report_to: str, out: Path) -> list[Any]:
    """The Trainer callbacks for ``--report-to`` (none: no callback)."""
    if report_to == "none":
        return []
    if report_to == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--report-to tensorboard needs tensorboard: pip install 'balora[tensorboard]'.")
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tensorboard")))]
    if report_to == "wandb":
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("--report-to wandb needs wandb: pip install wandb.")
        from transformers.integrations import WandbCallback

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(out))
        return [WandbCallback()]
    raise ConfigError(f"--report-to must be none, tensorboard or wandb, got {report_to!r}.")


def precision_arguments(bf16: bool, dtype: str) -> dict[str, Any]:
    """``TrainingArguments`` precision fields: bf16 autocast when asked for (or for bfloat16 weights on a GPU)."""
    cuda = torch.cuda.is_available()
    if bf16 and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("--bf16: this GPU does not support bfloat16; leave --bf16 off.")
    return {"bf16": bf16 or (dtype == "bfloat16" and cuda)}


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing under the name this transformers version uses."""
    from transformers import TrainingArguments

    if not enabled:
        return {}
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: True}
