"""Evaluation: GLUE metrics, math answers, sandboxed code tests, batched greedy generation (design §4).

Importing this package is cheap: scikit-learn, scipy, torch and transformers are imported inside the
functions that need them.
"""

from __future__ import annotations

from balora.evaluation.answers import answers_match, extract_final_number, math_accuracy, normalize_number
from balora.evaluation.generation import format_prompt, generate_greedy, truncate_at_stop
from balora.evaluation.humaneval import (
    evaluate_humaneval,
    extract_code,
    humaneval_data_path,
    humaneval_program,
    load_humaneval_problems,
    pass_at_k,
)
from balora.evaluation.metrics import classification_metrics, regression_metrics
from balora.evaluation.sandbox import ISOLATION_LEVELS, SandboxResult, run_python, sandbox_isolation

__all__ = [
    "ISOLATION_LEVELS",
    "SandboxResult",
    "answers_match",
    "classification_metrics",
    "evaluate_humaneval",
    "extract_code",
    "extract_final_number",
    "format_prompt",
    "generate_greedy",
    "humaneval_data_path",
    "humaneval_program",
    "load_humaneval_problems",
    "math_accuracy",
    "normalize_number",
    "pass_at_k",
    "regression_metrics",
    "run_python",
    "sandbox_isolation",
    "truncate_at_stop",
]
