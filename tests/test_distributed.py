"""Two CPU processes (gloo) equal one process on the same global batch: DDP, FSDP2, DeepSpeed ZeRO-2/3.

tests/scripts/dist_train.py trains lora, pissa, ba-lora and dual-lora (consistency, diversity and SVD
terms all on from step 0) for 4 steps on a global batch of 4 rows. Each process computes the terms on
its own 2 rows and the gradients are averaged, so the reference is ONE process with gradient
accumulation over the same two halves (per-half terms, averaged): docs/distributed.md.
"""

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
from conftest import tiny_llama
from safetensors.torch import load_file

import balora

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "dist_train.py"
FSDP2_CONFIG = ROOT / "configs" / "fsdp2.yaml"
METHODS = ("lora", "pissa", "ba-lora", "dual-lora")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], timeout: int = 600) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def launch(out: Path, engine: str, *extra: str) -> Path:
    """``accelerate launch`` of dist_train.py on 2 CPU processes; FSDP2 through the repository's config."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is not installed"
    # --multi_gpu / distributed_type FSDP select accelerate's torchrun launcher; the script's
    # TrainingArguments(use_cpu=True) (or its DeepSpeed set-up) makes the process group gloo.
    how = ["--config_file", str(FSDP2_CONFIG)] if engine == "fsdp2" else \
        ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    _run([accelerate, "launch", *how, "--num_processes", "2", "--main_process_port", str(_free_port()),
          str(SCRIPT), str(out), engine, *extra])
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, str(SCRIPT), str(out), "single", "--grad-accum", "2"])
    return out


def _adapters(folder: Path, method: str, name: str = "rank0.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(folder / method / name))


def _info(folder: Path, method: str, rank: int = 0) -> dict:
    return json.loads((folder / method / f"rank{rank}.json").read_text())


def _config(folder: Path) -> dict:
    """An exported adapter_config.json; peft writes target_modules from a set (the order varies by run)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    return config


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def assert_equals_one_process(out: Path, one: Path, methods: tuple[str, ...] = METHODS) -> None:
    for method in methods:
        # the adapter tensors after 4 steps, every rank holding the same whole values
        _close(_adapters(out, method), _adapters(one, method), atol=1e-5)
        _close(_adapters(out, method, "rank1.safetensors"), _adapters(out, method), atol=0)
        tensors = _adapters(out, method)
        for name, initial in tensors.items():  # PiSSA: trained away from the initial adapter it keeps
            if ".balora_initial." in name:
                assert not torch.equal(initial, tensors[name.replace(".balora_initial.", ".default.")])
        # each logged term (mean over the processes) equal to the one-process value, step by step
        logged = [h for h in _info(out, method)["history"] if "loss" in h]
        expected = [h for h in _info(one, method)["history"] if "loss" in h]
        assert len(logged) == len(expected) == 4
        for got, want in zip(logged, expected, strict=True):
            for term in ("consistency", "diversity", "svd"):
                # adapters equal to 1e-5 move the near-zero consistency KL (~5e-5) by ~1e-7
                assert got[f"reg/{term}"] == pytest.approx(want[f"reg/{term}"], rel=1e-4, abs=5e-7), (method, term)
            assert got["reg/diversity"] < 0 and got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert any(h["reg/consistency"] > 0 for h in logged)  # the adapters moved away from the reference
        # trainer.save_model under the engine writes what one process writes for the same adapter
        again = out / method / "one-process-export"
        _export_in_one_process(method, _adapters(out, method), again)
        files = sorted(p.name for p in again.iterdir())
        assert files == sorted(p.name for p in (out / method / "export").iterdir() if p.name != "training_args.bin")
        _close(load_file(str(out / method / "export" / "adapter_model.safetensors")),
               load_file(str(again / "adapter_model.safetensors")), atol=1e-6)
        if "adapter_config.json" in files:
            assert _config(out / method / "export") == _config(again)


def _export_in_one_process(method: str, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """``save_pretrained`` of the script's model (same seed, same PiSSA residual) holding ``tensors``."""
    extra = {"warmup_steps": 2} if method == "dual-lora" else {}
    model = balora.adapt(tiny_llama(seed=0), method=method, r=4, **extra)
    assert not model.load_state_dict(tensors, strict=False).unexpected_keys
    balora.set_training_step(model, 4)  # Dual LoRA's warm-up factor after the run: 1
    model.save_pretrained(folder)


def test_ddp_two_processes_equal_one_process(tmp_path, one_process):
    out = launch(tmp_path, "ddp")
    assert all(_info(out, m)["world_size"] == 2 for m in METHODS)
    assert not any(_info(out, "ba-lora")["probe"]["step"])  # DDP: whole parameters
    assert_equals_one_process(out, one_process)


def test_fsdp2_shards_and_equals_one_process_also_after_resume(tmp_path, one_process):
    out = launch(tmp_path, "fsdp2", "--resume")
    for method in METHODS:
        for rank in (0, 1):
            info = _info(out, method, rank)
            assert info["distributed_type"] == "DistributedType.FSDP" and info["world_size"] == 2
            probe = info["probe"]
            # every step ran on DTensor shards, the reference forward too, on the same modules (no copy)
            assert probe["step"] == [True] * 4 and probe["reference"] == [True] * 4
            assert len(set(probe["params"])) == 1
        # stopped at step 2 (checkpoint) and resumed: the same adapter as the uninterrupted run
        _close(_adapters(out, method, "resumed.safetensors"), _adapters(out, method), atol=1e-5)
    assert_equals_one_process(out, one_process)
    # the PiSSA export is a stock-peft LoRA adapter of rank 2r
    config = json.loads((out / "ba-lora" / "export" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"


def test_deepspeed_zero2_equals_one_process(tmp_path, one_process):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra balora[deepspeed] (make installs it)")
    out = launch(tmp_path, "zero2")
    assert all(_info(out, m)["distributed_type"] == "DistributedType.DEEPSPEED" for m in METHODS)
    assert_equals_one_process(out, one_process)


def test_deepspeed_zero3_partitions_and_equals_one_process(tmp_path, one_process):
    """ZeRO-3 runs on the CPU. PiSSA's plain-LoRA export is not possible there (transformers gathers only
    the trainable parameters, not the initial adapter), so lora and dual-lora are compared here."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra balora[deepspeed] (make installs it)")
    methods = ("lora", "dual-lora")
    out = launch(tmp_path, "zero3", "--methods", ",".join(methods))
    assert all(_info(out, m)["probe"]["step"] == [True] * 4 for m in methods)  # partitioned parameters
    assert_equals_one_process(out, one_process, methods)
