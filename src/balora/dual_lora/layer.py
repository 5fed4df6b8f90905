"""peft glue for Dual LoRA: a LoRA ``Linear`` layer with a registered variant (design §3 and §7).

Parameter layout (per adapter), chosen so that peft's own state-dict, device and requires-grad handling
applies unchanged:

- magnitude group: ``lora_A`` (r1, d_in), ``lora_B`` (d_out, r1)
- direction group: ``lora_C`` (r2, d_in), ``lora_D`` (d_out, r2)
- ``lora_warmup``: a persistent scalar buffer, the warm-up factor min(1, step / warmup_steps); it is part
  of the adapter's state dict, so a saved adapter reproduces the update it was saved with.

``scaling`` is alpha / sqrt(r1 * r2). The update itself is computed by :mod:`.functional`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant

from ..peft_compat import BufferDict
from . import functional


class DualLoraLinearVariant(LoraVariant):
    """Forward, merge and unmerge of ΔW = scale · ReLU(B·A) ⊙ Sign(D·C) · warm-up."""

    def supports_lora_conversion(self) -> bool:
        # ΔW is close to full rank: it has no faithful plain-LoRA form (design §3).
        return False

    @staticmethod
    def init(module: DualLoraLinear, adapter_name: str, config: Any = None, **kwargs: Any) -> None:
        r1, r2 = config.r1, config.r2
        weight = module.get_base_layer().weight
        factory = {"device": weight.device, "dtype": module.lora_A[adapter_name].weight.dtype}
        module.lora_C[adapter_name] = nn.Linear(module.in_features, r2, bias=False, **factory)
        module.lora_D[adapter_name] = nn.Linear(r2, module.out_features, bias=False, **factory)
        # All four Gaussian: a zero matrix would block ReLU's gradient or give ΔW != 0 through Sign(0) = -1.
        with torch.no_grad():
            std_in = 1.0 / math.sqrt(module.in_features)
            nn.init.normal_(module.lora_A[adapter_name].weight, std=std_in)
            nn.init.normal_(module.lora_C[adapter_name].weight, std=std_in)
            nn.init.normal_(module.lora_B[adapter_name].weight, std=config.init_std)
            nn.init.normal_(module.lora_D[adapter_name].weight, std=config.init_std)
        start = 1.0 if config.warmup_steps == 0 else 0.0
        module.lora_warmup[adapter_name] = torch.tensor(start, device=weight.device, dtype=torch.float32)
        module.scaling[adapter_name] = module.lora_alpha[adapter_name] / math.sqrt(r1 * r2)
        module.dual_warmup_steps[adapter_name] = config.warmup_steps
        module.dual_sign_grad[adapter_name] = getattr(config, "sign_grad", "clip")

    @staticmethod
    def merge_safe(module: DualLoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: DualLoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: DualLoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight.data - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(
        module: DualLoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        A, B, C, D = module.dual_factors(active_adapter)
        x = module.lora_dropout[active_adapter](x)
        update = functional.dual_lora_forward(x, A, B, C, D, module.scaling[active_adapter],
                                              module.dual_sign_grad[active_adapter])
        # The warm-up factor multiplies the output as a tensor: no host sync in the training step.
        factor = module.lora_warmup[active_adapter].to(update.dtype)
        return result + (update * factor).to(result.dtype)


class DualLoraLinear(LoraLinear):
    """peft LoRA ``Linear`` with Dual LoRA's extra direction group, registered for ``nn.Linear``."""

    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_C", "lora_D")
    other_param_names = LoraLayer.other_param_names + ("lora_warmup", "dual_warmup_steps", "dual_sign_grad")

    @property
    def lora_variants(self) -> dict:
        return {("use_dual_lora",): DualLoraLinearVariant}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: Any, **kwargs: Any) -> None:
        if "lora_C" not in self._modules:  # first adapter: the containers peft's LoraLayer does not make
            self.lora_C = nn.ModuleDict({})
            self.lora_D = nn.ModuleDict({})
            self.lora_warmup = BufferDict(persistent=True)
            self.dual_warmup_steps: dict[str, int] = {}
            self.dual_sign_grad: dict[str, str] = {}  # Sign's straight-through variant (functional.SIGN_GRADS)
        # lora_A / lora_B hold the magnitude group, of rank r1 (config.r is r1 + r2).
        super().update_layer(adapter_name, config.r1, lora_alpha, config=config, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """peft's forward, except that one active Dual LoRA adapter over a frozen ``nn.Linear`` is folded
        into the base matmul (:func:`~.functional.dual_lora_linear`: two large matmuls less per step)."""
        adapter = self._foldable_adapter(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        A, B, C, D = self.dual_factors(adapter)
        return functional.dual_lora_linear(x, base.weight, base.bias, A, B, C, D, self.scaling[adapter],
                                           self.lora_warmup[adapter], self.dual_sign_grad[adapter])

    def _foldable_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The adapter to fold into the base matmul, or None where peft's own path must run: extra forward
        arguments, adapters disabled or merged, several active adapters, dropout, a base layer that is not a
        plain frozen nn.Linear (quantized, trained, ZeRO-3 partitioned), or dtypes that peft would cast between."""
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] not in self.lora_C:
            return None
        adapter, base = active[0], self.get_base_layer()
        if type(base) is not nn.Linear or base.weight.requires_grad or (
                base.bias is not None and base.bias.requires_grad):
            return None
        if hasattr(base.weight, "ds_id"):  # DeepSpeed ZeRO-3 partitions W outside its own linear function
            return None
        if not isinstance(self.lora_dropout[adapter], nn.Identity):
            return None
        dtype = self.lora_A[adapter].weight.dtype
        return adapter if base.weight.dtype == dtype and x.dtype == dtype else None

    def dual_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weights (A, B, C, D) of one adapter, shapes (r1,d_in), (d_out,r1), (r2,d_in), (d_out,r2)."""
        return (
            self.lora_A[adapter_name].weight,
            self.lora_B[adapter_name].weight,
            self.lora_C[adapter_name].weight,
            self.lora_D[adapter_name].weight,
        )

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """ΔW (d_out, d_in) including the warm-up factor; float32 on the CPU for half-precision weights."""
        A, B, C, D = self.dual_factors(adapter)
        dtype = A.dtype
        if A.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            A, B, C, D = (t.float() for t in (A, B, C, D))
        factor = self.lora_warmup[adapter].to(A.dtype)
        delta = functional.delta_weight(A, B, C, D, self.scaling[adapter], self.dual_sign_grad[adapter]) * factor
        return delta.to(dtype)

    def set_warmup_step(self, adapter: str, step: int) -> None:
        """Set the warm-up factor min(1, step / warmup_steps) for ``adapter``."""
        steps = self.dual_warmup_steps[adapter]
        value = 1.0 if steps == 0 else min(1.0, max(0, step) / steps)
        self.lora_warmup[adapter].fill_(value)

    def unscale_layer(self, scale: float | None = None) -> None:
        if scale is not None:
            return super().unscale_layer(scale)
        for adapter in self.active_adapters:
            if adapter in self.lora_C:
                r1, r2 = self.r[adapter], self.lora_C[adapter].out_features
                self.scaling[adapter] = self.lora_alpha[adapter] / math.sqrt(r1 * r2)
        return None

    def __repr__(self) -> str:
        return "balora.dual_lora." + super().__repr__().removeprefix("lora.")
