"""Checkpoints that are complete or absent, whatever kills the process (``kill -9``, a full disk).

transformers writes a checkpoint file by file (adapter, optimizer, scheduler, RNG, ``trainer_state.json``);
a crash in between leaves ``checkpoint-N`` looking like a checkpoint, and its own ``get_last_checkpoint``
picks it. Here, once the Trainer has written everything, :func:`seal` fsyncs every file and writes
``balora_complete.json`` (each file's size) LAST, fsync'd, then fsyncs the folders. Older checkpoints are
rotated away (``save_total_limit``) only after that, so the newest complete one is never deleted in favour
of one being written.

A checkpoint folder holding ``balora_checkpoints.json`` was written this way: a checkpoint there without
a marker is incomplete. In folders written before (no such file), a checkpoint counts as complete when its
``trainer_state.json`` reads and its weights are present. :func:`last_complete_checkpoint` skips and removes
incomplete ones, so nothing later trusts them.

``Trainer.train(resume_from_checkpoint=True)`` resolves the checkpoint with transformers' own
``get_last_checkpoint``, which knows no markers: pass ``resume_from_checkpoint=resume_checkpoint(output_dir)``
instead (``balora train --resume`` does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..errors import DiskFullError, is_disk_full

logger = logging.getLogger("balora")

MARKER = "balora_complete.json"
FOLDER_FILE = "balora_checkpoints.json"
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "adapter_model.bin", "pytorch_model.bin")
KILL_ENV = "BALORA_TEST_KILL_AT"
# Where BALORA_TEST_KILL_AT may stop a checkpoint write: before anything is written; once the Trainer
# wrote every file; with the marker written but not yet renamed into place; sealed; sealed and rotated.
KILL_STAGES = ("start", "written", "marker", "sealed", "rotated")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def kill_point(stage: str, step: int) -> None:
    """Test hook: ``BALORA_TEST_KILL_AT=<stage>[@<step>]`` SIGKILLs this process at that stage of a write."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    name, _, at = wanted.partition("@")
    if name == stage and (not at or int(at) == step):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(checkpoint: str | os.PathLike, step: int) -> None:
    """fsync every file of ``checkpoint``, then write its marker (file sizes) last, then fsync the folders."""
    checkpoint = Path(checkpoint)
    sizes: dict[str, int] = {}
    for root, _, names in os.walk(checkpoint):
        for name in names:
            file = Path(root) / name
            if file.parent == checkpoint and name.startswith(MARKER):
                continue
            _fsync(file)
            sizes[file.relative_to(checkpoint).as_posix()] = file.stat().st_size
        _fsync(Path(root))
    tmp = checkpoint / f"{MARKER}.tmp"
    with tmp.open("w") as handle:
        json.dump({"format": 1, "step": step, "files": sizes}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    kill_point("marker", step)
    os.replace(tmp, checkpoint / MARKER)
    _fsync(checkpoint)
    _fsync(checkpoint.parent)


def _legacy_problem(checkpoint: Path) -> str | None:
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text())
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError):
        return f"{TRAINER_STATE} does not read"
    if not any((checkpoint / name).is_file() for name in WEIGHT_FILES):
        return "no adapter or model weights"
    return None


def checkpoint_problem(checkpoint: str | os.PathLike, marked_folder: bool = True) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (a few words), or None when it is complete.

    ``marked_folder``: its folder was written with markers, so a checkpoint without one is incomplete.
    """
    checkpoint = Path(checkpoint)
    marker = checkpoint / MARKER
    if not marker.is_file():
        return "no completion marker" if marked_folder else _legacy_problem(checkpoint)
    try:
        sizes = json.loads(marker.read_text())["files"]
        expected = {str(name): int(size) for name, size in sizes.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MARKER} does not read"
    for name, size in expected.items():
        file = checkpoint / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, not {size}"
    return None


def _checkpoints(folder: Path) -> list[Path]:
    """``folder/checkpoint-N`` folders, oldest step first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def scan(folder: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(newest complete checkpoint or None, [(incomplete checkpoint, why)]) in ``folder``; changes nothing."""
    folder = Path(folder)
    marked = (folder / FOLDER_FILE).is_file()
    newest, incomplete = None, []
    for checkpoint in _checkpoints(folder):
        problem = checkpoint_problem(checkpoint, marked)
        if problem is None:
            newest = checkpoint
        else:
            incomplete.append((checkpoint, problem))
    return newest, incomplete


def last_complete_checkpoint(folder: str | os.PathLike, remove_incomplete: bool = True) -> str | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (None if there is none).

    Incomplete ones are removed (unless ``remove_incomplete=False``), so that nothing later trusts them;
    one INFO line names the checkpoint used and each one skipped.
    """
    newest, incomplete = scan(folder)
    if remove_incomplete:
        for checkpoint, _ in incomplete:
            shutil.rmtree(checkpoint, ignore_errors=True)
    if newest is not None or incomplete:
        skipped = "; ".join(f"{p.name} ({why})" for p, why in incomplete)
        verb = "skipped and removed" if remove_incomplete else "skipped"
        logger.info("resuming from %s%s", newest if newest is not None else "the start (no complete checkpoint)",
                    f"; {verb} incomplete: {skipped}" if skipped else "")
    return str(newest) if newest is not None else None


def resume_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """What to pass as ``Trainer.train(resume_from_checkpoint=...)``: the last complete checkpoint, or None."""
    return last_complete_checkpoint(output_dir)


def mark_folder(folder: str | os.PathLike) -> None:
    """Declare ``folder``'s checkpoints sealed; complete ones written before (no marker) are sealed now."""
    folder = Path(folder)
    if (folder / FOLDER_FILE).is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for checkpoint in _checkpoints(folder):
        if checkpoint_problem(checkpoint, marked_folder=False) is None:
            seal(checkpoint, int(checkpoint.name.split("-")[1]))
    write_json_atomic(folder / FOLDER_FILE, {"format": 1, "marker": MARKER})
    _fsync(folder)


def disk_full_error(what: str | os.PathLike, checkpoints: str | os.PathLike | None) -> DiskFullError:
    """The one-line error for a full disk: what was being written, and where a resume would start."""
    newest = scan(checkpoints)[0] if checkpoints is not None else None
    where = f"the last complete checkpoint is {newest}" if newest is not None else "no checkpoint is complete yet"
    return DiskFullError(f"disk full while writing {what}; {where}. Free some space, then continue with --resume.")


@contextlib.contextmanager
def reporting_disk_full(what: str | os.PathLike, checkpoints: str | os.PathLike | None) -> Iterator[None]:
    """Turn a full disk inside the block (OSError ENOSPC, torch's or safetensors' wording) into DiskFullError."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(what, checkpoints) from exc
        raise


def _rotate(trainer: Any, run_dir: Path, limit: int | None) -> None:
    try:
        from transformers.trainer_utils import rotate_checkpoints
    except ImportError:  # transformers releases with the method instead of the function
        trainer._rotate_checkpoints(use_mtime=True, output_dir=str(run_dir))
        return
    rotate_checkpoints(output_dir=str(run_dir), save_total_limit=limit,
                       best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)


@contextlib.contextmanager
def complete_or_absent(trainer: Any, trial: Any = None) -> Iterator[None]:
    """Around ``Trainer._save_checkpoint``: the checkpoint it writes ends sealed, or removed.

    Rotation (``save_total_limit``) is held back until the new checkpoint is sealed, and only complete
    checkpoints are left for it to choose from. A full disk becomes :class:`DiskFullError`.
    """
    args = trainer.args
    step = trainer.state.global_step
    run_dir = Path(trainer._get_output_dir(trial=trial))
    checkpoint = run_dir / f"checkpoint-{step}"
    main = args.should_save
    limit = args.save_total_limit
    touched = False
    try:
        with reporting_disk_full(checkpoint, run_dir if main else None):
            if main:
                mark_folder(run_dir)
                touched = True
                (checkpoint / MARKER).unlink(missing_ok=True)  # rewriting a step: its old seal no longer holds
            kill_point("start", step)
            args.save_total_limit = None
            try:
                yield
            finally:
                args.save_total_limit = limit
            kill_point("written", step)
            if args.world_size > 1:
                trainer.accelerator.wait_for_everyone()  # every process has written its part
            if main:
                seal(checkpoint, step)
    except BaseException:
        if main and touched:
            shutil.rmtree(checkpoint, ignore_errors=True)
        raise
    kill_point("sealed", step)
    if main:
        for stale, _ in scan(run_dir)[1]:
            shutil.rmtree(stale, ignore_errors=True)
        _rotate(trainer, run_dir, limit)
    kill_point("rotated", step)
