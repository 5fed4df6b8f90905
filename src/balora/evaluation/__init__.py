"""Evaluation: GLUE metrics, math answers, sandboxed code tests, batched greedy generation (design §4).

Importing this package is cheap: scikit-learn, scipy, torch and transformers are imported inside the
functions that need them.
"""

from __future__ import annotations

from balora.evaluation.answers import (
    ANSWER_TYPES,
    answer_accuracy,
    answers_match,
    extract_answer,
    extract_final_number,
    extract_final_text,
    math_accuracy,
    normalize_number,
    normalize_text,
    scored_answer,
)
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
    "ANSWER_TYPES",
    "ISOLATION_LEVELS",
    "SandboxResult",
    "answer_accuracy",
    "answers_match",
    "classification_metrics",
    "evaluate_humaneval",
    "extract_answer",
    "extract_code",
    "extract_final_number",
    "extract_final_text",
    "format_prompt",
    "generate_greedy",
    "humaneval_data_path",
    "humaneval_program",
    "load_humaneval_problems",
    "math_accuracy",
    "normalize_number",
    "normalize_text",
    "pass_at_k",
    "regression_metrics",
    "run_python",
    "scored_answer",
    "sandbox_isolation",
    "truncate_at_stop",
]
