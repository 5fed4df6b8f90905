"""``BALoRASFTTrainer``: TRL's ``SFTTrainer`` with the BA-LoRA loss (design §9).

TRL is an optional extra (``pip install 'balora[trl]'``); ``import balora`` works without it and
``balora.BALoRASFTTrainer`` names the extra when it is missing. Everything TRL does with the data stays
TRL's: ``messages`` (chat template, loss on assistant turns with ``assistant_only_loss``),
``prompt``/``completion`` (loss on the completion), packing off.

The loss is :class:`~balora.training.loss_mixin.BALoRALossMixin`'s, the same code as ``BALoRATrainer``:
with the regularizers on, a training step computes the task cross-entropy and the terms over the scored
rows itself, so the gradient equals ``BALoRATrainer``'s on the same batch and weights. TRL's own
``compute_loss`` is not used there because it runs a fused LM head and returns logits recomputed WITHOUT
gradient; where a full forward is needed (label smoothing, a custom ``compute_loss_func``), it is
``transformers.Trainer``'s, logits with their gradient. Evaluation, and training with every term off,
go through TRL's ``compute_loss`` unchanged (entropy, token accuracy).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from transformers import Trainer

from ..errors import ConfigError
from .config import BALoRAConfig
from .loss_mixin import BALoRALossMixin

try:
    from trl import SFTTrainer
except ImportError as exc:  # pragma: no cover - the extra is installed in CI
    raise ConfigError("balora.BALoRASFTTrainer needs TRL: pip install 'balora[trl]'.") from exc


class BALoRASFTTrainer(BALoRALossMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` plus the BA-LoRA regularizers and Dual LoRA's warm-up.

    Args:
        balora_config: as for :class:`~balora.BALoRATrainer`.
        *args, **kwargs: everything ``trl.SFTTrainer`` takes. ``model`` must come from :func:`balora.adapt`
            or :func:`balora.load` (pass no ``peft_config``: the adapter is already there).
    """

    def __init__(self, *args: Any, balora_config: BALoRAConfig | None = None, **kwargs: Any) -> None:
        if kwargs.get("peft_config") is not None:
            raise ConfigError("BALoRASFTTrainer takes a model from balora.adapt(); pass no peft_config.")
        super().__init__(*args, balora_config=balora_config, **kwargs)
        if self.weight_schedule.any_active:
            if getattr(self.args, "loss_type", "nll") != "nll":
                raise ConfigError(f"BALoRASFTTrainer adds the regularizers to the 'nll' loss only, got "
                                  f"loss_type={self.args.loss_type!r}.")
            if getattr(self.args, "packing", False) or getattr(self.args, "padding_free", False):
                raise ConfigError("BALoRASFTTrainer's regularizers need padded batches: set packing=False and "
                                  "padding_free=False.")

    def _loss_and_outputs(self, model: nn.Module, inputs: dict[str, Any],
                          num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, Any]:
        """``transformers.Trainer``'s loss and outputs (full logits, with gradient), not TRL's fused head."""
        inputs = {k: v for k, v in inputs.items() if k != "completion_mask"}
        return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, True, num_items_in_batch)
