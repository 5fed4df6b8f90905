"""Method name -> peft configuration, and :func:`adapt` (SPEC sections 1, 3 and 7).

Every adapter method is a peft ``LoraConfig``: ``lora`` (Kaiming A, zero B), ``pissa`` and ``ba-lora``
(``init_lora_weights="pissa"`` or ``"pissa_niter_K"``), ``dora`` (``use_dora=True``) and ``dual-lora``
(:class:`~balora.dual_lora.DualLoraConfig`, a registered LoRA variant). ``full`` trains the model itself.

PiSSA-initialised methods also keep the initial adapter (B0, A0) as a second, frozen peft adapter named
:data:`INITIAL_ADAPTER`. It costs adapter-sized memory and gives two things without a second model:
the pre-trained model's outputs (W_res + s·B0·A0 = W, see :mod:`balora.reference`) and peft's
conversion of the trained adapter to a plain rank-2r LoRA at save time (:mod:`balora.persistence`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

from .dual_lora import DualLoraConfig
from .errors import ConfigError

METHODS: tuple[str, ...] = ("lora", "pissa", "ba-lora", "dora", "dual-lora", "full")
ADAPTER_METHODS: tuple[str, ...] = ("lora", "pissa", "ba-lora", "dora", "dual-lora")
PISSA_METHODS: tuple[str, ...] = ("pissa", "ba-lora")
INITIAL_ADAPTER = "balora_initial"
DEFAULT_PISSA_NITER = 4


def _task_type(model: nn.Module) -> TaskType | None:
    """peft task type from the model class, so the head and the forward signature are handled by peft."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return TaskType.SEQ_CLS
    if name.endswith("ForCausalLM"):
        return TaskType.CAUSAL_LM
    if name.endswith("ForTokenClassification"):
        return TaskType.TOKEN_CLS
    return None


def build_config(
    model: nn.Module,
    method: str,
    r: int = 16,
    lora_alpha: float | None = None,
    target_modules: list[str] | str = "all-linear",
    *,
    lora_dropout: float = 0.0,
    pissa_niter: int | None = DEFAULT_PISSA_NITER,
    r1: int | None = None,
    r2: int | None = None,
    warmup_steps: int = 100,
    modules_to_save: list[str] | None = None,
    **options: Any,
) -> LoraConfig:
    """The peft config of an adapter ``method`` (not ``full``); see :func:`adapt` for the arguments."""
    check_method(method)
    if method == "full":
        raise ConfigError("method 'full' trains the model itself and has no adapter config.")
    if not isinstance(r, int) or r < 1:
        raise ConfigError(f"rank r must be an integer >= 1, got {r!r}.")
    if pissa_niter is not None and pissa_niter < 0:
        raise ConfigError(f"pissa_niter must be >= 0 or None (exact SVD), got {pissa_niter}.")
    if method != "dual-lora" and (r1 is not None or r2 is not None):
        raise ConfigError(f"r1/r2 are options of 'dual-lora' only, not of {method!r}.")
    common = {
        "r": r,
        "lora_alpha": r if lora_alpha is None else lora_alpha,
        "target_modules": target_modules,
        "lora_dropout": lora_dropout,
        "task_type": _task_type(model),
        "modules_to_save": modules_to_save,
        **options,
    }
    if method == "dual-lora":
        return DualLoraConfig(**common, r1=r1, r2=r2, warmup_steps=warmup_steps)
    if method == "dora":
        return LoraConfig(**common, use_dora=True)
    if method in PISSA_METHODS:
        init = "pissa" if not pissa_niter else f"pissa_niter_{pissa_niter}"
        return LoraConfig(**common, init_lora_weights=init)
    return LoraConfig(**common)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}.")


def _targeted_linears(model: nn.Module, config: LoraConfig) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers that ``config`` targets, found the way peft finds them."""
    probe = _maybe_include_all_linear_layers(copy.copy(config), model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and check_target_module_exists(probe, name)
    }


def _validate_targets(model: nn.Module, config: LoraConfig) -> None:
    targets = _targeted_linears(model, config)
    if not targets:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"target_modules={config.target_modules!r} matches no linear layer of {type(model).__name__}; "
            f"its linear layer names are: {', '.join(linear) or '(none)'}."
        )
    limit = min(min(m.in_features, m.out_features) for m in targets.values())
    if config.r > limit:
        narrow = min(targets, key=lambda n: min(targets[n].in_features, targets[n].out_features))
        raise ConfigError(
            f"rank r={config.r} is larger than layer {narrow!r} allows "
            f"(min(d_in, d_out) = {limit}); use r <= {limit} or leave that layer out of target_modules."
        )


def adapt(
    model: nn.Module,
    method: str = "ba-lora",
    r: int = 16,
    lora_alpha: float | None = None,
    target_modules: list[str] | str = "all-linear",
    *,
    keep_reference: bool = False,
    **options: Any,
) -> nn.Module:
    """Make ``model`` trainable with ``method``; returns a ``peft.PeftModel`` (the model itself for ``full``).

    Args:
        model: any transformers model (classification, regression or causal LM).
        method: one of :data:`METHODS`.
        r: adapter rank (LoRA's). For ``dual-lora`` r = r1 + r2 (default r1 = r2 = r/2).
        lora_alpha: scale numerator; default ``r`` (scale 1). Dual LoRA scales by alpha/sqrt(r1·r2).
        target_modules: peft's ``target_modules`` (names, a regex, or ``"all-linear"``).
        keep_reference: ``full`` only: keep a copy of the initial weights so that
            :func:`balora.as_pretrained` can give the pre-trained outputs (costs one copy of the weights).
        **options: ``lora_dropout``, ``pissa_niter`` (randomized-SVD power iterations, None = exact SVD),
            ``r1``, ``r2``, ``warmup_steps``, ``modules_to_save`` and any other ``LoraConfig`` field.

    The returned model starts equal to ``model`` (PiSSA moves the principal part of W into the adapter
    and leaves W_res = W - s·B0·A0; Dual LoRA starts with warm-up factor 0).
    """
    check_method(method)
    if isinstance(model, PeftModel):
        raise ConfigError("model is already a PeftModel; pass the base transformers model to adapt().")
    if method == "full":
        if options:
            raise ConfigError(f"method 'full' takes no adapter options, got: {', '.join(sorted(options))}.")
        model.requires_grad_(True)
        model.balora_method = "full"
        if keep_reference:
            from .reference import snapshot_full_reference

            snapshot_full_reference(model)
        return model
    if keep_reference:
        raise ConfigError("keep_reference is for method 'full'; adapter methods keep their reference already.")
    config = build_config(model, method, r, lora_alpha, target_modules, **options)
    _validate_targets(model, config)
    peft_model = get_peft_model(model, config)
    if method in PISSA_METHODS:
        _keep_initial_adapter(peft_model)
    from .persistence import enable_balora_saving

    enable_balora_saving(peft_model, method)
    return peft_model


def _keep_initial_adapter(peft_model: PeftModel) -> None:
    """Store (A0, B0) as a frozen, inactive peft adapter :data:`INITIAL_ADAPTER` (plain LoRA init)."""
    config = copy.deepcopy(peft_model.peft_config["default"])
    config.init_lora_weights = True  # a plain LoRA holder: adding it must not touch the base weights again
    config.inference_mode = True
    peft_model.add_adapter(INITIAL_ADAPTER, config)
    with torch.no_grad():
        for module in peft_model.modules():
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, nn.ModuleDict) and INITIAL_ADAPTER in lora_a:
                lora_a[INITIAL_ADAPTER].weight.copy_(lora_a["default"].weight)
                module.lora_B[INITIAL_ADAPTER].weight.copy_(module.lora_B["default"].weight)
    peft_model.base_model.set_requires_grad(INITIAL_ADAPTER, requires_grad=False)


def method_of(model: nn.Module) -> str:
    """The balora method a model was adapted with (unwraps DDP-style ``.module`` wrappers)."""
    inner = getattr(model, "module", model)
    method = getattr(inner, "balora_method", None)
    if method is None:
        raise ConfigError("this model was not made by balora.adapt() or balora.load(); call adapt() first.")
    return method


def set_training_step(model: nn.Module, step: int) -> None:
    """Set Dual LoRA's warm-up factor min(1, step / warmup_steps) in every layer; no-op for other methods."""
    from .dual_lora import DualLoraLinear

    for module in model.modules():
        if isinstance(module, DualLoraLinear):
            for adapter in module.lora_C:
                module.set_warmup_step(adapter, step)
