"""BALoRATrainer under `accelerate launch` with 2 CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_run_trains_and_ranks_agree(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is not installed"
    # --multi_gpu selects accelerate's torchrun launcher; TrainingArguments(use_cpu=True) in the script
    # makes the process group gloo on the CPU.
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(SCRIPT), str(tmp_path), "ba-lora"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    tensors = [load_file(str(tmp_path / f"rank{i}.safetensors")) for i in (0, 1)]
    assert tensors[0].keys() == tensors[1].keys() and tensors[0]
    for name in tensors[0]:
        torch.testing.assert_close(tensors[0][name], tensors[1][name], rtol=0, atol=0)
    logged = [h for h in ranks[0]["history"] if "loss" in h]
    assert logged and all("reg/svd" in h and "reg/consistency_weighted" in h for h in logged)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    # the trained adapter moved away from the initial PiSSA adapter that BA-LoRA keeps as its reference
    trained = {n: t for n, t in tensors[0].items() if ".default." in n}
    assert trained
    initial = {n: tensors[0][n.replace(".default.", ".balora_initial.")] for n in trained}
    moved = [n for n, t in trained.items() if not torch.equal(t, initial[n])]
    assert len(moved) == len(trained)
