"""``pissa`` and ``ba-lora``: a LoRA adapter initialised from the principal singular vectors of W.

PiSSA moves the top-r singular part of each targeted weight into the adapter, B0·A0 = (1/s)·U_r S_r V_rᵀ,
and leaves W_res = W - s·B0·A0 in the base layer (peft's ``init_lora_weights="pissa"``, or
``"pissa_niter_K"`` for the randomized SVD). The initial adapter (B0, A0) is kept as a second, frozen
peft adapter :data:`INITIAL_ADAPTER`; it costs adapter-sized memory and gives three things without a
second model:

- the pre-trained view: every peft layer routed to (B0, A0) computes W_res·x + s·B0·A0·x = W·x, and the
  head falls back to its original copy (:meth:`PissaMethod.reference`);
- the shareable export: peft's conversion ΔW = B·A - B0·A0 written as a rank-2r LoRA that stock peft
  loads onto the ORIGINAL base (:meth:`PissaMethod.export`);
- exact resume: checkpoints keep (B0, A0), and W_res follows the checkpoint's copy even if a re-run SVD
  came out differently (:meth:`PissaMethod.resuming`).

``ba-lora`` is PiSSA plus the regularizers: its only difference is :meth:`BALoraMethod.default_preset`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

from .. import peft_compat
from ..adapter_file import write_balora_file
from ..errors import ConfigError
from ..pissa_init import DEFAULT_NITER, DEFAULT_OVERSAMPLE, apply_pissa_init
from ..quantize import add_to_weight, is_quantized
from .base import AdapterMethod, get_method, quantized_base, save_peft_files
from .options import AdapterOptions
from .pissa_convert import export_from_state_dict

INITIAL_ADAPTER = "balora_initial"
DEFAULT_PISSA_NITER = DEFAULT_NITER
DEFAULT_PISSA_OVERSAMPLE = DEFAULT_OVERSAMPLE
_SVD_ATTR = "_balora_pissa_svd"  # (niter, oversample) of balora's own randomized SVD, on the LoraConfig object


class PissaMethod(AdapterMethod):
    """PiSSA (Meng et al.): LoRA initialised from the SVD of W, the residual left frozen."""

    name = "pissa"
    reads: ClassVar[frozenset[str]] = AdapterMethod.reads | {"pissa_niter", "pissa_oversample"}
    own_options = ("pissa_niter", "pissa_oversample")

    def adapt_kwargs(self, options: AdapterOptions, total_steps: int) -> dict[str, Any]:
        return {**options.common_kwargs(), "pissa_niter": options.pissa_niter or None,
                "pissa_oversample": options.pissa_oversample}

    def peft_config(self, model: nn.Module, r: int = 16, lora_alpha: float | None = None,
                    target_modules: list[str] | str = "all-linear", *, pissa_niter: int | None = DEFAULT_PISSA_NITER,
                    pissa_oversample: int = DEFAULT_PISSA_OVERSAMPLE, **options: Any) -> LoraConfig:
        """peft's own PiSSA init for the exact SVD (``pissa_niter=None``) and without oversampling
        (``pissa_oversample=0``: peft's ``pissa_niter_K``); otherwise a plain LoRA config that
        :meth:`build_peft_model` turns into PiSSA with the oversampled randomized SVD (:mod:`balora.pissa_init`:
        >= 99 % of the exact top-r singular-value mass where peft's ``pissa_niter_4`` gets ~95 %)."""
        if pissa_niter is not None and pissa_niter < 0:
            raise ConfigError(f"pissa_niter must be >= 0 or None (exact SVD), got {pissa_niter}.")
        if pissa_oversample < 0:
            raise ConfigError(f"pissa_oversample must be >= 0, got {pissa_oversample}.")
        randomized = bool(pissa_niter) and pissa_oversample > 0
        init = "pissa" if not pissa_niter else (True if randomized else f"pissa_niter_{pissa_niter}")
        config = super().peft_config(model, r, lora_alpha, target_modules, init_lora_weights=init, **options)
        if randomized:
            object.__setattr__(config, _SVD_ATTR, (pissa_niter, pissa_oversample))
        return config

    def build_peft_model(self, model: nn.Module, config: LoraConfig, keep_name: bool = False) -> PeftModel:
        """peft's model, then balora's randomized SVD where the config asks for it (once per config object)."""
        svd = config.__dict__.pop(_SVD_ATTR, None)
        peft_model = super().build_peft_model(model, config, keep_name)
        if svd is not None:
            apply_pissa_init(peft_model, "default", *svd)
        return peft_model

    def build_quantized(self, model: nn.Module, config: LoraConfig, kind: str | None) -> PeftModel:
        """QPiSSA in one call: the SVD on the full-precision W, then the residual W_res quantized.

        peft's PiSSA initialisation runs on ``model`` as it is; (A0, B0) are kept, the adapter is taken off
        (the base layers now hold W_res), the frozen linear layers are quantized, and a fresh adapter over
        the quantized base receives (A0, B0). The step-0 model is Q(W_res) + s·B0·A0 (design §9).
        """
        if kind is None:
            raise ConfigError(f"method {self.name!r} runs its SVD on full-precision weights: load the model in "
                              f"full precision and pass quantize='nf4' or 'int8' to balora.adapt (QPiSSA).")
        if is_quantized(model):
            raise ConfigError("the model is already quantized; drop quantize= or load it in full precision.")
        full = self.build_peft_model(model, copy.deepcopy(config))
        config.__dict__.pop(_SVD_ATTR, None)  # the SVD ran on the full-precision copy
        factors = {name: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
                   for name, m in full.named_modules() if isinstance(m, LoraLayer)}
        base = full.unload()  # the base layers keep W_res
        quantized_base(base, config, kind)
        init, config.init_lora_weights = config.init_lora_weights, True  # no SVD of Q(W_res): (A0, B0) go in
        peft_model = self.build_peft_model(base, config)
        peft_model.peft_config["default"].init_lora_weights = init
        with torch.no_grad():
            for name, module in peft_model.named_modules():
                if isinstance(module, LoraLayer):
                    module.lora_A["default"].weight.copy_(factors[name][0])
                    module.lora_B["default"].weight.copy_(factors[name][1])
        self.initialise(peft_model)
        return peft_model

    def initialise(self, peft_model: PeftModel) -> None:
        """Keep (A0, B0) as the frozen, inactive adapter :data:`INITIAL_ADAPTER` (a plain LoRA holder)."""
        config = copy.deepcopy(peft_model.peft_config["default"])
        config.init_lora_weights = True  # adding the holder must not run the SVD on W_res again
        config.inference_mode = True
        peft_model.add_adapter(INITIAL_ADAPTER, config)
        with torch.no_grad():
            for module in peft_model.modules():
                lora_a = getattr(module, "lora_A", None)
                if isinstance(lora_a, nn.ModuleDict) and INITIAL_ADAPTER in lora_a:
                    lora_a[INITIAL_ADAPTER].weight.copy_(lora_a["default"].weight)
                    module.lora_B[INITIAL_ADAPTER].weight.copy_(module.lora_B["default"].weight)
        peft_model.base_model.set_requires_grad(INITIAL_ADAPTER, requires_grad=False)

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[None]:
        with peft_compat.routed_to_adapter(model, INITIAL_ADAPTER):
            yield

    def export(self, model: PeftModel, directory: str | os.PathLike, *args: Any,
               convert_pissa: bool = True, **kwargs: Any) -> None:
        """peft's PiSSA conversion from the initial adapter kept in memory (``convert_pissa=False``: raw).

        Given ``state_dict`` (the whole model's, gathered by the Trainer under FSDP2 or DeepSpeed), the same
        files come from those tensors alone (:mod:`.pissa_convert`): a sharded model is never touched."""
        if not convert_pissa or "path_initial_model_for_weight_conversion" in kwargs:
            return self._save_raw(model, directory, ["default"], *args, **kwargs)
        if kwargs.get("state_dict") is not None:
            export_from_state_dict(model, directory, initial=INITIAL_ADAPTER, **kwargs)
            if kwargs.get("is_main_process", True):
                write_balora_file(directory, self.name, model.peft_config["default"], pissa_converted=True)
            return None
        kwargs.setdefault("selected_adapters", ["default"])
        with tempfile.TemporaryDirectory() as tmp:
            save_peft_files(model, tmp, selected_adapters=[INITIAL_ADAPTER])
            initial = os.path.join(tmp, "balora_initial_export")
            os.rename(os.path.join(tmp, INITIAL_ADAPTER), initial)
            save_peft_files(model, directory, *args, path_initial_model_for_weight_conversion=initial, **kwargs)
        if kwargs.get("is_main_process", True):
            _restore_non_lora_weights(model, directory)
            write_balora_file(directory, self.name, model.peft_config["default"], pissa_converted=True)

    def save_checkpoint(self, model: PeftModel, directory: str | os.PathLike, **kwargs: Any) -> None:
        """The raw adapter and (B0, A0) beside it: W_res is rebuilt from them on resume."""
        self._save_raw(model, directory, ["default", INITIAL_ADAPTER], **kwargs)

    def _save_raw(self, model: PeftModel, directory: str | os.PathLike, adapters: list[str], *args: Any,
                  **kwargs: Any) -> None:
        kwargs.setdefault("selected_adapters", adapters)
        save_peft_files(model, directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_balora_file(directory, self.name, model.peft_config["default"], pissa_converted=False)

    @contextlib.contextmanager
    def resuming(self, model: nn.Module) -> Iterator[None]:
        """Inside the block (B0, A0) may be replaced (by the checkpoint's); on exit each base weight is
        shifted by s·B0·A0 - s·B0'·A0', so that W_res + s·B0·A0 = W is unchanged. Adapter-sized copies only.
        """
        from peft.utils.other import transpose

        layers = [m for m in model.modules() if isinstance(m, LoraLayer) and INITIAL_ADAPTER in m.lora_A]
        before = [(m.lora_A[INITIAL_ADAPTER].weight.detach().clone(),
                   m.lora_B[INITIAL_ADAPTER].weight.detach().clone()) for m in layers]
        yield
        with torch.no_grad():
            for module, (a_old, b_old) in zip(layers, before, strict=True):
                if torch.equal(a_old, module.lora_A[INITIAL_ADAPTER].weight) and \
                        torch.equal(b_old, module.lora_B[INITIAL_ADAPTER].weight):
                    continue
                old = transpose(b_old.float() @ a_old.float(), module.fan_in_fan_out) * module.scaling[INITIAL_ADAPTER]
                new = module.get_delta_weight(INITIAL_ADAPTER).float()
                add_to_weight(module.get_base_layer(), old - new)  # a quantized base: Q(Q⁻¹(W_res) + shift)

    def load(self, base_model: nn.Module, path: Path, info: dict[str, Any] | None, is_trainable: bool) -> PeftModel:
        """A converted adapter is a plain LoRA on the original weights: it loads (and saves again) as ``lora``."""
        if (info or {}).get("pissa_converted", True):
            return get_method("lora").load(base_model, path, info, is_trainable)
        return super().load(base_model, path, info, is_trainable)


class BALoraMethod(PissaMethod):
    """BA-LoRA: PiSSA trained with the consistency, diversity and SVD regularizers."""

    name = "ba-lora"

    def default_preset(self, auto_preset: str) -> str:
        return auto_preset


def _restore_non_lora_weights(model: PeftModel, directory: str | os.PathLike) -> None:
    """Put back what peft's PiSSA conversion drops (peft 0.21 keeps only lora_A/lora_B entries).

    Without this a trained classification head (``modules_to_save``) would be lost from the file.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    extra = {k: v for k, v in get_peft_model_state_dict(model).items() if "lora_" not in k}
    if not extra:
        return
    file = Path(directory) / "adapter_model.safetensors"
    tensors = load_file(str(file))
    tensors.update({k: v.detach().contiguous() for k, v in extra.items() if k not in tensors})
    tmp = file.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, file)
