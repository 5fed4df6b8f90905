"""Checkpoints are complete or absent: SIGKILL at any stage of a write, a full disk, rotation, old folders."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import llama_batch, tiny_llama
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainingArguments

import balora
from balora.errors import DiskFullError, is_disk_full
from balora.training import checkpoints as ckpt

SCRIPT = Path(__file__).parent / "scripts" / "kill_chain.py"


def _fake_checkpoint(folder: Path, step: int, state: str | None = '{"global_step": 1}', weights: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    if weights:
        (path / "adapter_model.safetensors").write_bytes(b"x" * 64)
    (path / "optimizer.pt").write_bytes(b"y" * 128)
    return path


def test_old_folder_trusts_state_and_weights_and_removes_the_rest(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4, state=None)  # killed before trainer_state.json
    _fake_checkpoint(tmp_path, 6, state='{"global_st')  # killed while writing it
    _fake_checkpoint(tmp_path, 8, weights=False)
    with caplog.at_level(logging.INFO, logger="balora"):
        chosen = ckpt.last_complete_checkpoint(tmp_path)
    assert chosen == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "checkpoint-2" in lines[0] and "checkpoint-4 (no trainer_state.json)" in lines[0]
    assert "checkpoint-6 (trainer_state.json does not read)" in lines[0]
    assert "checkpoint-8 (no adapter or model weights)" in lines[0]


def test_marked_folder_trusts_only_sealed_checkpoints_of_the_right_size(tmp_path):
    sealed = _fake_checkpoint(tmp_path, 2)
    ckpt.mark_folder(tmp_path)  # adopts checkpoint-2: complete by the old rule
    assert json.loads((sealed / ckpt.MARKER).read_text())["files"]["optimizer.pt"] == 128
    unsealed = _fake_checkpoint(tmp_path, 4)
    assert ckpt.checkpoint_problem(unsealed) == "no completion marker"
    truncated = _fake_checkpoint(tmp_path, 6)
    ckpt.seal(truncated, 6)
    (truncated / "optimizer.pt").write_bytes(b"y" * 50)
    assert ckpt.checkpoint_problem(truncated) == "optimizer.pt has 50 bytes, not 128"
    garbled = _fake_checkpoint(tmp_path, 8)
    (garbled / ckpt.MARKER).write_text("{")
    newest, bad = ckpt.scan(tmp_path)
    assert newest == sealed
    assert [p.name for p, _ in bad] == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert ckpt.last_complete_checkpoint(tmp_path, remove_incomplete=False) == str(sealed)
    assert len(list(tmp_path.glob("checkpoint-*"))) == 4


def test_disk_full_signs():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"))
    assert is_disk_full(RuntimeError("basic_ios::clear: iostream error"))
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("size mismatch"))
    assert not is_disk_full(RuntimeError("[enforce fail at inline_container.cc:283] reader failed"), strict=True)


def _trainer(out: Path, save_total_limit: int | None = None, steps: int = 4) -> balora.BALoRATrainer:
    torch.manual_seed(0)
    model = balora.adapt(tiny_llama(), "lora", r=2)
    data = Dataset.from_dict({k: v.tolist() for k, v in llama_batch(16, 8, seed=3).items()})
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, save_steps=2,
                             save_strategy="steps", save_total_limit=save_total_limit, report_to=[],
                             disable_tqdm=True, use_cpu=True, seed=0, learning_rate=5e-3)
    return balora.BALoRATrainer(model=model, args=args, train_dataset=data)


def test_a_full_disk_while_sealing_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """save_total_limit=1: transformers would delete checkpoint-2 as soon as checkpoint-4's files exist."""
    original = ckpt.seal

    def seal_on_a_full_disk(checkpoint, step):
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(checkpoint, step)

    monkeypatch.setattr(ckpt, "seal", seal_on_a_full_disk)
    trainer = _trainer(tmp_path, save_total_limit=1)
    with pytest.raises(DiskFullError) as caught:
        trainer.train()
    assert str(caught.value).startswith(f"disk full while writing {tmp_path / 'checkpoint-4'}; the last complete "
                                        f"checkpoint is {tmp_path / 'checkpoint-2'}.")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert ckpt.checkpoint_problem(tmp_path / "checkpoint-2") is None
    assert trainer.args.save_total_limit == 1


def test_torch_writer_failure_is_a_full_disk_and_leaves_nothing(tmp_path, monkeypatch):
    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"")  # what a full disk leaves: a 0-byte file
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match="checkpoint-2; no checkpoint is complete yet"):
        _trainer(tmp_path).train()
    assert list(tmp_path.glob("checkpoint-*")) == []


def test_rotation_keeps_the_newest_sealed_checkpoints(tmp_path):
    trainer = _trainer(tmp_path, save_total_limit=2, steps=8)
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    assert all(ckpt.checkpoint_problem(p) is None for p in tmp_path.glob("checkpoint-*"))
    assert ckpt.resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")


def test_train_resume_true_skips_a_half_written_newest_checkpoint(tmp_path):
    _trainer(tmp_path, steps=4).train()
    shutil.rmtree(tmp_path / "checkpoint-4")
    shutil.copytree(tmp_path / "checkpoint-2", tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()  # what kill -9 mid-write leaves
    (tmp_path / "checkpoint-4" / ckpt.MARKER).unlink(missing_ok=True)
    trainer = _trainer(tmp_path, steps=4)
    trainer.train(resume_from_checkpoint=True)  # transformers' own lookup would pick checkpoint-4 and fail
    assert trainer.state.global_step == 4
    assert not (tmp_path / "checkpoint-4").exists() or ckpt.checkpoint_problem(tmp_path / "checkpoint-4") is None


@pytest.mark.slow
def test_sigkill_at_each_stage_of_a_checkpoint_write_then_resume_gives_the_same_adapter(tiny_dir, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"word{i % 7} text {i},{i % 2}\n" for i in range(80)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(SCRIPT), str(tiny_dir), str(data), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("k1", "k2", "k3"):
        assert report[name]["signal"] == 9, report[name]["stderr"][-2000:]
    assert report["k1"]["checkpoints"]["checkpoint-4"].count(ckpt.MARKER) == 0
    resumed = {name: [line for line in report[name]["stderr"].splitlines() if line.startswith("resuming from")]
               for name in ("k2", "k3", "final")}
    assert resumed["k2"] == [f"resuming from {tmp_path}/run/checkpoints/checkpoint-2; skipped and removed "
                             "incomplete: checkpoint-4 (no completion marker)"]
    assert f"{ckpt.MARKER}.tmp" in report["k2"]["checkpoints"]["checkpoint-6"]
    k3 = f"resuming from {tmp_path}/run/checkpoints/checkpoint-4; skipped and removed incomplete: checkpoint-6 " \
         r"\(no completion marker\); checkpoint-100 \(optimizer.pt has (\d+) bytes, not (\d+)\)"
    match = re.fullmatch(k3, resumed["k3"][0]) if len(resumed["k3"]) == 1 else None
    assert match and int(match[2]) // 2 == int(match[1]), resumed["k3"]
    assert sorted(report["k3"]["checkpoints"]) == ["checkpoint-6", "checkpoint-8"]
    assert resumed["final"] == [f"resuming from {tmp_path}/run/checkpoints/checkpoint-8"]
    assert report["final"]["code"] == 0, report["final"]["stderr"][-2000:]
    run = tmp_path / "run"
    history = json.loads((run / "log_history.json").read_text())
    assert max(h["step"] for h in history) == 8  # the end checkpoint is not trained one step further
    assert json.loads((run / "run_info.json").read_text())["global_steps"] == 8
    reference = load_file(tmp_path / "ref" / "adapter" / "adapter_model.safetensors")
    final = load_file(run / "adapter" / "adapter_model.safetensors")
    assert sorted(reference) == sorted(final) and len(reference) > 10
    for name, tensor in reference.items():
        assert torch.equal(tensor, final[name]), name
    # --resume on the finished run: one line, nothing trained, the stored metrics kept
    again = report["again"]
    assert again["code"] == 0, again["stderr"][-2000:]
    assert f"{run} already holds a finished run (metrics.json): nothing to resume" in again["stderr"]
    assert "resuming from" not in again["stderr"]
    assert report["again"]["checkpoints"] == report["final"]["checkpoints"]

