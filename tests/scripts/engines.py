"""How tests/scripts/dist_train.py runs each engine on CPU processes (gloo), and how it reads the model back.

- ``single``: one process; the global batch as gradient accumulation over the per-process halves.
- ``ddp``: ``accelerate launch --multi_gpu`` + ``TrainingArguments(use_cpu=True)`` (gloo).
- ``fsdp2``: ``accelerate launch --config_file configs/fsdp2.yaml`` (the GPU config, FSDP2 through
  accelerate's plugin) + ``use_cpu=True``. accelerate 1.15 turns CPU processes into plain DDP
  (``DistributedType.MULTI_CPU``) and ignores the FSDP plugin; :func:`fsdp_on_cpu` makes its state FSDP
  again, so the Trainer goes through accelerate's own ``fsdp2_prepare_model`` (``fully_shard`` on a CPU
  mesh). Test-only: on GPUs accelerate selects FSDP by itself.
- ``zero2`` / ``zero3``: ``TrainingArguments(deepspeed=<dict>)`` with ``DS_ACCELERATOR=cpu``, gloo.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch


def fsdp_on_cpu() -> None:
    """Make accelerate's state FSDP for gloo CPU processes that were given an FSDP plugin (see module doc)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_balora_fsdp_on_cpu", False):
        return

    @functools.wraps(original)
    def init(self, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type  # as accelerate does on GPUs

    init._balora_fsdp_on_cpu = True
    AcceleratorState.__init__ = init


def deepspeed_on_cpu() -> None:
    """Start accelerate's DeepSpeed state on gloo CPU processes.

    ``TrainingArguments(deepspeed=...)`` starts it with no backend (accelerate knows none for a CPU
    DeepSpeed run), and accelerate then counts one process of one: the Trainer's "auto" batch sizes would
    disagree with DeepSpeed's world. Started here first with gloo and the CPU device (and the Trainer told
    to use it: ``accelerator_config={"use_configured_state": True}``), it has the real world size;
    DeepSpeed itself runs on the CPU through ``DS_ACCELERATOR=cpu``. Test-only, like :func:`fsdp_on_cpu`.
    """
    from accelerate.state import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    PartialState(backend="gloo")


def deepspeed_config(stage: int) -> dict[str, Any]:
    """A float32 ZeRO config whose sizes the Trainer fills in ("auto")."""
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    # No optimizer or scheduler section: the Trainer's own AdamW and schedule, as in the one-process run.
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": zero,
            "zero_allow_untested_optimizer": True, "bf16": {"enabled": False}, "fp16": {"enabled": False}}


def engine_arguments(engine: str) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords of ``engine``."""
    if engine in ("single", "ddp", "fsdp2"):
        if engine == "fsdp2":
            fsdp_on_cpu()
        return {"use_cpu": True}
    if engine in ("zero2", "zero3"):
        deepspeed_on_cpu()
        return {"deepspeed": deepspeed_config(int(engine[-1])), "accelerator_config": {"use_configured_state": True}}
    raise SystemExit(f"unknown engine {engine!r}")


def is_sharded(tensor: torch.Tensor) -> bool:
    """A parameter that this process holds only a shard of (FSDP2's DTensor, ZeRO-3's partition)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor) or hasattr(tensor, "ds_id")


def whole(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The full values of ``model``'s parameters ``names`` (a collective under FSDP2 and ZeRO-3)."""
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters())
    out = {}
    for name in names:
        param = params[name]
        if isinstance(param, DTensor):
            out[name] = param.full_tensor().detach().clone()
        elif hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                out[name] = param.detach().clone()
        else:
            out[name] = param.detach().clone()
    return out
