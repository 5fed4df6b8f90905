"""``balora bench`` (library and CLI) and the Dual LoRA layer's memory-efficient training path."""

from __future__ import annotations

import argparse
import importlib
import json
import math

import pytest
import torch
from conftest import tiny_llama

import balora
from balora.bench import (
    BENCH_METHODS,
    NAIVE_DUAL,
    REQUIRED_KEYS,
    STOCK_LORA,
    add_ratios,
    check_goals,
    default_methods,
    format_goals,
    format_report,
    naive_dual_lora,
    run_benchmark,
)
from balora.bench.memory import MemoryMeter
from balora.dual_lora import DualLoraLinear
from balora.dual_lora.functional import delta_weight
from balora.errors import ConfigError
from balora.methods import METHODS

FAST = {"device": "cpu", "steps": 2, "warmup": 1}


def _check_row(row: dict) -> None:
    assert "error" not in row, row.get("error")
    for key in REQUIRED_KEYS:
        assert key in row, key
    for key in ("step_ms", "peak_mib", "tokens_per_s", "init_s", "time_ratio_vs_lora", "memory_ratio_vs_lora"):
        value = row[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (row["method"], key, value)
    assert math.isfinite(row["final_loss"])


def test_run_benchmark_gives_a_complete_row_per_method():
    rows = run_benchmark("micro", dual_naive=True, breakdown=True, svd_init=True, isolate=False, **FAST)
    assert [r["method"] for r in rows] == [*default_methods(), NAIVE_DUAL]
    assert set(METHODS) | {STOCK_LORA} == set(default_methods())
    for row in rows:
        _check_row(row)
    by = {r["method"]: r for r in rows}
    assert by["lora"]["time_ratio_vs_lora"] == 1.0 and by["lora"]["memory_ratio_vs_lora"] == 1.0
    assert by["full"]["trainable_params"] > by["lora"]["trainable_params"]
    assert by[STOCK_LORA]["trainable_params"] == by["lora"]["trainable_params"]  # the same adapter, stock code
    assert by[STOCK_LORA]["final_loss"] == pytest.approx(by["lora"]["final_loss"], rel=1e-4)
    parts = by["ba-lora"]["breakdown"]
    for key in ("reference_forward_ms", "task_loss_ms", "consistency_ms", "diversity_ms", "svd_ms"):
        assert parts[key] > 0 and math.isfinite(parts[key]), key
    assert math.isfinite(parts["regularizers_ms"])  # the all-terms pass minus the CE pass
    assert parts["scored_rows"] == 2 * 8  # batch 2 x 16, half scored: 8 predicting positions per sequence
    assert "lora_step_ms" in parts and "unexplained_ms" in parts
    for method in ("pissa", "ba-lora"):
        assert by[method]["svd_init"]["exact_s"] > 0 and by[method]["svd_init"]["randomized_s"] > 0
    report = format_report(rows)
    assert "BA-LoRA breakdown" in report and "dual-lora vs naive" in report and "PiSSA initialisation" in report
    assert "Goals (cpu" in report and "balora lora vs lora-stock" in report
    json.dumps(rows)  # plain JSON values only


def _cli(argv: list[str]) -> int:
    """``balora ...`` in process: the real entry point when every subcommand module exists, else the same
    wiring (parser, YAML defaults, run) with only ``bench`` registered."""
    from balora.cli import main as cli_main

    try:
        for name in cli_main.COMMANDS:
            importlib.import_module(f"balora.cli.{name}")
    except ModuleNotFoundError:
        from balora.cli import bench
        from balora.cli.common import apply_yaml_config

        parser = argparse.ArgumentParser(prog="balora")
        bench.add_parser(parser.add_subparsers(dest="command", required=True))
        return bench.run(apply_yaml_config(parser, argv))
    return cli_main.main(argv)


def test_cli_prints_json_rows_one_process_per_method(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = _cli(["bench", "--model", "micro", "--device", "cpu", "--json", "--methods", "lora", "dual-lora",
                 "--steps", "2", "--warmup", "1", "--output", str(out)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["lora", "dual-lora"]
    for row in rows:
        _check_row(row)
        assert row["fresh_process"] and row["memory_kind"].startswith("cpu peak RSS")
    assert rows[0]["time_ratio_vs_lora"] == 1.0
    assert json.loads(out.read_text()) == rows


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown"):
        run_benchmark("micro", ["lora", "qlora"], isolate=False, **FAST)
    with pytest.raises(ConfigError, match="svd-init"):
        run_benchmark("micro", ["lora"], svd_init=True, isolate=False, **FAST)
    with pytest.raises(ConfigError, match="scored"):
        run_benchmark("micro", ["lora"], scored_fraction=0.01, isolate=False, **FAST)
    assert NAIVE_DUAL in BENCH_METHODS


def test_nf4_rows_train_over_linear4bit_base_layers_and_are_opt_in():
    pytest.importorskip("bitsandbytes")
    from balora.bench.shapes import build_model, model_config
    from balora.bench.worker import QUANTIZED, adapt_for

    assert not set(QUANTIZED) & set(default_methods()) and set(QUANTIZED) <= set(BENCH_METHODS)
    rows = run_benchmark("micro", ["lora", "lora-nf4", "ba-lora-nf4"], isolate=False, device="cpu", steps=1,
                         warmup=0)
    by = {r["method"]: r for r in rows}
    for method in ("lora-nf4", "ba-lora-nf4"):
        _check_row(by[method])
        assert by[method]["quantize"] == "nf4" and by[method]["quantized_layers"] == 2 * 7  # 2 layers x 7 linears
        assert by[method]["trainable_params"] == by["lora"]["trainable_params"]  # only the adapter trains
    assert "quantize" not in by["lora"]
    model = adapt_for(build_model(model_config("micro"), "float32", "cpu", 0), "ba-lora-nf4", 4)
    bases = {type(m.base_layer) for m in model.modules() if hasattr(m, "lora_A")}
    assert [(b.__module__.split(".")[0], b.__name__) for b in bases] == [("bitsandbytes", "Linear4bit")]


def _synthetic(device: str = "cpu") -> list[dict]:
    """Rows with known times and memory: ratios to the lora row are known exactly."""
    def row(method: str, ms: float, mib: float, tensor_mib: float | None) -> dict:
        return {"method": method, "step_ms": ms, "peak_mib": mib, "tensor_peak_mib": tensor_mib, "device": device}

    rows = [row("lora", 200.0, 400.0, 100.0), row("ba-lora", 278.0, 470.0, 114.0),
            row("dual-lora", 240.0, 390.0, 101.0), row("pissa", 204.0, 420.0, None),
            {"method": "dora", "error": "out of memory"}]
    rows[1]["breakdown"] = {"reference_forward_ms": 40.0, "gather_ms": 5.0, "regularizers_ms": 30.0}
    return rows


def test_ratios_and_goals_on_rows_with_known_answers():
    rows = _synthetic()
    add_ratios(rows)
    by = {r["method"]: r for r in rows}
    assert by["lora"]["time_ratio_vs_lora"] == 1.0 and by["lora"]["memory_ratio_vs_lora"] == 1.0
    assert by["ba-lora"]["time_ratio_vs_lora"] == 1.39 and by["ba-lora"]["memory_ratio_vs_lora"] == 1.175
    assert by["dual-lora"]["time_ratio_vs_lora"] == 1.2 and by["dual-lora"]["memory_ratio_vs_lora"] == 0.975
    assert by["pissa"]["time_ratio_vs_lora"] == 1.02 and by["pissa"]["memory_ratio_vs_lora"] == 1.05
    assert by["ba-lora"]["tensor_memory_ratio_vs_lora"] == 1.14
    assert by["dual-lora"]["tensor_memory_ratio_vs_lora"] == 1.01
    assert by["pissa"]["tensor_memory_ratio_vs_lora"] is None  # not measured
    parts = by["ba-lora"]["breakdown"]
    assert parts["over_lora_ms"] == 78.0 and parts["unexplained_ms"] == 3.0  # 78 - (40 + 5 + 30)
    assert parts["reference_forward_vs_lora"] == 0.2 and parts["over_lora_mib"] == 70.0
    verdicts = {(c["method"], c["what"]): c["passed"] for c in check_goals(rows)}
    assert verdicts == {("ba-lora", "time"): True, ("ba-lora", "peak memory"): False,
                        ("ba-lora", "tensor memory"): True,  # the CPU's tensor count: <= 1.15
                        ("dual-lora", "time"): False, ("dual-lora", "peak memory"): True,
                        ("dual-lora", "tensor memory"): False,  # <= 1.00
                        ("pissa", "time"): True, ("pissa", "peak memory"): False, ("pissa", "tensor memory"): None}
    text = format_goals(rows)
    assert "ba-lora    time          goal <= 1.40" in text and "measured 1.39x   PASS" in text
    assert "pissa      peak memory   goal 1.00 ± 0.03" in text and "measured 1.05x   FAIL" in text
    assert "ba-lora    tensor memory goal <= 1.15      measured 1.14x   PASS" in text
    gpu = _synthetic("cuda")
    add_ratios(gpu)
    verdicts = {(c["method"], c["what"]): c["passed"] for c in check_goals(gpu)}
    assert verdicts == {("ba-lora", "time"): False, ("ba-lora", "peak memory"): False,  # GPU: <= 1.20, <= 1.05
                        ("dual-lora", "time"): False, ("dual-lora", "peak memory"): True}
    assert all(c["passed"] is None for c in check_goals([r for r in rows if r["method"] != "ba-lora"])
               if c["method"] == "ba-lora")


def _peak_mib(allocate_mib: int) -> float:
    """MemoryMeter's CPU peak over a step that allocates (and touches) ``allocate_mib`` MiB, then frees it."""
    meter = MemoryMeter("cpu", fresh_process=False)
    meter.start()
    meter.steady()

    def step() -> None:
        block = torch.ones(allocate_mib * 2**20 // 4)  # float32: 4 bytes each, every page written
        del block

    report = meter.report(step)
    assert report["memory_kind"].startswith("cpu peak RSS (VmHWM) over 2 steps")
    return report["peak_mib"]


def test_cpu_peak_rss_sees_a_known_allocation():
    if not _can_reset_peak():
        pytest.skip("this kernel does not let a process reset its RSS peak (/proc/self/clear_refs)")
    quiet, loud, quiet_again = _peak_mib(0), _peak_mib(200), _peak_mib(0)
    assert 190 <= loud - max(quiet, quiet_again) <= 230, (quiet, loud, quiet_again)


def test_cpu_tensor_peak_counts_held_and_step_tensors_exactly():
    """tensor_peak_mib = tensors created since start() and still held (the 'weights') + the step's rise."""
    meter = MemoryMeter("cpu", fresh_process=False)
    meter.start()
    weights = torch.zeros(24 * 2**20 // 4)  # 24 MiB held from before the step to after it

    def step() -> None:
        first = torch.ones(40 * 2**20 // 4)
        view = first[: 2**20]  # a view: no new storage
        second = torch.ones(8 * 2**20 // 4)  # 48 MiB at once
        del first, view, second
        torch.ones(16 * 2**20 // 4)  # freed at once: 16 MiB, below the peak

    meter.steady()
    report = meter.report(step)
    if report["tensor_peak_mib"] is None:
        pytest.skip("this torch's profiler records no CPU memory events")
    assert abs(report["tensor_peak_mib"] - (24 + 48)) < 0.5, report
    del weights


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# ---- Dual LoRA at the layer level: recomputing Function == direct formula, and what autograd keeps --------


def _dual_layer() -> tuple[torch.nn.Module, DualLoraLinear]:
    model = balora.adapt(tiny_llama(dtype=torch.float64), method="dual-lora", r=6, r1=2, r2=4, lora_alpha=8,
                         warmup_steps=4)
    balora.set_training_step(model, 2)  # warm-up factor 0.5
    model.train()
    layer = model.base_model.model.model.layers[0].mlp.up_proj  # d_in 32 -> d_out 64: transposes would show
    assert isinstance(layer, DualLoraLinear)
    return model, layer


def _outputs_and_grads(layer: DualLoraLinear, x: torch.Tensor, g: torch.Tensor, manual: bool):
    A, B, C, D = layer.dual_factors("default")
    if manual:
        factor = layer.lora_warmup["default"]
        out = layer.get_base_layer()(x) + x @ (factor * delta_weight(A, B, C, D, layer.scaling["default"])).T
    else:
        out = layer(x)
    grads = torch.autograd.grad((out * g).sum(), [x, A, B, C, D])
    return out, grads


def test_recomputing_dual_lora_equals_direct_formula_at_the_layer():
    _, layer = _dual_layer()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 32, dtype=torch.float64, generator=gen, requires_grad=True)
    g = 300 * torch.randn(3, 5, 64, dtype=torch.float64, generator=gen)  # large: the STE clip is active
    out, grads = _outputs_and_grads(layer, x, g, manual=False)
    ref_out, ref_grads = _outputs_and_grads(layer, x, g, manual=True)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    for name, got, want in zip("xABCD", grads, ref_grads, strict=True):
        assert got.abs().max() > 0, name
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=f"gradient of {name}")
    with naive_dual_lora():  # the bench's naive path is the same function
        naive_out, naive_grads = _outputs_and_grads(layer, x, g, manual=False)
    torch.testing.assert_close(naive_out, ref_out, rtol=0, atol=1e-10)
    for got, want in zip(naive_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def _saved_shapes(layer: DualLoraLinear, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of the tensors autograd keeps for backward in ``layer(x)``, the frozen weight itself left out."""
    weight_ptr = layer.get_base_layer().weight.data_ptr()
    shapes: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() != weight_ptr:
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum()
    return shapes


def test_recomputing_dual_lora_saves_no_dense_matrix_but_naive_does():
    _, layer = _dual_layer()
    dense = tuple(layer.get_base_layer().weight.shape)  # (d_out, d_in) = (64, 32)
    x = torch.randn(3, 5, 32, dtype=torch.float64, requires_grad=True)
    assert dense not in _saved_shapes(layer, x)
    with naive_dual_lora():
        assert dense in _saved_shapes(layer, x)
    assert dense not in _saved_shapes(layer, x)  # the patch is undone


def test_benchmarks_page_is_what_the_committed_json_gives():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_benchmarks.py"
    spec = importlib.util.spec_from_file_location("make_benchmarks", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "docs/benchmarks.md is stale: run `make bench-docs`"
    assert "<!-- BEGIN tiny-report -->" in module.DOC.read_text()
