"""Callbacks of an experiment run: representations over training for the t-SNE figures (design §4), the
per-epoch evaluation of label-noise memorisation, and the graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ..training.terms import capture_head_input, find_head, pooled_from_head_input
from .evaluate import predict_nlu

logger = logging.getLogger("balora")


class RepresentationCallback(TrainerCallback):
    """Saves the pooled representation the classifier head reads, on a fixed validation subset, at
    ``checkpoints`` evenly spaced steps (step 0 and the last step included), as
    ``step_XXXXXX.safetensors`` with ``features`` (N, H) float32 and ``labels`` (N,) int64."""

    def __init__(self, dataset: Any, collate: Any, directory: Path, checkpoints: int, max_rows: int = 500,
                 batch_size: int = 64) -> None:
        self.dataset = dataset.select(range(min(max_rows, dataset.num_rows)))
        self.collate, self.directory, self.checkpoints, self.batch_size = collate, directory, checkpoints, batch_size
        self.steps: set[int] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        total = max(state.max_steps, 1)
        count = max(self.checkpoints, 2)
        self.steps = {round(i * total / (count - 1)) for i in range(count)}
        if state.global_step in self.steps:
            self._save(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self._save(model, state.global_step)

    @torch.no_grad()
    def _save(self, model: Any, step: int) -> None:
        from safetensors.torch import save_file

        path = self.directory / f"step_{step:06d}.safetensors"
        if model is None or path.exists() or self.dataset.num_rows == 0:
            return
        name, head = find_head(model)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        features, labels = [], []
        for start in range(0, self.dataset.num_rows, self.batch_size):
            rows = [self.dataset[i] for i in range(start, min(start + self.batch_size, self.dataset.num_rows))]
            batch = {k: v.to(device) for k, v in self.collate(rows).items()}
            labels.append(batch.pop("labels").cpu())
            with capture_head_input(head) as seen:
                model(**batch)
            pooled = pooled_from_head_input(seen[-1], batch.get("attention_mask"), name.endswith("score"))
            features.append(pooled.float().cpu())
        model.train(was_training)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"features": torch.cat(features).contiguous(), "labels": torch.cat(labels).long()}, str(tmp),
                  metadata={"step": str(step)})
        tmp.replace(path)
        logger.debug("saved representations at step %d to %s", step, path)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Every random state a training step reads (Python, NumPy, torch CPU and CUDA) is put back on exit: an
    evaluation in between (its DataLoader draws a seed from torch's generator) changes nothing after it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class EpochEvalCallback(TrainerCallback):
    """At each epoch's end (classification): does the model memorise the noisy labels, and what does it cost?

    Logged through ``trainer.log``, so into ``log_history.json`` with ``epoch`` and ``step``:
    ``epoch_eval/test_accuracy``; over the training rows whose label the noise changed, ``epoch_eval/noisy_fit``
    (share predicted as the corrupted label they are trained on) and ``epoch_eval/noisy_clean`` (share predicted
    as their original label); ``epoch_eval/clean_train_accuracy`` over the other training rows. Without noise,
    no ``noisy_*`` keys. Predictions come from :func:`~balora.experiment.evaluate.predict_nlu` (eval mode, no
    grad, the eval batch size); each module's train/eval mode and every RNG are restored afterwards, so a run
    trains the same model with or without this callback. Set :attr:`trainer` before training (a callback is
    not given its trainer).

    Args:
        test_set, train_set: tokenized splits; ``train_set`` in the order of ``noise_indices`` (its labels are
            the noisy ones the model trains on).
        noise_indices, noise_originals: the changed training rows and their clean labels, aligned.
    """

    PREFIX = "epoch_eval/"

    def __init__(self, test_set: Any, train_set: Any, noise_indices: list[int], noise_originals: list[int]) -> None:
        if len(noise_indices) != len(noise_originals):
            raise ValueError("noise_indices and noise_originals must be aligned")
        self.test_set, self.train_set = test_set, train_set
        self.noisy = np.asarray(noise_indices, dtype=np.int64)
        self.originals = np.asarray(noise_originals, dtype=np.int64)
        self.trainer: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.catch_up(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        """Whole epochs and the end of training; not a part-epoch cut short by a signal (the resumed run
        evaluates that epoch at its real end)."""
        whole = abs((state.epoch or 0.0) - round(state.epoch or 0.0)) < 1e-6
        if whole or state.global_step >= state.max_steps:
            self.trainer.log(self.measure())

    def catch_up(self, state: Any) -> None:
        """A run resumed from a checkpoint written at an epoch's last step (before that epoch's end was
        evaluated): evaluate it now, on the very weights of that moment."""
        epoch = state.epoch or 0.0
        if state.global_step == 0 or epoch < 1 or abs(epoch - round(epoch)) > 1e-6:
            return
        key = f"{self.PREFIX}test_accuracy"
        if not any(key in entry and abs(entry.get("epoch", -1) - epoch) < 1e-6 for entry in state.log_history):
            self.trainer.log(self.measure())

    def measure(self) -> dict[str, float]:
        """The ``epoch_eval/*`` values of the model as it is now."""
        model = self.trainer.model
        modes = [(module, module.training) for module in model.modules()]
        try:
            with preserved_rng(), torch.no_grad():
                test_out, test_labels = predict_nlu(self.trainer, self.test_set)
                train_out, train_labels = predict_nlu(self.trainer, self.train_set)
        finally:
            for module, mode in modes:
                module.training = mode
        test_classes, train_classes = test_out.argmax(-1), train_out.argmax(-1)
        values = {"test_accuracy": np.mean(test_classes == test_labels)}
        clean = np.ones(len(train_classes), dtype=bool)
        clean[self.noisy] = False
        if self.noisy.size:
            values["noisy_fit"] = np.mean(train_classes[self.noisy] == train_labels[self.noisy])
            values["noisy_clean"] = np.mean(train_classes[self.noisy] == self.originals)
        if clean.any():
            values["clean_train_accuracy"] = np.mean(train_classes[clean] == train_labels[clean])
        return {f"{self.PREFIX}{name}": round(float(value), 6) for name, value in values.items()}


class GracefulStop(TrainerCallback):
    """SIGINT/SIGTERM during training: finish the current step, write a checkpoint, stop cleanly.

    A second signal exits at once (exit code 130). Install with :meth:`installed` around ``trainer.train``.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        import os
        import signal
        import sys

        if self.signal_name is not None:  # the second signal: no more waiting
            print("balora: second signal, exiting now", file=sys.stderr)
            os._exit(130)
        self.signal_name = signal.Signals(signum).name
        print(f"balora: {self.signal_name} received: writing a checkpoint after this step "
              "(send it again to exit at once)", file=sys.stderr)

    def installed(self):
        import contextlib
        import signal
        import threading

        @contextlib.contextmanager
        def context():
            if threading.current_thread() is not threading.main_thread():
                yield self
                return
            previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            for s in previous:
                signal.signal(s, self._handle)
            try:
                yield self
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

        return context()

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal_name is not None:
            control.should_save = True
            control.should_training_stop = True
