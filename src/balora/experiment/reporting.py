"""The run options that become ``TrainingArguments`` knobs: logging backends, mixed precision, checkpointing.

``--report-to tensorboard`` writes event files to ``OUTPUT/tensorboard`` (every logged value, the
``reg/*`` terms included); ``--report-to wandb`` runs offline (files under ``OUTPUT/wandb``) unless
``WANDB_MODE`` is set, so a machine without network never blocks on it. Both are optional packages,
imported here only when asked for. Each run is one wandb run (:func:`reporting_session`): a
``balora compare`` grid, whose cells train in one process, gets one wandb run and folder per cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

#: the package each ``--report-to`` backend needs, and how to install it
BACKENDS = {"tensorboard": ("tensorboard", "pip install 'balora[tensorboard]'"),
            "wandb": ("wandb", "pip install wandb")}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_report_to(report_to: str) -> None:
    """A one-line error for an unknown backend or one whose package is missing; run it before anything
    loads, so a missing package does not cost a model load."""
    if report_to == "none":
        return
    if report_to not in BACKENDS:
        raise ConfigError(f"--report-to must be none, tensorboard or wandb, got {report_to!r}.")
    package, install = BACKENDS[report_to]
    if not _installed(package):
        raise ConfigError(f"--report-to {report_to} needs {package}: {install}.")


def report_callbacks(report_to: str, out: Path) -> list[Any]:
    """The Trainer callbacks for ``--report-to`` (none: no callback)."""
    check_report_to(report_to)
    if report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tensorboard")))]
    if report_to == "wandb":
        from transformers.integrations import WandbCallback

        return [WandbCallback()]
    return []


WANDB_DEFAULTS = ("WANDB_MODE", "WANDB_DIR")


@contextlib.contextmanager
def reporting_session(report_to: str, out: Path) -> Iterator[None]:
    """One run's logging backend: for wandb, offline mode and ``OUT/wandb`` unless the user set
    ``WANDB_MODE`` / ``WANDB_DIR``, restored afterwards, and the wandb run finished at the end, so that the
    next run in the same process (a compare grid's next cell) starts its own run in its own folder."""
    if report_to != "wandb":
        yield
        return
    saved = {name: os.environ.get(name) for name in WANDB_DEFAULTS}
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(out))
    try:
        yield
    finally:
        wandb = sys.modules.get("wandb")  # imported by the callback; never imported here
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
