"""``full``: every weight trained; the model itself is returned (no peft).

The pre-trained view needs the initial weights: :meth:`FullMethod.prepare_reference` keeps a detached
copy (the unavoidable price of a reference for full training), and :meth:`FullMethod.reference` swaps
it into the parameters for the block — a pointer swap of each parameter's storage, no copy, no
change to ``forward`` — and swaps the trained values back on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, ModelError
from ..quantize import is_quantized
from .base import Method
from .options import AdapterOptions

_SNAPSHOT_ATTR = "_balora_initial_state"


class FullMethod(Method):
    """Full fine-tuning: the baseline with no adapter."""

    name = "full"
    default_learning_rate = 3e-5

    def adapt(self, model: nn.Module, r: int = 16, lora_alpha: float | None = None,
              target_modules: list[str] | str = "all-linear", *, keep_reference: bool = False,
              **options: Any) -> nn.Module:
        if options.get("quantize") is not None or is_quantized(model):
            raise ConfigError("method 'full' trains every weight and quantized weights cannot be trained; "
                              "use an adapter method (e.g. 'lora') with quantize=.")
        options.pop("quantize", None)
        if options:
            raise ConfigError(f"method 'full' takes no adapter options, got: {', '.join(sorted(options))}.")
        model.requires_grad_(True)
        if keep_reference:
            self.prepare_reference(model)
        return self.tag(model)

    def adapt_kwargs(self, options: AdapterOptions, total_steps: int) -> dict[str, Any]:
        return {}

    def prepare_reference(self, model: nn.Module) -> None:
        inner = getattr(model, "module", model)
        if not hasattr(inner, _SNAPSHOT_ATTR):
            state = {name: p.detach().clone() for name, p in inner.named_parameters(remove_duplicate=False)}
            # outside nn.Module's registries: not trained, not saved, not moved by .to()
            object.__setattr__(inner, _SNAPSHOT_ATTR, state)

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[None]:
        state = getattr(model, _SNAPSHOT_ATTR, None)
        if state is None:
            raise ConfigError("as_pretrained() on a 'full' model needs its initial weights: "
                              "adapt(model, method='full', keep_reference=True).")
        params = dict(model.named_parameters(remove_duplicate=False))
        swapped = []
        try:
            with torch.no_grad():
                for name, initial in state.items():
                    param = params[name]
                    if any(param is p for p, _ in swapped):  # tied weights: one swap per parameter
                        continue
                    trained = param.data
                    param.data = initial
                    swapped.append((param, trained))
            yield
        finally:
            for param, trained in swapped:
                param.data = trained

    def load(self, base_model: nn.Module, path: Path, info: dict[str, Any] | None, is_trainable: bool) -> nn.Module:
        from safetensors.torch import load_file

        state: dict = {}
        for file in sorted(path.glob("model*.safetensors")):
            state.update(load_file(str(file)))
        missing, unexpected = base_model.load_state_dict(state, strict=False)
        tied = set(getattr(base_model, "_tied_weights_keys", None) or [])
        missing = [k for k in missing if k not in tied]
        if unexpected or len(missing) == len(base_model.state_dict()):
            raise ModelError(f"weights in {path} do not fit this base model (unexpected keys: {unexpected[:3]}).")
        base_model.requires_grad_(is_trainable)
        return self.tag(base_model)
