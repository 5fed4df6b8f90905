"""Loading adapters the way peft users expect (design §1 and §7); saving is each method's export.

``model.save_pretrained(dir)`` on a model from :func:`balora.adapt` writes what users share:

- ``lora``, ``dora``: peft's own files; stock peft loads them.
- ``pissa``, ``ba-lora``: peft's conversion ΔW = B·A - B0·A0 as a rank-2r LoRA that stock peft loads onto
  the ORIGINAL base model (``save_pretrained(dir, convert_pissa=False)`` writes the raw state instead).
- ``dual-lora``: ``adapter_model.safetensors`` plus ``balora_adapter.json`` (the full config), and
  deliberately no ``adapter_config.json``: a near-full-rank ΔW has no plain-LoRA form.
- ``full``: transformers' ``save_pretrained``.

Every adapter directory also gets ``balora_adapter.json`` (:mod:`balora.adapter_file`), which names the
method; :func:`load` dispatches on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from .adapter_checks import checked_load
from .adapter_file import BALORA_FILE, read_balora_file
from .errors import ModelError
from .methods import get_method


def load(base_model: nn.Module, path: str | os.PathLike, is_trainable: bool = False,
         allow_other_base: bool = False) -> nn.Module:
    """Load an adapter saved by balora (any method) or by stock peft onto ``base_model``.

    ``base_model`` is the ORIGINAL pre-trained model (for PiSSA/BA-LoRA too: their saved form is a plain
    LoRA on W). For ``full`` the directory holds a whole model and its weights replace ``base_model``'s.
    The adapter is validated (:mod:`balora.adapter_checks`); ``allow_other_base=True`` accepts a base whose
    name differs from the one the adapter names, when the shapes match.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"adapter directory {str(path)!r} does not exist.")
    info = read_balora_file(path)
    if info is not None and info.get("method"):
        method = info["method"]
    elif (path / "adapter_config.json").is_file():
        method = "lora"  # a stock peft adapter
    elif (path / "model.safetensors").is_file() or any(path.glob("model-*.safetensors")):
        method = "full"
    elif (path / "adapter_model.bin").is_file() or (path / "pytorch_model.bin").is_file():
        raise ModelError(f"{path} holds only pickle (.bin) weights; balora loads safetensors only.")
    else:
        raise ModelError(
            f"{path} holds no adapter: expected adapter_config.json (peft), {BALORA_FILE} (balora) "
            "or model.safetensors (full fine-tuning)."
        )
    return checked_load(base_model, path, lambda: get_method(method).load(base_model, path, info, is_trainable),
                        allow_other_base)


__all__ = ["load", "read_balora_file"]
