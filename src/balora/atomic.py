"""Atomic file writes: a temporary file in the same folder, then a rename, so a crash never leaves a
half-written file that looks whole (results, configs, adapters' JSON)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def write_yaml_atomic(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    import yaml

    return write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


LOCK_NAME = ".balora.lock"


class FolderLock:
    """An exclusive lock on an output folder, so two runs never write the same files at once.

    ``fcntl.flock`` on ``<folder>/.balora.lock``: the operating system releases it when the process
    ends, however it ends, so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "balora") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._handle: Any = None

    def __enter__(self) -> FolderLock:
        import fcntl

        from .errors import ConfigError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise ConfigError(f"{self.path.parent} is in use by {holder}; wait for it to finish or stop it "
                              "before starting another run there.") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"{self.what} (pid {os.getpid()})")
        self._handle.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
