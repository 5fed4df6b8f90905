"""Errors that tell the user what to change.

Every error raised on bad user input is a ``BaloraError`` (a ``ValueError``), so the command line can
print it as one line and exit with a known code, while Python users can catch it like any ValueError.
"""

from __future__ import annotations

import errno


class BaloraError(ValueError):
    """Bad input or state that the user can fix; the message says how."""


class ConfigError(BaloraError):
    """An option, a combination of options or a config key is invalid."""


class DataError(BaloraError):
    """A data set is missing, empty, or has columns or labels that do not fit."""


class ModelError(BaloraError):
    """A model or adapter directory is missing, partial or does not fit the base model."""


class DiskFullError(BaloraError):
    """The disk filled up while writing; the message names the file and the last complete checkpoint."""


# How a full disk reads when it is not a plain OSError(ENOSPC): torch.save's zip writer ("basic_ios::clear:
# iostream error", "enforce fail at inline_container.cc", "PytorchStreamWriter failed writing") and
# safetensors (Rust's "StorageFull"). Trusted only around writes (``strict=False``).
_WRITE_FAILURE_SIGNS = ("basic_ios::clear", "inline_container.cc", "pytorchstreamwriter failed writing", "storagefull")


def is_disk_full(exc: BaseException | None, strict: bool = False) -> bool:
    """Whether ``exc``, or an exception it came from, is a full disk (ENOSPC, EDQUOT or their wording).

    ``strict``: only the unambiguous signs, for callers that do not know a write was under way.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if "no space left on device" in text or "disk quota exceeded" in text:
            return True
        if not strict and any(sign in text for sign in _WRITE_FAILURE_SIGNS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the term."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; ``--resume`` continues it."""
