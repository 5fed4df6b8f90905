"""Launched by tests/test_checkpoints.py: `balora train` runs SIGKILLed at stages of a checkpoint write.

Usage: kill_chain.py MODEL_DIR DATA_CSV OUT_DIR. Each run is ``balora.cli.main.main(argv)`` in a child forked
from this process, which imported balora once and ran no torch computation (so forking is safe); its
stderr goes to a file. Runs, in order:

- ``ref``: uninterrupted, into OUT_DIR/ref;
- ``k1``: killed once checkpoint-4 is written but not sealed (``written@4``);
- ``k2``: ``--resume``, killed with checkpoint-6's marker written but not yet in place (``marker@6``);
  then a half-written newest ``checkpoint-100`` is simulated (a sealed copy with optimizer.pt truncated);
- ``k3``: ``--resume``, killed after the last checkpoint (8) is sealed and rotated, before the adapter;
- ``final``: ``--resume`` to the end; ``again``: ``--resume`` on the finished run.

Writes OUT_DIR/report.json: per run, the signal that ended it (or None), the exit code, stderr, and the
checkpoint folders left after it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from balora.cli.main import main

STEPS = ["--max-steps", "8", "--save-steps", "2", "--batch-size", "4", "--max-length", "16", "--rank", "2",
         "--logging-steps", "1", "--method", "ba-lora"]


def _child(argv: list[str], kill_at: str | None, log: Path) -> dict:
    pid = os.fork()
    if pid == 0:  # the child: one `balora train`, its stderr and stdout in `log`
        code = 99
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            os.dup2(fd, 1)
            os.environ.pop("BALORA_TEST_KILL_AT", None)
            if kill_at:
                os.environ["BALORA_TEST_KILL_AT"] = kill_at
            code = main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "stderr": log.read_text()}


def _listing(checkpoints: Path) -> dict[str, list[str]]:
    if not checkpoints.is_dir():
        return {}
    return {p.name: sorted(f.name for f in p.iterdir()) for p in sorted(checkpoints.iterdir()) if p.is_dir()}


def _half_written(checkpoints: Path) -> None:
    """checkpoint-100: a sealed checkpoint's copy whose optimizer.pt lost its second half."""
    source = max((p for p in checkpoints.iterdir() if (p / "balora_complete.json").is_file()),
                 key=lambda p: int(p.name.split("-")[1]))
    target = checkpoints / "checkpoint-100"
    shutil.copytree(source, target)
    optimizer = target / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])


def run(model: str, data: str, out: Path) -> None:
    def argv(folder: str, *extra: str) -> list[str]:
        return ["train", "--model", model, "--dataset", data, "--output", str(out / folder), *STEPS, *extra]

    report = {}
    plan = [("ref", argv("ref"), None), ("k1", argv("run"), "written@4"),
            ("k2", argv("run", "--resume"), "marker@6"), ("k3", argv("run", "--resume"), "rotated@8"),
            ("final", argv("run", "--resume"), None), ("again", argv("run", "--resume"), None)]
    for name, args, kill_at in plan:
        report[name] = _child(args, kill_at, out / f"{name}.log")
        report[name]["checkpoints"] = _listing(out / "run" / "checkpoints")
        if name == "k2":
            _half_written(out / "run" / "checkpoints")
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
