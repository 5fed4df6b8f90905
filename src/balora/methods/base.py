"""What a method is: the one object that owns everything that differs between adaptation methods.

Code outside :mod:`balora.methods` asks the model's method object (:func:`balora.methods.method_of`) and
never compares method names. A method owns:

- building: :meth:`Method.adapt` (its peft config, defaults and initialisation), :meth:`Method.adapt_kwargs`
  (run options -> ``adapt`` arguments) and :attr:`Method.reads` (which options matter to it);
- the pre-trained view: :meth:`Method.reference` (what :func:`balora.as_pretrained` enters) and
  :meth:`Method.prepare_reference` (what must be kept for it, if anything);
- files: :meth:`Method.save_checkpoint` (raw, resumable state), :meth:`Method.resuming` (how a checkpoint
  is restored) and :meth:`Method.load` (a saved adapter onto the original base); the shareable export is
  the model's own ``save_pretrained``;
- training defaults: :meth:`Method.default_preset` and :attr:`Method.default_learning_rate`, and
  :meth:`Method.set_training_step` (per-step state such as Dual LoRA's warm-up).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn
from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, LoraConfig, PeftModel, TaskType

from .. import peft_compat
from ..adapter_file import write_balora_file
from ..errors import ConfigError, ModelError
from ..model_kind import model_kind
from ..quantize import check_kind, is_quantized, prepare_for_kbit_training, quantize_linears
from .options import AdapterOptions

METHOD_ATTR = "balora_method"  # the method name, stored on the model (a string: survives copies and pickling)

_TASK_TYPES = {
    "sequence-classification": TaskType.SEQ_CLS,
    "causal-lm": TaskType.CAUSAL_LM,
    "token-classification": TaskType.TOKEN_CLS,
}


_REGISTRY: dict[str, Method] = {}


def register_method(method_class: type[Method]) -> type[Method]:
    """Make ``method_class`` available under its :attr:`~Method.name` (``balora.adapt(method=name)``)."""
    name = getattr(method_class, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{method_class.__name__} needs a class attribute `name` to be registered.")
    _REGISTRY[name] = method_class()
    return method_class


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    """The method object registered as ``name``; a one-line error lists the choices otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}.") from None


def method_of(model: nn.Module) -> Method:
    """The method a model was adapted (or loaded) with; unwraps DDP-style ``.module`` wrappers."""
    name = getattr(getattr(model, "module", model), METHOD_ATTR, None)
    if name is None:
        raise ConfigError("this model was not made by balora.adapt() or balora.load(); call adapt() first.")
    return get_method(name)


class Method:
    """Base class of every method; subclasses set :attr:`name` and override what differs."""

    name: ClassVar[str]
    reads: ClassVar[frozenset[str]] = frozenset()  #: AdapterOptions fields this method reads
    own_options: ClassVar[tuple[str, ...]] = ()  #: adapt() keyword arguments only this method takes
    default_learning_rate: ClassVar[float] = 5e-4

    # ------------------------------------------------------------------ building

    def adapt(self, model: nn.Module, r: int = 16, lora_alpha: float | None = None,
              target_modules: list[str] | str = "all-linear", **options: Any) -> nn.Module:
        raise NotImplementedError

    def adapt_kwargs(self, options: AdapterOptions, total_steps: int) -> dict[str, Any]:
        """The :func:`balora.adapt` arguments for run ``options`` (``total_steps``: optimizer steps of the run)."""
        return options.common_kwargs()

    def tag(self, model: nn.Module) -> nn.Module:
        setattr(getattr(model, "module", model), METHOD_ATTR, self.name)
        return model

    # ------------------------------------------------------------------ the pre-trained view

    def prepare_reference(self, model: nn.Module) -> None:
        """Keep whatever :meth:`reference` needs (called once before training with a consistency term)."""

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[None]:
        """Inside the block, forward passes of ``model`` (unwrapped) give the pre-trained model's outputs."""
        with model.disable_adapter():
            yield

    # ------------------------------------------------------------------ training

    def default_preset(self, auto_preset: str) -> str:
        """The regularizer preset that ``preset='auto'`` means for this method."""
        return "none"

    def set_training_step(self, model: nn.Module, step: int) -> None:
        """Per-step state (Dual LoRA's warm-up); nothing for most methods."""

    # ------------------------------------------------------------------ files

    def save_checkpoint(self, model: nn.Module, directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the raw, resumable state of ``model`` (the Trainer's checkpoints)."""
        model.save_pretrained(directory, **kwargs)

    @contextlib.contextmanager
    def resuming(self, model: nn.Module) -> Iterator[None]:
        """Wraps the Trainer's loading of a checkpoint into ``model``."""
        yield

    def load(self, base_model: nn.Module, path: Path, info: dict[str, Any] | None, is_trainable: bool) -> nn.Module:
        """Load the adapter saved in ``path`` onto the ORIGINAL ``base_model``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<balora method {self.name!r}>"


class AdapterMethod(Method):
    """A method whose adapter is a peft ``LoraConfig`` (lora, dora, pissa, ba-lora, dual-lora)."""

    reads: ClassVar[frozenset[str]] = frozenset({"rank", "lora_alpha", "target_modules", "lora_dropout", "quantize"})

    def config_fields(self, **options: Any) -> dict[str, Any]:
        """``LoraConfig`` fields that make this method (beyond the common ones); rejects foreign options."""
        return options

    def config_class(self) -> type[LoraConfig]:
        return LoraConfig

    def peft_config(self, model: nn.Module, r: int = 16, lora_alpha: float | None = None,
                    target_modules: list[str] | str = "all-linear", *, lora_dropout: float = 0.0,
                    modules_to_save: list[str] | None = None, **options: Any) -> LoraConfig:
        if not isinstance(r, int) or r < 1:
            raise ConfigError(f"rank r must be an integer >= 1, got {r!r}.")
        options = _drop_foreign_options(self, options)
        kind = model_kind(model)
        common = {"r": r, "lora_alpha": r if lora_alpha is None else lora_alpha, "target_modules": target_modules,
                  "lora_dropout": lora_dropout, "task_type": _TASK_TYPES.get(kind) if kind else None,
                  "modules_to_save": modules_to_save}
        return self.config_class()(**common, **self.config_fields(**options))

    def adapt(self, model: nn.Module, r: int = 16, lora_alpha: float | None = None,
              target_modules: list[str] | str = "all-linear", *, quantize: str | None = None,
              **options: Any) -> PeftModel:
        if options.pop("keep_reference", False):
            raise ConfigError("keep_reference is for method 'full'; adapter methods keep their reference already.")
        config = self.peft_config(model, r, lora_alpha, target_modules, **options)
        validate_targets(model, config)
        if quantize is None and not is_quantized(model):
            peft_model = self.build_peft_model(model, config)
            self.initialise(peft_model)
        else:
            peft_model = self.build_quantized(model, config, None if quantize is None else check_kind(quantize))
        return self.tag(peft_model)

    def build_peft_model(self, model: nn.Module, config: LoraConfig, keep_name: bool = False) -> PeftModel:
        """peft's model class for the task (what ``get_peft_model`` picks), under :attr:`peft_model_base`."""
        peft_class = _subclass(ExportingPeftModel, MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel))
        if not keep_name:  # what get_peft_model records; a loaded adapter keeps the name it was saved with
            config.base_model_name_or_path = model.__dict__.get("name_or_path") or None
        return peft_class(model, config)

    def initialise(self, peft_model: PeftModel) -> None:
        """Anything beyond peft's own initialisation (PiSSA keeps its initial adapter)."""

    def build_quantized(self, model: nn.Module, config: LoraConfig, kind: str | None) -> PeftModel:
        """The adapter over a quantized base (QLoRA): ``kind`` ("nf4"/"int8") quantizes ``model``'s frozen
        linear layers first; ``kind=None`` means ``model`` was loaded quantized. The adapter is then built
        as usual, in the compute dtype, by peft's quantized LoRA layers (design §9)."""
        quantized_base(model, config, kind)
        peft_model = self.build_peft_model(model, config)
        self.initialise(peft_model)
        return peft_model

    def export(self, model: PeftModel, directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """What ``model.save_pretrained(directory)`` writes: peft's files plus ``balora_adapter.json``."""
        kwargs.setdefault("selected_adapters", ["default"])
        save_peft_files(model, directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_balora_file(directory, self.name, model.peft_config["default"], pissa_converted=False)

    def save_checkpoint(self, model: PeftModel, directory: str | os.PathLike, **kwargs: Any) -> None:
        self.export(model, directory, **kwargs)

    def stored_config(self, path: Path, info: dict[str, Any] | None) -> LoraConfig:
        """The adapter's config as saved (peft's ``adapter_config.json``)."""
        return LoraConfig.from_pretrained(str(path))

    def load(self, base_model: nn.Module, path: Path, info: dict[str, Any] | None, is_trainable: bool) -> PeftModel:
        """What ``PeftModel.from_pretrained`` does, with balora's model class (so saving goes through export)."""
        if not (path / "adapter_model.safetensors").is_file():
            if (path / "adapter_model.bin").is_file():
                raise ModelError(f"{path} holds only adapter_model.bin (pickle); balora loads safetensors only.")
            raise ModelError(f"{path} has no adapter_model.safetensors; the adapter is incomplete.")
        config = self.stored_config(path, info)
        config.inference_mode = not is_trainable
        model = self.build_peft_model(base_model, config, keep_name=True)
        try:
            model.load_adapter(str(path), "default", is_trainable=is_trainable)
        except RuntimeError as exc:  # size mismatch: an adapter made for another base model
            raise ModelError(f"adapter {path} does not fit this base model: {str(exc).splitlines()[0]}") from exc
        return self.tag(model)


class ExportingPeftModel:
    """Mixin over peft's model class: ``save_pretrained`` is the method's :meth:`AdapterMethod.export`.

    It is how ``model.save_pretrained(dir)`` writes what users share (PiSSA converted to a plain LoRA,
    Dual LoRA in balora's format); the Trainer's checkpoints go through :meth:`Method.save_checkpoint`.
    """

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        method_of(self).export(self, save_directory, *args, **kwargs)


def save_peft_files(model: PeftModel, directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
    """peft's own ``save_pretrained`` of ``model``, bypassing the export hook."""
    if isinstance(model, ExportingPeftModel):
        super(ExportingPeftModel, model).save_pretrained(directory, *args, **kwargs)
    else:
        model.save_pretrained(directory, *args, **kwargs)


_SUBCLASSES: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, peft_class: type) -> type:
    """``mixin`` over ``peft_class`` (e.g. PiSSA's converting save over ``PeftModelForCausalLM``), cached."""
    key = (mixin, peft_class)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"{mixin.__name__}{peft_class.__name__}", (mixin, peft_class),
                                {"__module__": mixin.__module__})
    return _SUBCLASSES[key]


def quantized_base(model: nn.Module, config: LoraConfig, kind: str | None) -> None:
    """Quantize ``model``'s frozen linear layers (``kind``; None: already quantized) and apply peft's
    ``prepare_model_for_kbit_training``, in place."""
    if kind is not None:
        if is_quantized(model):
            raise ConfigError("the model is already quantized; drop quantize= or load it in full precision.")
        quantize_linears(model, kind, keep=config.modules_to_save or ())
    prepare_for_kbit_training(model)


def validate_targets(model: nn.Module, config: LoraConfig) -> None:
    """One-line errors for targets that match nothing and for a rank above a layer's min(d_in, d_out)."""
    targets = peft_compat.targeted_linears(model, config)
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


def _drop_foreign_options(method: Method, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without other methods' own options; a one-line error if one of them is set."""
    owners: dict[str, list[str]] = {}
    for other in _REGISTRY.values():
        if other is not method:
            for option in other.own_options:
                if option not in method.own_options:
                    owners.setdefault(option, []).append(other.name)
    given = [name for name in owners if options.get(name) is not None]
    if given:
        who = " / ".join(repr(m) for m in owners[given[0]])
        raise ConfigError(f"{'/'.join(given)} {'is an option' if len(given) == 1 else 'are options'} of {who} only, "
                          f"not of {method.name!r}.")
    return {k: v for k, v in options.items() if k not in owners}
