"""``balora_adapter.json``: what balora writes beside every adapter it saves.

``{"format": 1, "method": ..., "pissa_converted": ..., "peft_config": {...}}``. It names the method the
adapter was trained with (so :func:`balora.load` picks the right loader) and, for Dual LoRA, holds the
only copy of the config: Dual LoRA writes no ``adapter_config.json`` on purpose (stock peft must refuse it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic
from .errors import ModelError

BALORA_FILE = "balora_adapter.json"
FORMAT_VERSION = 1


def write_balora_file(directory: str | os.PathLike, method: str, peft_config: Any, pissa_converted: bool) -> None:
    info = {"format": FORMAT_VERSION, "method": method, "pissa_converted": pissa_converted,
            "peft_config": peft_config.to_dict()}
    write_json_atomic(Path(directory) / BALORA_FILE, info)


def read_balora_file(path: str | os.PathLike) -> dict[str, Any] | None:
    """The file's content, None when the directory has none (a stock peft adapter)."""
    file = Path(path) / BALORA_FILE
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{file} is not valid JSON ({exc}); the adapter directory is damaged.") from exc
    if not isinstance(info, dict) or not isinstance(info.get("method", ""), str):
        raise ModelError(f"{file} does not hold a balora adapter description; the adapter directory is damaged.")
    return info
