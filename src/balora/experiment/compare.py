"""A grid of runs: methods x settings x seeds, each a ``balora train`` run in its own folder (design §4).

``OUT/cells/<cell>/`` holds each run; a cell with ``metrics.json`` is finished and skipped on re-runs, an
interrupted one resumes from its last checkpoint. ``OUT/results.csv`` / ``results.json`` hold one row per
finished cell and ``OUT/summary.csv`` the mean ± sample std over seeds per method and setting.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import LOCK_NAME, FolderLock, write_json_atomic, write_text_atomic
from ..errors import BaloraError, ConfigError, TrainingInterrupted
from ..methods import get_method
from ..training import PRESETS
from .results import summarize
from .run import METRICS_FILE, run_training
from .schema import option, options, parse_value
from .settings import TrainSettings

logger = logging.getLogger("balora")


@dataclass
class Cell:
    name: str
    method: str
    seed: int
    setting: dict[str, Any]


def parse_grid(entries: list[str] | None) -> dict[str, list[Any]]:
    """``["label_noise=0,0.2", "rank=4,8"]`` -> {"label_noise": [0.0, 0.2], "rank": [4, 8]} (typed)."""
    grid: dict[str, list[Any]] = {}
    for entry in entries or []:
        key, sep, values = entry.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values:
            raise ConfigError(f"grid entry {entry!r} must look like KEY=V1,V2.")
        if key in ("method", "seed", "output", "resume", "overwrite"):
            raise ConfigError(f"grid key {key!r} is not a setting that can vary (methods and seeds have their "
                              "own options).")
        opt = option(TrainSettings, key)
        grid[key] = [parse_value(opt, v.strip()) for v in values.split(",")]
    return grid


def make_cells(methods: list[str], seeds: list[int], grid: dict[str, list[Any]]) -> list[Cell]:
    keys = list(grid)
    cells = []
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values, strict=True))
        for method in methods:
            for seed in seeds:
                tag = "".join(f"-{k}{v}" for k, v in setting.items())
                cells.append(Cell(f"{method}{tag}-seed{seed}", method, seed, setting))
    return cells


def run_grid(base: TrainSettings, methods: list[str], seeds: list[int], grid: dict[str, list[Any]],
             output: Path, metric: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every unfinished cell; returns (result rows, failed cell names)."""
    cells = make_cells(methods, seeds, grid)
    with FolderLock(output, "balora compare"):
        failed = _run_cells(base, cells, output)
    rows = collect_results(output, cells)
    write_results(output, rows, metric, list(grid))
    return rows, failed


def _run_cells(base: TrainSettings, cells: list[Cell], output: Path) -> list[str]:
    failed: list[str] = []
    for index, cell in enumerate(cells, 1):
        folder = output / "cells" / cell.name
        settings = base.replaced(method=cell.method, seed=cell.seed, output=str(folder), resume=False,
                                 overwrite=False, **cell.setting)
        if (folder / METRICS_FILE).is_file():
            _check_same_settings(folder, settings)
            logger.info("[%d/%d] %s: finished before, skipped", index, len(cells), cell.name)
            continue
        resume = folder.exists() and any(p.name != LOCK_NAME for p in folder.iterdir())
        settings = settings.replaced(resume=resume)
        logger.info("[%d/%d] %s%s", index, len(cells), cell.name, " (resuming)" if resume else "")
        try:
            run_training(settings)
        except (BaloraError, KeyboardInterrupt, TrainingInterrupted):
            raise  # bad settings affect every cell; an interruption stops the grid (re-run resumes it)
        except Exception as exc:  # keep the other cells going; the failure is reported at the end
            failed.append(cell.name)
            logger.error("%s failed: %s: %s", cell.name, type(exc).__name__, exc)
            logger.debug(traceback.format_exc())
    return failed


_RUN_CONTROL = ("output", "resume", "overwrite")


def _unread_settings(settings: TrainSettings) -> set[str]:
    """Settings the run's method does not read: a difference there does not change the run."""
    method = get_method(settings.method)
    unread = {o.name for o in options(TrainSettings) if o.group == "adapter" and o.name not in method.reads}
    if len({method.default_preset(p) for p in PRESETS[:2]}) == 1:  # 'auto' does not depend on auto_preset
        unread.add("auto_preset")
    return unread


def _check_same_settings(folder: Path, settings: TrainSettings) -> None:
    """A finished cell is reused only if it was run with the settings asked for now."""
    import yaml

    config = folder / "config.yaml"
    if not config.is_file():
        return
    saved = yaml.safe_load(config.read_text()) or {}
    wanted = settings.to_dict()
    ignored = set(_RUN_CONTROL) | _unread_settings(settings)
    changed = [k for k in wanted if k not in ignored and k in saved and saved[k] != wanted[k]]
    if changed:
        details = ", ".join(f"{k}: {saved[k]!r} -> {wanted[k]!r}" for k in changed[:4])
        raise ConfigError(f"finished cell {folder} was run with other settings ({details}); delete that folder "
                          "to re-run it, or use another --output.")


def collect_results(output: Path, cells: list[Cell]) -> list[dict[str, Any]]:
    rows = []
    for cell in cells:
        file = output / "cells" / cell.name / METRICS_FILE
        if file.is_file():
            metrics = json.loads(file.read_text())
            runtime = metrics.pop("train_runtime_s", None)
            rows.append({"cell": cell.name, "method": cell.method, "seed": cell.seed, **cell.setting, **metrics,
                         "runtime_s": runtime})
    return rows


def summary_rows(rows: list[dict[str, Any]], metric: str, by: list[str]) -> list[dict[str, Any]]:
    """Mean, sample std and count of ``metric`` per group of ``by`` columns (see :func:`balora.plots.summarize`)."""
    if not rows or not any(metric in row for row in rows):
        return []
    groups = summarize(rows, metric, by=by)
    return [{**dict(zip(by, key, strict=True)), "mean": s.mean, "std": s.std, "n": s.n} for key, s in groups.items()]


def write_results(output: Path, rows: list[dict[str, Any]], metric: str, grid_keys: list[str]) -> None:
    write_json_atomic(output / "results.json", rows)
    write_text_atomic(output / "results.csv", _csv(rows))
    summary = summary_rows(rows, metric, ["method", *grid_keys])
    write_text_atomic(output / "summary.csv", _csv([{**s, "metric": metric} for s in summary]))


def _csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def format_table(rows: list[dict[str, Any]], metric: str, grid_keys: list[str]) -> str:
    """Plain-text table: one line per method and setting, ``mean ± std (n seeds)``."""
    summary = summary_rows(rows, metric, ["method", *grid_keys])
    header = ["method", *grid_keys, metric]
    lines = [[str(s[k]) for k in ("method", *grid_keys)] + [f"{s['mean']:.4f} ± {s['std']:.4f} (n={s['n']})"]
             for s in summary]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in lines])
