"""Quantized bases (design §9): the frozen linear layers as bitsandbytes 4-bit (NF4) or 8-bit layers.

bitsandbytes is an optional extra (``pip install 'balora[quant]'``) imported only here, inside the
functions that need it. Which layers are quantized: every ``nn.Linear`` except the output head
(``get_output_embeddings()``) and the task heads that are trained (``classifier``, ``score``,
``modules_to_save``): the same set transformers quantizes when a model is loaded in 4/8-bit.

- :func:`quantize_linears`: replace those layers in place (``"nf4"``: NF4 with double quantization of the
  block scales, QLoRA's recipe; ``"int8"``: LLM.int8 with outlier threshold 6.0). Compute stays in the
  weight's own dtype.
- :func:`dequantized_weight` / :func:`add_to_weight`: W as the quantized layer computes with it (d_out, d_in),
  and W <- Q(W + delta) (PiSSA's resume shift).
- :func:`quantized_storage`: the raw quantized tensors, to check that training leaves them bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .errors import ConfigError

QUANTIZE_KINDS = ("nf4", "int8")  #: the values of ``balora.adapt(..., quantize=...)``
HEAD_NAMES = frozenset({"classifier", "score", "lm_head"})  #: task heads: trained or tied, never quantized
INT8_THRESHOLD = 6.0


def require_bitsandbytes() -> Any:
    """The ``bitsandbytes`` module, or a one-line error naming the extra that installs it."""
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError("quantize= needs bitsandbytes: pip install 'balora[quant]'.") from None
    return bitsandbytes


def check_kind(kind: str) -> str:
    if kind not in QUANTIZE_KINDS:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE_KINDS)} (or None), got {kind!r}.")
    return kind


def is_bnb_layer(module: nn.Module) -> bool:
    """A bitsandbytes linear layer (checked by module name: works without bitsandbytes installed)."""
    return type(module).__module__.startswith("bitsandbytes")


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` already holds quantized weights (loaded in 4/8-bit, or by :func:`quantize_linears`)."""
    if getattr(model, "is_quantized", False) or getattr(model, "is_loaded_in_4bit", False) \
            or getattr(model, "is_loaded_in_8bit", False):
        return True
    return any(is_bnb_layer(m) for m in model.modules())


def quantizable_linears(model: nn.Module, keep: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Linear]:
    """The plain ``nn.Linear`` layers :func:`quantize_linears` replaces: all but the heads and ``keep``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = HEAD_NAMES | set(keep)
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear and m is not head and not skip.intersection(name.split("."))}


def _quantized(layer: nn.Linear, kind: str) -> nn.Module:
    """A bitsandbytes copy of ``layer`` on its device; the weight is quantized here, the bias kept as is."""
    bnb = require_bitsandbytes()
    weight = layer.weight.detach()
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"quantize= needs float weights, got {weight.dtype}.")
    bias = layer.bias is not None
    if kind == "nf4":
        new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=bias, compute_dtype=weight.dtype,
                                compress_statistics=True, quant_type="nf4", device="meta")
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                       module=new).to(weight.device)
        _keep_cpu_packing_safe(new)
    else:
        new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=bias, has_fp16_weights=False,
                                  threshold=INT8_THRESHOLD, device="meta")
        # Int8Params quantizes on a move from the CPU: a GPU weight passes through the host once.
        new.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False).to(weight.device)
        new.register_forward_pre_hook(_keep_int8_scales)
    if bias:
        new.bias = nn.Parameter(layer.bias.detach(), requires_grad=False)
    return new


def _keep_cpu_packing_safe(layer: nn.Module) -> None:
    """bitsandbytes 0.50 repacks a 4-bit weight for its AVX512-BF16 CPU kernel at the first no-grad eval
    forward, reshaping the absmax to (d_out, d_in // blocksize): for d_in not a multiple of the blocksize
    (small test models) that raises. Such a layer keeps the plain 4-bit path, which handles any shape."""
    blocksize = getattr(layer.weight, "blocksize", None)
    if blocksize and layer.in_features % blocksize and hasattr(layer, "support_avx512bf16_for_cpu"):
        layer.support_avx512bf16_for_cpu = False


def _keep_int8_scales(layer: nn.Module, args: Any) -> None:
    """A re-wrapped 8-bit weight (``Int8Params.to``, as peft's DoRA does on the CPU) comes back with its
    row scales dropped while its int8 rows are kept: take the scales from the layer state again."""
    if layer.weight.CB is not None and layer.weight.SCB is None:
        layer.weight.SCB = layer.state.SCB


@torch.no_grad()
def quantize_linears(model: nn.Module, kind: str, keep: list[str] | tuple[str, ...] = ()) -> int:
    """Replace :func:`quantizable_linears` of ``model`` by bitsandbytes layers, in place; returns the count."""
    check_kind(kind)
    require_bitsandbytes()
    targets = quantizable_linears(model, keep)
    if not targets:
        raise ConfigError(f"quantize={kind!r}: {type(model).__name__} has no linear layer to quantize.")
    for name, layer in targets.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _quantized(layer, kind))
    return len(targets)


def _int8_scales(layer: nn.Module) -> torch.Tensor:
    scb = layer.weight.SCB
    return scb if scb is not None else layer.state.SCB  # moved to the layer state by the first forward


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The (d_out, d_in) weight a layer computes with, float32: Q(W) for a bitsandbytes layer, else W."""
    if not is_bnb_layer(layer):
        return layer.weight.detach().float()
    bnb = require_bitsandbytes()
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    return layer.weight.data.float() * _int8_scales(layer).float()[:, None] / 127.0


@torch.no_grad()
def add_to_weight(layer: nn.Module, delta: torch.Tensor) -> None:
    """W <- W + delta; a bitsandbytes layer is dequantized, shifted and quantized again (an extra rounding)."""
    if not is_bnb_layer(layer):
        layer.weight += delta.to(layer.weight.dtype)
        return
    bnb = require_bitsandbytes()
    kind = "nf4" if isinstance(layer, bnb.nn.Linear4bit) else "int8"
    dtype = layer.compute_dtype if kind == "nf4" and layer.compute_dtype is not None else torch.float32
    plain = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
    plain.weight = nn.Parameter((dequantized_weight(layer) + delta.float()).to(dtype), requires_grad=False)
    layer.weight = _quantized(plain, kind).weight
    if kind == "int8":
        layer.state.CB, layer.state.SCB = None, None  # the next forward reads the new weight's statistics


def quantized_storage(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every quantized tensor of ``model`` (packed weights and their scales), cloned, keyed by name."""
    out = {}
    for name, module in model.named_modules():
        if not is_bnb_layer(module):
            continue
        out[f"{name}.weight"] = module.weight.data.clone()
        state = getattr(module.weight, "quant_state", None)
        if state is not None:
            out[f"{name}.absmax"] = state.absmax.clone()
        elif hasattr(module, "state"):
            out[f"{name}.SCB"] = _int8_scales(module).clone()
    return out


def prepare_for_kbit_training(model: nn.Module) -> nn.Module:
    """peft's ``prepare_model_for_kbit_training`` (base frozen, half-precision norms upcast to float32);
    gradient checkpointing is left to the Trainer (``TrainingArguments(gradient_checkpointing=True)``)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
