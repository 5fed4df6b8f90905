""":func:`run_benchmark`: every method on one model shape and batch, one row each, ratios to LoRA."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..methods import DEFAULT_PISSA_NITER, METHODS, get_method
from .shapes import DTYPES, SHAPES, default_batch, default_dtype, scored_length
from .worker import BASELINE, BENCH_METHODS, NAIVE_DUAL, STOCK_LORA, BenchSpec, run_spec

logger = logging.getLogger("balora")

BREAKDOWN_METHOD = "ba-lora"  #: the row whose step --breakdown splits into parts

#: (warm-up steps, timed steps) by device: small on the CPU so the tiny shape runs in a minute or two.
DEFAULT_STEPS = {"cpu": (2, 5), "cuda": (3, 10)}
REQUIRED_KEYS = ("method", "step_ms", "peak_mib", "tokens_per_s", "init_s", "time_ratio_vs_lora",
                 "memory_ratio_vs_lora")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu.")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda or auto, got {device!r}.")
    return device


def _check(methods: list[str], batch_size: int, seq_len: int, scored_fraction: float, rank: int, dtype: str,
           steps: int, warmup: int, svd_init: bool) -> None:
    unknown = [m for m in methods if m not in BENCH_METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown or no methods {unknown}; choose from: {', '.join(BENCH_METHODS)}.")
    if batch_size < 1 or seq_len < 2 or rank < 1 or steps < 1 or warmup < 0:
        raise ConfigError("batch size >= 1, sequence length >= 2, rank >= 1, steps >= 1 and warm-up >= 0 needed.")
    if not 0 < scored_fraction <= 1 or scored_length(seq_len, scored_fraction) < 2:
        raise ConfigError(f"--scored-fraction {scored_fraction} scores fewer than 2 of {seq_len} tokens; raise it.")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if svd_init and not any(_runs_svd(m) for m in methods):
        raise ConfigError("--svd-init times PiSSA's initialisation: include pissa or ba-lora in --methods.")


def run_benchmark(
    model: str = "tiny",
    methods: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    seq_len: int | None = None,
    scored_fraction: float = 0.5,
    rank: int = 16,
    dtype: str | None = None,
    device: str = "auto",
    steps: int | None = None,
    warmup: int | None = None,
    breakdown: bool = False,
    svd_init: bool = False,
    svd_niter: int = DEFAULT_PISSA_NITER,
    dual_naive: bool = False,
    isolate: bool = True,
    threads: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Measure each method's training step on the same model shape and batch; one dict per method.

    Args:
        model: a shape of :data:`~balora.bench.shapes.SHAPES` (``micro``, ``tiny``, ``llama-1b``) or a
            model directory (config only, random weights).
        methods: from :data:`BENCH_METHODS`; default :data:`balora.METHODS` with ``lora-stock`` (stock peft
            LoRA + stock ``transformers.Trainer``) after ``lora``.
            ``dual-lora-naive`` is Dual LoRA through the direct autograd formula (dense ΔW kept);
            ``lora-nf4``/``ba-lora-nf4`` are QLoRA/QPiSSA (NF4 base; only when asked for).
        batch_size, seq_len: default the shape's (``tiny`` 4 × 128, ``llama-1b`` 8 × 512).
        scored_fraction: trailing fraction of each sequence with labels (the prompt part is -100).
        dtype: ``float32`` or ``bfloat16``; default the shape's.
        steps, warmup: timed and untimed steps; default 5 and 2 on the CPU, 10 and 3 on a GPU.
        breakdown: add a ``breakdown`` dict to the ``ba-lora`` row (see :mod:`balora.bench.breakdown`).
        svd_init: add ``svd_init`` (PiSSA adapt() time, exact SVD vs ``pissa_niter_{svd_niter}``) to the
            ``pissa``/``ba-lora`` rows.
        dual_naive: append ``dual-lora-naive`` to the methods.
        isolate: each method in a fresh ``python -m balora.bench --worker`` process (the only way to get a
            per-method CPU peak RSS; also keeps CUDA runs independent). False runs in this process.
        threads: torch's intra-op threads in the measurement (default: torch's own choice).

    Each row has ``method``, ``step_ms`` (median), ``peak_mib``, ``tokens_per_s`` (all B × T tokens;
    ``scored_tokens_per_s`` counts the scored ones), ``init_s`` (adapt() time), ``time_ratio_vs_lora`` and
    ``memory_ratio_vs_lora`` (None without a ``lora`` row), and details; a failed method has ``error``.
    """
    device = resolve_device(device)
    chosen = list(methods) if methods else default_methods()
    if dual_naive and NAIVE_DUAL not in chosen:
        chosen.append(NAIVE_DUAL)
    default_b, default_t = default_batch(model)
    default_warmup, default_steps = DEFAULT_STEPS[device]
    base = dict(model=model, batch_size=batch_size or default_b, seq_len=seq_len or default_t,
                scored_fraction=scored_fraction, rank=rank, dtype=dtype or default_dtype(model, device),
                device=device, steps=default_steps if steps is None else steps,
                warmup=default_warmup if warmup is None else warmup, fresh_process=isolate, seed=seed,
                svd_niter=svd_niter, threads=threads)
    _check(chosen, base["batch_size"], base["seq_len"], scored_fraction, rank, base["dtype"], base["steps"],
           base["warmup"], svd_init)
    if model not in SHAPES:
        from .shapes import model_config

        model_config(model)  # a bad directory fails here, once, not in every worker
    logger.info("bench: %s, %s %s, batch %d x %d, rank %d, %d warm-up + %d timed steps, %s",
                model, device, base["dtype"], base["batch_size"], base["seq_len"], rank, base["warmup"],
                base["steps"], "one process per method" if isolate else "in process")
    rows = []
    for method in chosen:
        spec = BenchSpec(method=method, breakdown=breakdown and method == BREAKDOWN_METHOD, **base)
        row = _run(spec, isolate)
        rows.append(row)
        if "error" in row:
            logger.info("bench: %-16s FAILED: %s", method, row["error"])
        else:
            logger.info("bench: %-16s %9.1f ms/step  %9.1f MiB  init %.3f s", method, row["step_ms"],
                        row["peak_mib"], row["init_s"])
    if svd_init:
        logger.info("bench: timing PiSSA initialisation (exact SVD, pissa_niter_%d)", svd_niter)
        timing = _run(BenchSpec(method="pissa", task="svd-init", **base), isolate)
        for row in rows:
            if _runs_svd(row["method"]):
                row["svd_init"] = timing
    add_ratios(rows)
    return rows


def default_methods() -> list[str]:
    """Every registered method, with ``lora-stock`` right after ``lora`` (the two read side by side)."""
    chosen = list(METHODS)
    chosen.insert(chosen.index(BASELINE) + 1 if BASELINE in chosen else len(chosen), STOCK_LORA)
    return chosen


def _runs_svd(method: str) -> bool:
    """Whether ``method`` (a registered method, or a bench-only variant) initialises through an SVD."""
    return method in METHODS and "pissa_niter" in get_method(method).reads


def _run(spec: BenchSpec, isolate: bool) -> dict[str, Any]:
    if not isolate:
        try:
            return run_spec(spec)
        except ConfigError:
            raise
        except Exception as exc:  # one method failing (e.g. out of memory) must not lose the others
            return _failed(spec.method, f"{type(exc).__name__}: {exc}")
    return _run_in_subprocess(spec)


def _run_in_subprocess(spec: BenchSpec) -> dict[str, Any]:
    """``python -m balora.bench --worker SPEC --result FILE``; the child's output is kept off our stdout."""
    src = str(Path(__file__).resolve().parents[2])  # so the child imports this very balora
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="balora-bench-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "balora.bench", "--worker", json.dumps(asdict(spec)),
                   "--result", str(result)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if proc.stderr.strip():
            logger.debug("bench worker %s said:\n%s", spec.method, proc.stderr.rstrip())
        if not result.is_file():
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            hint = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
            return _failed(spec.method, f"worker exited with code {proc.returncode}{hint}: {tail}")
        outcome = json.loads(result.read_text())
    if outcome.get("config_error"):
        raise ConfigError(outcome["error"])
    return outcome["row"] if "row" in outcome else _failed(spec.method, outcome["error"])


def _failed(method: str, error: str) -> dict[str, Any]:
    return {"method": method, **dict.fromkeys(REQUIRED_KEYS[1:]), "error": error}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Time and memory as ratios to the ``lora`` row of the same run; fill the breakdown's shares."""
    lora = next((r for r in rows if r["method"] == BASELINE and "error" not in r), None)
    for row in rows:
        if "error" in row:
            continue
        row["time_ratio_vs_lora"] = round(row["step_ms"] / lora["step_ms"], 4) if lora else None
        fits = lora is not None and lora["peak_mib"] > 0
        row["memory_ratio_vs_lora"] = round(row["peak_mib"] / lora["peak_mib"], 4) if fits else None
        mine, base = row.get("tensor_peak_mib"), (lora or {}).get("tensor_peak_mib")
        row["tensor_memory_ratio_vs_lora"] = round(mine / base, 4) if mine is not None and base else None
        pieces = row.get("breakdown")
        if pieces and lora:
            _explain(pieces, row["step_ms"], lora["step_ms"])
            pieces.update(lora_peak_mib=lora["peak_mib"], over_lora_mib=round(row["peak_mib"] - lora["peak_mib"], 3))


def _explain(pieces: dict[str, Any], balora_ms: float, lora_ms: float) -> None:
    """BA-LoRA's step minus LoRA's, split into the reference forward, the terms and what is left."""
    for key in [k for k in pieces if k.endswith("_ms")]:
        pieces[key.removesuffix("_ms") + "_vs_lora"] = round(pieces[key] / lora_ms, 4)
    over = balora_ms - lora_ms
    explained = pieces["reference_forward_ms"] + pieces.get("gather_ms", 0.0) + pieces["regularizers_ms"]
    pieces.update(lora_step_ms=lora_ms, balora_step_ms=balora_ms, over_lora_ms=round(over, 3),
                  unexplained_ms=round(over - explained, 3))
