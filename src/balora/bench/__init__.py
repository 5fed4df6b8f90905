"""``balora bench``: training-step time, peak memory and init time of every method, in one run.

>>> from balora.bench import run_benchmark
>>> rows = run_benchmark("tiny", device="cpu", breakdown=True)   # one dict per method
>>> rows[0]["method"], rows[0]["step_ms"], rows[0]["time_ratio_vs_lora"]

- :mod:`.shapes`: the model shapes (``micro``, ``tiny``, ``llama-1b``, or a model directory).
- :mod:`.worker`: one method's real training step (``BALoRATrainer.training_step`` + optimizer).
- :mod:`.memory`: CUDA peak allocation or the CPU process's peak RSS.
- :mod:`.breakdown`: where BA-LoRA's time goes. :mod:`.report`: text output. :mod:`.runner`: the loop.
- :mod:`.goals`: the cost goals (ratios to LoRA), printed as PASS/FAIL.
"""

from __future__ import annotations

from .goals import GOALS, check_goals, format_goals
from .report import format_report, summary_line
from .runner import REQUIRED_KEYS, add_ratios, default_methods, run_benchmark
from .shapes import SHAPES
from .worker import BENCH_METHODS, NAIVE_DUAL, STOCK_LORA, naive_dual_lora

__all__ = ["BENCH_METHODS", "GOALS", "NAIVE_DUAL", "REQUIRED_KEYS", "SHAPES", "STOCK_LORA", "add_ratios",
           "check_goals", "default_methods", "format_goals", "format_report", "naive_dual_lora", "run_benchmark",
           "summary_line"]
