"""``make gpu-check-prepare`` + ``make gpu-check DEVICE=cpu``: the one-shot GPU check, end to end on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from balora.bench import NAIVE_DUAL, default_methods

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    data, out = tmp_path / "gpu-check-data", tmp_path / "out"
    spec = importlib.util.spec_from_file_location("gpu_check_prepare", ROOT / "scripts" / "gpu_check_prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    assert prepare.main(["--data", str(data)]) == 0  # in this process: one interpreter start less
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["total_mib"] < 60 and manifest["model_dtype"] == "bfloat16"
    assert (data / "minilm" / "model.safetensors").is_file() and (data / "minilm" / "tokenizer.json").is_file()
    assert not list(data.rglob("*.bin")) and not list(data.rglob("*.pt"))  # safetensors only, no pickle

    if shutil.which("make"):  # the Makefile target itself, with this interpreter
        command = ["make", "-s", "gpu-check", "DEVICE=cpu", f"GPU_CHECK_DIR={data}", f"OUT={out}",
                   f"PY={sys.executable}"]
    else:
        command = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--data", str(data), "--out", str(out)]
    checked = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, check=False)
    assert checked.returncode == 0, (checked.stdout[-3000:], checked.stderr[-3000:])
    assert {p.name for p in out.iterdir()} == {"env.json", "regularizers.json", "train.json", "bench-micro.json",
                                                "summary.md"}
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and env["torch"] and env["transformers"] and env["peft"] and env["gpu"] is None

    regs = json.loads((out / "regularizers.json").read_text())
    assert regs["passed"] and len(regs["results"]) == 12  # six functions x (float32, bfloat16)
    assert {r["function"] for r in regs["results"]} == {"nlu_consistency", "nlu_diversity", "nlu_svd",
                                                        "nlg_consistency", "nlg_diversity", "nlg_svd"}

    train = json.loads((out / "train.json").read_text())
    assert train["passed"] and len(train["losses"]) == train["steps"] == 10
    assert train["last_mean"] < 0.8 * train["first_mean"]

    bench = json.loads((out / "bench-micro.json").read_text())
    assert [r["method"] for r in bench["rows"]] == [*default_methods(), NAIVE_DUAL]
    assert all("error" not in r for r in bench["rows"])
    assert next(r for r in bench["rows"] if r["method"] == "ba-lora")["breakdown"]["scored_rows"] > 0
    assert {(g["method"], g["what"]) for g in bench["goals"]} >= {("ba-lora", "time"), ("dual-lora", "peak memory")}

    summary = (out / "summary.md").read_text()
    for text in ("# balora GPU check", f"torch {env['torch']}", f"peft {env['peft']}", "Goals (cpu",
                 "| regularizers | PASS", "| train | PASS", "| bench | PASS"):
        assert text in summary, text
