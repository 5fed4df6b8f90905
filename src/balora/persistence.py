"""Saving and loading adapters the way peft users expect (SPEC sections 1 and 7).

- ``lora``, ``dora``: peft's own files; stock peft loads them.
- ``pissa``, ``ba-lora``: PiSSA changed the base weights, so ``save_pretrained`` runs peft's conversion
  ΔW = B·A - B0·A0 written as a rank-2r LoRA (``path_initial_model_for_weight_conversion``) from the
  initial adapter kept in memory: stock peft loads the result onto the ORIGINAL base model, no SVD runs
  at load time. ``save_pretrained(dir, convert_pissa=False)`` writes the raw training state instead
  (checkpoints, where the residual base must be rebuilt on resume).
- ``dual-lora``: ``adapter_model.safetensors`` (peft's state dict: lora_A/B/C/D and the warm-up buffer)
  plus ``balora_adapter.json`` (the full config). There is deliberately no ``adapter_config.json``:
  a near-full-rank ΔW has no plain-LoRA form, and stock peft must refuse it rather than load it wrong.

Every directory also gets ``balora_adapter.json`` with ``{"format": 1, "method": ..., "peft_config": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.nn as nn
from peft import LoraConfig, PeftModel

from .atomic import write_json_atomic
from .errors import ModelError
from .methods import INITIAL_ADAPTER, PISSA_METHODS, method_of

BALORA_FILE = "balora_adapter.json"
FORMAT_VERSION = 1
_EXPORT_NAME = "balora_initial_export"


class BaloraPeftModelMixin:
    """Adds balora's saving rules to a peft model class (see the module docstring)."""

    balora_method: str

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args: Any, convert_pissa: bool | None = None, **kwargs: Any
    ) -> None:
        """Save the adapter; PiSSA/BA-LoRA are converted to a plain LoRA unless ``convert_pissa=False``.

        Inside :func:`checkpoint_saving` (the trainer's checkpoints) the raw training state is written
        instead, with the initial adapter beside it, so training can resume exactly.
        """
        save_directory = os.fspath(save_directory)
        checkpointing = getattr(self, "_balora_checkpointing", False)
        if convert_pissa is None:
            convert_pissa = not checkpointing
        method = self.balora_method
        default_selection = ["default", INITIAL_ADAPTER] if checkpointing and INITIAL_ADAPTER in self.peft_config \
            else ["default"]
        kwargs.setdefault("selected_adapters", default_selection)
        if method in PISSA_METHODS and convert_pissa and "path_initial_model_for_weight_conversion" not in kwargs:
            with tempfile.TemporaryDirectory() as tmp:
                super().save_pretrained(tmp, selected_adapters=[INITIAL_ADAPTER])
                initial = os.path.join(tmp, _EXPORT_NAME)
                os.rename(os.path.join(tmp, INITIAL_ADAPTER), initial)
                super().save_pretrained(
                    save_directory, *args, path_initial_model_for_weight_conversion=initial, **kwargs
                )
            if kwargs.get("is_main_process", True):
                self._restore_non_lora_weights(save_directory)
        else:
            super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            converted = method in PISSA_METHODS and convert_pissa
            _write_balora_file(save_directory, method, self.peft_config["default"], pissa_converted=converted)

    def _restore_non_lora_weights(self, save_directory: str) -> None:
        """Put back what peft's PiSSA conversion drops (peft 0.21 keeps only lora_A/lora_B entries).

        Without this a trained classification head (``modules_to_save``) would be lost from the file.
        """
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import load_file, save_file

        extra = {k: v for k, v in get_peft_model_state_dict(self).items() if "lora_" not in k}
        if not extra:
            return
        file = Path(save_directory) / "adapter_model.safetensors"
        tensors = load_file(str(file))
        tensors.update({k: v.detach().contiguous() for k, v in extra.items() if k not in tensors})
        tmp = file.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, file)


def _write_balora_file(directory: str, method: str, config: LoraConfig, pissa_converted: bool) -> None:
    info = {
        "format": FORMAT_VERSION,
        "method": method,
        "pissa_converted": pissa_converted,
        "peft_config": config.to_dict(),
    }
    write_json_atomic(Path(directory) / BALORA_FILE, info)


@contextlib.contextmanager
def checkpoint_saving(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model.save_pretrained`` writes resumable raw state (no PiSSA conversion)."""
    model._balora_checkpointing = True
    try:
        yield
    finally:
        model._balora_checkpointing = False


@contextlib.contextmanager
def keeping_pissa_residual(peft_model: PeftModel) -> Iterator[None]:
    """Inside the block the initial adapter (B0, A0) may be replaced (e.g. loaded from a checkpoint);
    on exit each base weight is shifted by s·B0'·A0' - s·B0·A0, so that W_res + s·B0·A0 is unchanged.

    A resumed PiSSA/BA-LoRA run re-runs the SVD, which need not give bit-identical factors on every
    device; with the checkpoint's (B0, A0) loaded in this block, W_res becomes the checkpoint's too, and
    the reference and the trained model continue exactly. Keeps only adapter-sized copies.
    """
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import transpose

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and INITIAL_ADAPTER in m.lora_A]
    before = [(m.lora_A[INITIAL_ADAPTER].weight.detach().clone(), m.lora_B[INITIAL_ADAPTER].weight.detach().clone())
              for m in layers]
    yield
    with torch.no_grad():
        for module, (a_old, b_old) in zip(layers, before, strict=True):
            if torch.equal(a_old, module.lora_A[INITIAL_ADAPTER].weight) and \
                    torch.equal(b_old, module.lora_B[INITIAL_ADAPTER].weight):
                continue
            old = transpose(b_old.float() @ a_old.float(), module.fan_in_fan_out) * module.scaling[INITIAL_ADAPTER]
            new = module.get_delta_weight(INITIAL_ADAPTER).float()
            weight = module.get_base_layer().weight
            weight += (old - new).to(weight.dtype)


_CLASS_CACHE: dict[type, type] = {}


def enable_balora_saving(peft_model: PeftModel, method: str) -> PeftModel:
    """Give ``peft_model`` balora's saving rules (a cached subclass of its own peft class)."""
    cls = type(peft_model)
    if not issubclass(cls, BaloraPeftModelMixin):
        if cls not in _CLASS_CACHE:
            _CLASS_CACHE[cls] = type(f"Balora{cls.__name__}", (BaloraPeftModelMixin, cls), {"__module__": __name__})
        peft_model.__class__ = _CLASS_CACHE[cls]
    peft_model.balora_method = method
    return peft_model


def read_balora_file(path: str | os.PathLike) -> dict[str, Any] | None:
    file = Path(path) / BALORA_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file} is not valid JSON ({exc}); the adapter directory is damaged.") from exc


def load(base_model: nn.Module, path: str | os.PathLike, is_trainable: bool = False) -> nn.Module:
    """Load an adapter saved by balora (any method) or by stock peft onto ``base_model``.

    ``base_model`` is the ORIGINAL pre-trained model (for PiSSA/BA-LoRA too: their saved form is a plain
    LoRA on W). For ``full`` the directory holds a whole model and its weights replace ``base_model``'s.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"adapter directory {str(path)!r} does not exist.")
    info = read_balora_file(path)
    if info is not None and info.get("method") == "dual-lora":
        return _load_dual_lora(base_model, path, info, is_trainable)
    if (path / "adapter_config.json").is_file():
        return _load_peft(base_model, path, info, is_trainable)
    if (path / "model.safetensors").is_file() or any(path.glob("model-*.safetensors")):
        return _load_full(base_model, path, is_trainable)
    if (path / "adapter_model.bin").is_file() or (path / "pytorch_model.bin").is_file():
        raise ModelError(f"{path} holds only pickle (.bin) weights; balora loads safetensors only.")
    raise ModelError(
        f"{path} holds no adapter: expected adapter_config.json (peft), {BALORA_FILE} (balora) "
        "or model.safetensors (full fine-tuning)."
    )


def _check_weights_file(path: Path) -> None:
    if not (path / "adapter_model.safetensors").is_file():
        if (path / "adapter_model.bin").is_file():
            raise ModelError(f"{path} holds only adapter_model.bin (pickle); balora loads safetensors only.")
        raise ModelError(f"{path} has no adapter_model.safetensors; the adapter is incomplete.")


def _load_peft(base_model: nn.Module, path: Path, info: dict | None, is_trainable: bool) -> PeftModel:
    _check_weights_file(path)
    try:
        model = PeftModel.from_pretrained(base_model, path, is_trainable=is_trainable)
    except RuntimeError as exc:  # size mismatch: an adapter made for another base model
        raise ModelError(f"adapter {path} does not fit this base model: {str(exc).splitlines()[0]}") from exc
    method = (info or {}).get("method", "lora")
    # A converted PiSSA/BA-LoRA adapter is a plain LoRA on the original weights.
    loaded_method = "lora" if method in PISSA_METHODS and (info or {}).get("pissa_converted", True) else method
    return enable_balora_saving(model, loaded_method)


def _load_dual_lora(base_model: nn.Module, path: Path, info: dict, is_trainable: bool) -> PeftModel:
    from .dual_lora import DualLoraConfig

    _check_weights_file(path)
    fields = dict(info["peft_config"])
    fields.pop("peft_type", None)
    known = DualLoraConfig.__dataclass_fields__
    config = DualLoraConfig(**{k: v for k, v in fields.items() if k in known})
    config.inference_mode = not is_trainable
    try:
        model = PeftModel.from_pretrained(base_model, path, config=config, is_trainable=is_trainable)
    except RuntimeError as exc:
        raise ModelError(f"adapter {path} does not fit this base model: {str(exc).splitlines()[0]}") from exc
    return enable_balora_saving(model, "dual-lora")


def _load_full(base_model: nn.Module, path: Path, is_trainable: bool) -> nn.Module:
    from safetensors.torch import load_file

    files = sorted(path.glob("model*.safetensors"))
    state: dict = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = base_model.load_state_dict(state, strict=False)
    tied = set(getattr(base_model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if unexpected or len(missing) == len(base_model.state_dict()):
        raise ModelError(f"weights in {path} do not fit this base model (unexpected keys: {unexpected[:3]}).")
    base_model.requires_grad_(is_trainable)
    base_model.balora_method = "full"
    return base_model


__all__ = ["load", "enable_balora_saving", "BaloraPeftModelMixin", "read_balora_file", "method_of"]
