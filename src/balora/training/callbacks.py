"""Trainer callbacks that keep balora's per-step state in line with the optimizer step."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..methods import set_training_step


class DualLoraWarmupCallback(TrainerCallback):
    """Sets Dual LoRA's warm-up factor min(1, step / warmup_steps) before each optimizer step (design §3).

    At step 0 the factor is 0, so the first forward is the pre-trained model's (L_CR = 0 there too).
    On resume the factor follows the restored ``global_step``. A no-op for other methods.
    """

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            set_training_step(model, state.global_step)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            set_training_step(model, state.global_step)
