"""``BALoRATrainer``: a ``transformers.Trainer`` whose loss is task + Σ λ_i · term_i (design §2, §7).

Every method goes through the same code path: with the ``none`` preset (the default for methods other
than ``ba-lora``) the loss is the task loss alone, so LoRA, PiSSA, DoRA, Dual LoRA and full fine-tuning
compare with BA-LoRA on equal terms. The loss, logging and checkpoint routing live in
:class:`~balora.training.loss_mixin.BALoRALossMixin`, shared with ``BALoRASFTTrainer`` (TRL).
"""

from __future__ import annotations

from transformers import Trainer

from .loss_mixin import BALoRALossMixin


class BALoRATrainer(BALoRALossMixin, Trainer):
    """A ``Trainer`` that adds the BA-LoRA regularizers to the task loss and runs Dual LoRA's warm-up.

    Args:
        balora_config: :class:`BALoRAConfig` (weights preset, overrides, T, K, k, NLU target). Default:
            the ``paper`` preset for ``ba-lora`` models and no regularizer for other methods.
        *args, **kwargs: everything ``transformers.Trainer`` takes. ``model`` must come from
            :func:`balora.adapt` or :func:`balora.load`.
    """
