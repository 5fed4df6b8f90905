"""Callbacks of an experiment run: representations over training for the t-SNE figures (design §4)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..training.terms import capture_head_input, find_head, pooled_from_head_input

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
