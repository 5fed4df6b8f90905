"""Wall-clock timing of one call, with the device's queue drained around it (shared by the worker and the
step breakdown)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds one call of ``fn`` takes, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_ms(fn: Callable[[], Any], device: str, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        timed(fn, device)
    return round(1000 * statistics.median(timed(fn, device) for _ in range(reps)), 3)
