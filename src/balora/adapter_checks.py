"""Adapters are validated on load: a damaged or foreign adapter is one ModelError, never numbers.

peft loads surprisingly much without complaint: NaN weights (then every logit is NaN), an adapter with
every ``lora_B`` missing (a warning, then the adapter does nothing), an adapter trained on another base
whose shapes happen to match. A config that does not parse surfaces as a raw JSONDecodeError/TypeError
and a truncated safetensors file as an unexpected error. :func:`checked_load` checks, in order:

1. the configs (``adapter_config.json``; the one in ``balora_adapter.json``) parse, with sane field types;
2. every weight file reads whole (not truncated) and holds only finite values;
3. the loader runs (shape mismatches are its own "does not fit" error);
4. the adapter names the base it was trained on (``base_model_name_or_path``) and that is this base,
   unless ``allow_other_base=True`` (then only the shapes must match, which step 3 checked);
5. the loaded peft model expects exactly the tensors the file holds: none missing, none unexpected.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from .errors import BaloraError, ModelError

logger = logging.getLogger("balora")

PEFT_CONFIG = "adapter_config.json"
BALORA_CONFIG = "balora_adapter.json"
# Field -> (allowed types, what to say): what peft reads before it could fail with a raw TypeError.
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "peft_type": ((str,), "a string"),
    "r": ((int,), "a positive integer"),
    "lora_alpha": ((int, float), "a number"),
    "lora_dropout": ((int, float), "a number"),
    "target_modules": ((str, list, type(None)), "a string or a list of module names"),
    "modules_to_save": ((list, type(None)), "a list of module names"),
    "layers_to_transform": ((int, list, type(None)), "a layer index or a list of them"),
    "rank_pattern": ((dict,), "a mapping"),
    "alpha_pattern": ((dict,), "a mapping"),
    "base_model_name_or_path": ((str, type(None)), "a string"),
    "use_dora": ((bool,), "true or false"),
    "fan_in_fan_out": ((bool,), "true or false"),
}


def _config_problem(config: Any) -> str | None:
    if not isinstance(config, dict):
        return f"it holds a JSON {type(config).__name__}, not an object"
    for name, (types, wanted) in _FIELDS.items():
        value = config.get(name)
        if name in config and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            return f"{name!r} is {value!r}, not {wanted}"
    if isinstance(config.get("r"), int) and config["r"] < 1:
        return f"'r' is {config['r']}, not a positive integer"
    if isinstance(config.get("target_modules"), list) and not all(isinstance(t, str) for t in config["target_modules"]):
        return "'target_modules' is not a list of module names"
    if "peft_type" in config:
        from peft.utils import PeftType

        if config["peft_type"] not in {t.value for t in PeftType}:
            return f"'peft_type' {config['peft_type']!r} is not a peft adapter type"
    return None


def _read_configs(path: Path) -> list[dict[str, Any]]:
    """The adapter's configs (peft's and the one inside balora's file), each checked to parse."""
    configs = []
    for name, inner in ((PEFT_CONFIG, None), (BALORA_CONFIG, "peft_config")):
        file = path / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelError(f"{file} is not valid JSON ({exc}); the adapter is damaged.") from exc
        where = file
        if inner is not None and isinstance(config, dict):
            if inner not in config:
                continue
            config, where = config[inner], f"{file} ({inner})"
        problem = _config_problem(config)
        if name == PEFT_CONFIG and problem is None and "peft_type" not in config:
            problem = "it names no 'peft_type'"
        if problem is not None:
            raise ModelError(f"{where} is not a valid adapter config: {problem}; the adapter is damaged.")
        configs.append(config)
    return configs


def _weight_files(path: Path) -> list[Path]:
    return sorted({*path.glob("adapter_model*.safetensors"), *path.glob("model*.safetensors")})


def _read_tensors(path: Path) -> set[str]:
    """Names of the tensors in the weight files, after checking each file reads whole and is finite."""
    import torch
    from safetensors import safe_open

    names: set[str] = set()
    for file in _weight_files(path):
        bad: list[str] = []
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                        bad.append(name)
                    names.add(name)
        except Exception as exc:  # safetensors raises its own SafetensorError for a damaged file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{file} is truncated or damaged ({first}); save or copy the adapter again.") from exc
        if bad:
            raise ModelError(f"{file} holds NaN or infinite weights in {len(bad)} tensor(s), e.g. {bad[0]}; "
                             "it would give NaN outputs. Use an earlier checkpoint or train again.")
    return names


def _same_base(trained_on: str, base: str) -> bool:
    """Same name, same folder, or the same last two path parts (a moved folder, another environment)."""
    if trained_on == base:
        return True
    try:
        if os.path.exists(trained_on) and os.path.exists(base) and os.path.samefile(trained_on, base):
            return True
    except OSError:
        pass
    return Path(trained_on).parts[-2:] == Path(base).parts[-2:]


def _base_name(model: nn.Module) -> str | None:
    return getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)


def _check_base(base: str | None, path: Path, configs: list[dict[str, Any]], allow_other_base: bool) -> None:
    names = [c["base_model_name_or_path"] for c in configs if c.get("base_model_name_or_path")]
    if not base or not names or _same_base(names[0], str(base)):
        return
    if allow_other_base:
        logger.warning("adapter %s was trained on %s; loading it onto %s as allow_other_base asks (the shapes "
                       "match)", path, names[0], base)
        return
    raise ModelError(f"adapter {path} was trained on {names[0]!r}, not on this base model {str(base)!r}; use "
                     "the base it was trained on, or --allow-other-base (allow_other_base=True) if this is the "
                     "same model.")


def _check_tensors(model: nn.Module, path: Path, saved: set[str]) -> None:
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    if not isinstance(model, PeftModel) or not saved:
        return
    expected = set(get_peft_model_state_dict(model, adapter_name="default"))
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing:
        raise ModelError(f"adapter {path} lacks {len(missing)} of the {len(expected)} tensors its config calls "
                         f"for (e.g. {missing[0]}); peft would leave them untrained. The adapter is incomplete.")
    if unexpected:
        raise ModelError(f"adapter {path} holds {len(unexpected)} tensor(s) this base model has no place for "
                         f"(e.g. {unexpected[0]}); it was saved for another model or is damaged.")


def checked_load(base_model: nn.Module, path: str | os.PathLike, loader: Callable[[], nn.Module],
                 allow_other_base: bool = False) -> nn.Module:
    """``loader()`` (which loads the adapter in ``path`` onto ``base_model``), with the checks above."""
    path = Path(path)
    configs = _read_configs(path)
    saved = _read_tensors(path)
    base = _base_name(base_model)
    try:
        model = loader()
    except BaloraError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # what peft raises on configs it dislikes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"adapter {path} does not load onto this base model ({type(exc).__name__}: {first}).") \
            from exc
    _check_base(base, path, configs, allow_other_base)
    _check_tensors(model, path, saved)
    return model
