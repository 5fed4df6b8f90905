"""PiSSA's shareable export computed from a whole state dict, for sharded training (FSDP2, DeepSpeed).

Under FSDP2 the model's parameters are shards (DTensors) and the Trainer hands the export a state dict
gathered on the main process. peft's own conversion (``path_initial_model_for_weight_conversion``) loads
the initial adapter INTO the model and reads the model's tensors, which a sharded model cannot do on one
process; this writes the same files from the gathered tensors alone, without touching the model:

    ΔW = s·B·A − s·B0·A0 = s·[B | −B0]·[A ; A0]   (rank 2r, alpha 2·alpha: the same scale s)

Key names, tensor layout and ``adapter_config.json`` are peft's, so stock peft loads the result onto the
ORIGINAL base exactly as it loads peft's own conversion (tests/test_distributed.py compares the files).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from ..errors import ModelError


def converted_state_dict(model: PeftModel, state_dict: dict[str, torch.Tensor],
                         initial: str) -> dict[str, torch.Tensor]:
    """The rank-2r LoRA tensors (peft's file keys) of adapter ``default`` minus adapter ``initial``.

    ``state_dict``: the whole model's state dict (plain tensors). Non-LoRA entries of the adapter (a
    trained classification head) are kept as they are.
    """
    trained = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name="default")
    start = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=initial)
    if not start:
        raise ModelError("the gathered state dict has no initial PiSSA adapter (DeepSpeed ZeRO-3 gathers the "
                         "trainable parameters only), so no plain-LoRA export can be written; use ZeRO-2 or FSDP2, "
                         "or save the raw adapter with save_pretrained(dir, convert_pissa=False).")
    out = {}
    for key, value in trained.items():
        if ".lora_A." in key:  # (r, d_in) over (r, d_in) -> (2r, d_in)
            value = torch.cat([value, start[key]], dim=0)
        elif ".lora_B." in key:  # (d_out, r) beside (d_out, r) -> (d_out, 2r)
            value = torch.cat([value, -start[key]], dim=1)
        out[key] = value.detach().contiguous()
    return out


def export_from_state_dict(model: PeftModel, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor],
                           initial: str, is_main_process: bool = True, **_: Any) -> None:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` of the converted adapter (main process)."""
    if not is_main_process:
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(converted_state_dict(model, state_dict, initial), str(directory / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    config = copy.deepcopy(model.peft_config["default"])
    config.init_lora_weights = True
    config.inference_mode = True
    config.r *= 2
    config.lora_alpha *= 2**0.5 if config.use_rslora else 2  # s = alpha/r (or alpha/√r) is unchanged
    config.rank_pattern = {k: 2 * v for k, v in (config.rank_pattern or {}).items()}
    config.alpha_pattern = {k: 2 * v for k, v in (config.alpha_pattern or {}).items()}
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = model.base_model.model.__dict__.get("name_or_path") or None
    config.save_pretrained(str(directory))
    model.create_or_update_model_card(str(directory))
