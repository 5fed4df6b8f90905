"""The BA-LoRA loss, logging and checkpoint routing, shared by ``BALoRATrainer`` and ``BALoRASFTTrainer``.

:class:`BALoRALossMixin` goes before a ``transformers.Trainer`` subclass in the bases (design §8.2):
``compute_loss`` = task + Σ λ_i · term_i, per-term logging in ``log``, the method's raw checkpoints, and
Dual LoRA's warm-up callback. Per-term values are gathered at each step and flushed, averaged over the
steps and the processes, in :meth:`log` (so they reach the progress bar, TensorBoard, ...): ``reg/<term>``
(raw, signed as added), ``reg/<term>_weighted`` (λ · raw) and ``reg/lambda_<term>``.

Where the trainer's own ``compute_loss`` cannot give logits WITH a gradient (TRL's fused LM head), the
subclass overrides :meth:`BALoRALossMixin._loss_and_outputs`; a no-grad logits tensor reaching the terms is
an error, never a regularizer that silently trains nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn as nn

from ..errors import NonFiniteLossError
from ..methods import method_of
from ..model_kind import regularizer_task
from .callbacks import DualLoraWarmupCallback
from .checkpoints import complete_or_absent, resume_checkpoint
from .config import BALoRAConfig
from .scored_rows import scored_head
from .sharding import head_as_wrapped
from .terms import (
    capture_head_input,
    find_head,
    nlg_loss,
    nlg_terms,
    nlu_target_rule,
    nlu_terms,
    pooled_from_head_input,
    reference_logits,
    reference_rows,
    rows_of_logits,
    student_rows,
)
from .weights import TERMS

logger = logging.getLogger("balora")


class BALoRALossMixin:
    """Adds the BA-LoRA regularizers and Dual LoRA's warm-up to a ``Trainer`` subclass (put it first)."""

    def __init__(self, *args: Any, balora_config: BALoRAConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.balora_config = balora_config or BALoRAConfig()
        self.balora_method = method_of(self.model)
        self.balora_task = regularizer_task(self.model) if self.balora_config.task == "auto" else \
            self.balora_config.task
        self.weight_schedule = self.balora_config.schedule(self.balora_method, self.balora_task)
        self.balora_info: dict[str, Any] = {"method": self.balora_method.name, "task": self.balora_task}
        self._term_log: dict[str, tuple[torch.Tensor, int]] = {}
        self._head: nn.Module | None = None
        self._head_pools_last_token = False
        self._nlu_target: str | None = None
        self._writing_checkpoint = False
        self._scored_head = None
        if self.balora_task == "nlg" and self.label_smoother is None and self.compute_loss_func is None:
            self._scored_head = scored_head(self.model)
        if self.weight_schedule.consistency > 0:
            self.balora_method.prepare_reference(self.model)
        if self.balora_task == "nlu" and self.weight_schedule.any_active:
            self._setup_nlu_target()
        self.add_callback(DualLoraWarmupCallback())

    def _setup_nlu_target(self) -> None:
        num_classes = getattr(self.model.config, "num_labels", None) or 1
        self._nlu_target = nlu_target_rule(num_classes, self.balora_config)
        if self._nlu_target == "pooled":
            name, self._head = find_head(self.model)
            self._head_pools_last_token = name.rsplit(".", 1)[-1] == "score"
        self.balora_info["nlu_target"] = self._nlu_target
        logger.info(
            "BA-LoRA NLU diversity/SVD terms use the %s (C=%d classes, k=%d)",
            "logits" if self._nlu_target == "logits" else "pooled representation the head reads",
            num_classes, self.balora_config.nlu_svd_k,
        )

    # ------------------------------------------------------------------ loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        weights = self.weight_schedule.weights_at(self.state.global_step, self.state.max_steps)
        if self._scored_head is not None and not return_outputs:
            outputs = None
            loss, task_loss, terms = self._scored_rows_loss(model, inputs, weights, num_items_in_batch)
        else:
            if not self.weight_schedule.any_active:  # the trainer's own loss (and its metrics), unchanged
                task_loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                task_loss, outputs = task_loss if return_outputs else (task_loss, None)
                terms = {}
            else:
                task_loss, outputs, terms = self._full_forward_loss(model, inputs, weights, num_items_in_batch)
            regularizer = sum(weights[name] * value for name, value in terms.items())
            loss = task_loss + self._regularizer_scale(num_items_in_batch) * regularizer if terms else task_loss
        self._check_finite(loss, {"task": task_loss, **terms}, inputs)
        self._record(terms, weights)
        return (loss, outputs) if return_outputs else loss

    def _scored_rows_loss(self, model: nn.Module, inputs: dict[str, Any], weights: dict[str, float],
                          num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """NLG: ``(loss, task, terms)`` with the head only at the scored rows, the task CE and the terms in
        one pass (every method); with a frozen linear head no (M, V) logits rows at all (:func:`nlg_loss`)."""
        self._scored_head = head_as_wrapped(self._scored_head)  # FSDP2 / ZeRO-3 shard it in train()
        reference = None
        if weights["consistency"] > 0:
            reference = reference_rows(model, inputs, self._scored_head)
        student = student_rows(model, inputs, self._scored_head)
        passed = num_items_in_batch if self.model_accepts_loss_kwargs else None  # what the model would get
        try:
            return nlg_loss(student, reference, self._scored_head, weights, self.balora_config, passed,
                            task_scale=self._token_average_scale(passed),
                            term_scale=self._regularizer_scale(num_items_in_batch))
        except torch.linalg.LinAlgError:  # the SVD of NaN/inf rows: report the task loss that went bad
            task = nlg_terms(student, None, self._scored_head, dict.fromkeys(TERMS, 0.0), self.balora_config, passed)
            self._check_finite(task["task"], task, inputs)
            raise

    def _full_forward_loss(self, model: nn.Module, inputs: dict[str, Any], weights: dict[str, float],
                           num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, Any, dict]:
        """The Trainer's own forward and loss, then the terms from its outputs (NLU; NLG fallback)."""
        nlg = self.balora_task == "nlg"
        reference = None
        if weights["consistency"] > 0:
            reference = reference_rows(model, inputs, None) if nlg else reference_logits(model, inputs)
        pooled = None
        if self._head is not None:
            with capture_head_input(self._head) as seen:
                task_loss, outputs = self._loss_and_outputs(model, inputs, num_items_in_batch)
            pooled = pooled_from_head_input(seen[-1], inputs.get("attention_mask"), self._head_pools_last_token)
        else:
            task_loss, outputs = self._loss_and_outputs(model, inputs, num_items_in_batch)
        if not outputs.logits.requires_grad:
            raise RuntimeError(f"{type(self).__name__}: the task loss came with logits that have no gradient; the "
                               "regularizers would train nothing (override _loss_and_outputs).")
        try:
            if nlg:
                terms = nlg_terms(rows_of_logits(outputs.logits, inputs["labels"]), reference, None, weights,
                                  self.balora_config)
                terms.pop("task")  # the model's own loss stands (it may add to the cross-entropy)
            else:
                terms = nlu_terms(outputs.logits, reference, pooled, self._nlu_target, weights, self.balora_config)
        except torch.linalg.LinAlgError:  # the SVD of NaN/inf logits: report the task loss that went bad
            self._check_finite(task_loss, {"task": task_loss}, inputs)
            raise
        return task_loss, outputs, terms

    def _loss_and_outputs(self, model: nn.Module, inputs: dict[str, Any],
                          num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, Any]:
        """The trainer's task loss and the model outputs, logits with their gradient. A copy of ``inputs``:
        the Trainer pops ``labels`` from it under label smoothing, and the terms still need them."""
        return super().compute_loss(model, dict(inputs), True, num_items_in_batch)

    def _token_average_scale(self, num_items_in_batch: torch.Tensor | int | None) -> int:
        """The factor ``Trainer.compute_loss`` applies to a token-averaged loss across processes."""
        if not (self.args.average_tokens_across_devices and num_items_in_batch is not None):
            return 1
        return self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu

    def _check_finite(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], inputs: dict[str, Any]) -> None:
        """Stop before a NaN/inf loss reaches the weights: name the step, the term and the batch.

        One host-device sync per step, like the Trainer's own NaN/inf filter on the logged loss. The
        offending batch is kept in ``<output_dir>/nonfinite_batch.safetensors``
        and no optimizer step is taken, so the last checkpoint stays the last good one.
        """
        if torch.isfinite(loss).all():
            return
        bad = [name for name, value in parts.items() if not torch.isfinite(value).all()] or ["task"]
        path = None
        if self.args.should_save:
            from safetensors.torch import save_file

            os.makedirs(self.args.output_dir, exist_ok=True)
            path = os.path.join(self.args.output_dir, "nonfinite_batch.safetensors")
            save_file({k: v.detach().cpu().contiguous() for k, v in inputs.items() if torch.is_tensor(v)}, path)
        shape = tuple(inputs["input_ids"].shape) if "input_ids" in inputs else "?"
        raise NonFiniteLossError(
            f"the loss became {loss.item()} at step {self.state.global_step} (bad term: {', '.join(bad)}; "
            f"batch of shape {shape}{', saved to ' + path if path else ''}); stopped before updating the "
            "weights, the last checkpoint is the last good one. Lower the learning rate or the regularizer weights."
        )

    def _regularizer_scale(self, num_items_in_batch: torch.Tensor | int | None) -> float:
        """Match the task loss's gradient-accumulation scaling.

        When the task loss is normalised over the whole accumulated batch (``num_items_in_batch``), the
        Trainer does not divide it by the accumulation steps, so the per-batch regularizer means are
        divided here. The cross-process factor the Trainer applies to token-averaged losses is not
        applied: DDP's gradient averaging already makes the per-process means a global mean.
        """
        scaled_by_trainer = self.loss_is_scaled_for_ga
        if scaled_by_trainer is None:
            scaled_by_trainer = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        steps = getattr(self, "current_gradient_accumulation_steps", 1)  # set by Trainer.train()
        return 1.0 / steps if scaled_by_trainer else 1.0

    # ------------------------------------------------------------------ checkpoints

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the last COMPLETE checkpoint (an
        interrupted write is skipped, see :mod:`.checkpoints`), not merely the newest folder."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = resume_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint in {self.args.output_dir} to resume from")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Checkpoints hold the method's raw, resumable state (:meth:`Method.save_checkpoint`), so a run
        resumes exactly; ``save_model`` outside checkpoints writes the shareable export. Each checkpoint
        ends complete (sealed) or absent, and a full disk is a DiskFullError (:mod:`.checkpoints`)."""
        self._writing_checkpoint = True
        try:
            with complete_or_absent(self, trial):
                super()._save_checkpoint(model, trial)
        finally:
            self._writing_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self._writing_checkpoint:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
        inner = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        self.balora_method.save_checkpoint(inner, output_dir, state_dict=state_dict,
                                           is_main_process=self.args.should_save)
        if self.args.should_save and self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """The Trainer loads every saved adapter, PiSSA's initial one included, inside the method's
        :meth:`~balora.methods.Method.resuming` (PiSSA: W_res follows the loaded initial adapter)."""
        inner = self.accelerator.unwrap_model(model or self.model)
        with self.balora_method.resuming(inner):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    # ------------------------------------------------------------------ logging

    def _record(self, terms: dict[str, torch.Tensor], weights: dict[str, float]) -> None:
        """Running sums per key (bounded memory, no host sync); :meth:`log` turns them into means."""
        for name in TERMS:
            if name not in terms:
                continue
            value = terms[name].detach().float()
            for key, amount in ((f"reg/{name}", value), (f"reg/{name}_weighted", value * weights[name]),
                                (f"reg/lambda_{name}", torch.full_like(value, weights[name]))):
                total, count = self._term_log.get(key, (0.0, 0))
                self._term_log[key] = (total + amount, count + 1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._term_log and "loss" in logs:  # training logs only, not evaluation
            for key, (total, count) in self._term_log.items():
                mean = total / count
                if self.accelerator.num_processes > 1:
                    mean = self.accelerator.reduce(mean, reduction="mean")
                logs[key] = round(mean.item(), 8)
            self._term_log = {}
        super().log(logs, start_time)
