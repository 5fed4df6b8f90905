"""``balora plot`` and ``balora.plots`` on small files shaped like those train and compare write."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from balora import plots
from balora.cli import main as cli_main
from balora.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _ready(name: str) -> bool:
    if importlib.util.find_spec(f"balora.cli.{name}") is None:
        return False
    try:
        module = importlib.import_module(f"balora.cli.{name}")
    except Exception:
        return False
    return hasattr(module, "add_parser") and hasattr(module, "run")


@pytest.fixture
def balora_cli(monkeypatch):
    """``balora.cli.main.main`` with the subcommands that are in place (others may be written in parallel)."""
    monkeypatch.setattr(cli_main, "COMMANDS", tuple(n for n in cli_main.COMMANDS if n == "plot" or _ready(n)))
    return cli_main.main


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024


def make_run(root, terms=("consistency", "diversity", "svd"), steps=(0, 10, 20), n=60, hidden=16, classes=3):
    run = root / "run"
    (run / "representations").mkdir(parents=True)
    history = []
    for step in range(1, 41):
        entry = {"step": step, "epoch": step / 40, "loss": 2.0 / math.sqrt(step), "learning_rate": 1e-4}
        for i, term in enumerate(terms):
            raw = 1.0 / (step + i)
            entry.update({f"reg/{term}": raw, f"reg/{term}_weighted": 0.1 * raw, f"reg/lambda_{term}": 0.1})
        history.append(entry)
        if step % 20 == 0:
            history.append({"step": step, "epoch": step / 40, "eval_loss": 1.5 / math.sqrt(step)})
    history.append({"step": 40, "epoch": 1.0, "train_runtime": 3.2, "train_loss": 0.5})
    (run / "log_history.json").write_text(json.dumps(history))
    (run / "config.yaml").write_text("method: ba-lora\ndataset: tweets\nlabel_noise: 0.2\nrank: 8\n")
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    for step in steps:
        centers = torch.randn(classes, hidden, generator=gen) * (1 + step / 10)
        features = centers[labels] + torch.randn(n, hidden, generator=gen)
        save_file({"features": features.float(), "labels": labels.long()},
                  str(run / "representations" / f"step_{step:06d}.safetensors"))
    return run


def make_cmp(root, rows=None):
    cmp = root / "cmp"
    cmp.mkdir()
    if rows is None:
        rows = []
        for method, bonus in (("lora", 0.0), ("ba-lora", 0.02)):
            for noise in (0.0, 0.2, 0.4):
                for rank in (2, 8):
                    for seed in (0, 1, 2):
                        acc = 0.9 - noise / 2 + bonus + 0.01 * seed + 0.001 * rank
                        rows.append({"cell": f"{method}-n{noise}-r{rank}-s{seed}", "method": method, "seed": seed,
                                     "label_noise": noise, "rank": rank, "accuracy": acc, "f1": acc - 0.05,
                                     "eval_loss": 1 - acc, "runtime_s": 12.5})
    with (cmp / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (cmp / "results.json").write_text(json.dumps(rows))
    return cmp


def test_summarize_mean_and_sample_std():
    rows = [{"method": "lora", "seed": s, "accuracy": v} for s, v in enumerate((0.7, 0.8, 0.9))]
    rows += [{"method": "ba-lora", "seed": 0, "accuracy": 0.85}, {"method": "ba-lora", "seed": 1, "accuracy": None}]
    stats = plots.summarize(rows, "accuracy", by="method")
    assert list(stats) == ["lora", "ba-lora"]
    assert stats["lora"].mean == pytest.approx(0.8)
    assert stats["lora"].std == pytest.approx(0.1)
    assert stats["lora"].n == 3
    assert stats["ba-lora"] == (pytest.approx(0.85), 0.0, 1)  # the missing value is left out; one value: std 0


def test_summarize_groups_by_several_columns_and_names_missing_metric():
    rows = [{"method": "lora", "rank": r, "f1": v} for r, v in ((2, 0.5), (2, 0.7), (4, 0.9))]
    stats = plots.summarize(rows, "f1", by=["method", "rank"])
    assert stats[("lora", 2)].mean == pytest.approx(0.6)
    assert stats[("lora", 2)].std == pytest.approx(math.sqrt(0.02))
    assert stats[("lora", 4)].n == 1
    with pytest.raises(DataError, match="accuracy.*f1"):
        plots.summarize(rows, "accuracy", by="method")


def test_load_results_parses_csv_numbers(tmp_path):
    rows = plots.load_results(make_cmp(tmp_path))
    assert rows[0]["seed"] == 0 and rows[0]["label_noise"] == 0.0 and rows[0]["method"] == "lora"
    assert plots.varying_settings(rows) == ["label_noise", "rank"]
    assert "accuracy" in plots.metric_columns(rows) and "runtime_s" in plots.metric_columns(rows)
    assert plots.load_results(tmp_path / "cmp" / "results.json")[0]["rank"] == 2


def test_plot_curves_cli(tmp_path, balora_cli, capsys):
    run = make_run(tmp_path)
    assert balora_cli(["plot", "curves", str(run)]) == 0
    out = run / "curves.png"
    assert capsys.readouterr().out.strip() == str(out)
    assert_png(out)


def test_curves_show_only_the_terms_present(tmp_path):
    run = make_run(tmp_path, terms=("svd",))
    history = plots.load_log_history(run)
    assert plots.regularizer_terms(history) == ["svd"]
    assert_png(plots.plot_curves(run, tmp_path / "figs" / "curves.png"))
    (run / "log_history.json").write_text(json.dumps([{"step": 1, "loss": 0.5}, {"train_runtime": 1.0}]))
    assert plots.regularizer_terms(plots.load_log_history(run)) == []
    assert_png(plots.plot_curves(run, tmp_path / "plain.png"))


def test_plot_tsne_cli_two_runs(tmp_path, balora_cli, capsys):
    lora = make_run(tmp_path / "a", steps=(0, 20))
    ba = make_run(tmp_path / "b", steps=(0, 20))
    out_dir = tmp_path / "figures"
    code = balora_cli(["plot", "tsne", str(lora), str(ba), "--output", str(out_dir), "--max-points", "40"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out_dir / "tsne.png")
    assert_png(out_dir / "tsne.png")


def test_subsample_keeps_every_label_and_is_seeded():
    labels = torch.tensor([0] * 95 + [1] * 5).numpy()
    keep = plots.subsample(labels, 20, seed=3)
    assert len(keep) == 20 and len(set(keep.tolist())) == 20
    assert set(labels[keep].tolist()) == {0, 1}
    assert (keep == plots.subsample(labels, 20, seed=3)).all()
    assert len(plots.subsample(labels, 500)) == 100


@pytest.mark.parametrize("kind", ["noise", "rank", "bars"])
def test_comparison_plots_cli(tmp_path, balora_cli, capsys, kind):
    cmp = make_cmp(tmp_path)
    assert balora_cli(["plot", kind, str(cmp), "--metric", "f1"]) == 0
    assert capsys.readouterr().out.strip() == str(cmp / f"{kind}.png")
    assert_png(cmp / f"{kind}.png")


def test_bars_with_one_setting_and_library_calls(tmp_path):
    rows = [{"cell": f"{m}-{s}", "method": m, "seed": s, "accuracy": 0.8 + 0.01 * s + (m == "ba-lora") * 0.02}
            for m in ("lora", "pissa", "ba-lora") for s in range(3)]
    assert_png(plots.plot_bars(rows, "accuracy", tmp_path / "bars.png"))
    rows = [dict(r, rank=2 ** (r["seed"] + 1)) for r in rows]
    assert_png(plots.plot_metric_vs(rows, "rank", "accuracy", tmp_path / "rank.png", log2=True))


def test_missing_inputs_exit_2_with_a_message(tmp_path, balora_cli, capsys):
    assert balora_cli(["plot", "curves", str(tmp_path / "nowhere")]) == 2
    assert "balora train" in capsys.readouterr().err
    run = make_run(tmp_path)
    assert balora_cli(["plot", "bars", str(run)]) == 2
    err = capsys.readouterr().err
    assert "results.csv" in err and "balora compare" in err
    (run / "representations" / "step_000000.safetensors").unlink()
    (run / "representations" / "step_000010.safetensors").unlink()
    (run / "representations" / "step_000020.safetensors").unlink()
    assert balora_cli(["plot", "tsne", str(run)]) == 2
    assert "step_XXXXXX.safetensors" in capsys.readouterr().err
    cmp = make_cmp(tmp_path)
    assert balora_cli(["plot", "noise", str(cmp), "--metric", "pass@1"]) == 2
    assert "pass@1" in capsys.readouterr().err
    rows = [{"cell": "a", "method": "lora", "seed": 0, "accuracy": 0.5}]
    other = tmp_path / "other"
    other.mkdir()
    make_cmp(other, rows)
    assert balora_cli(["plot", "rank", str(other / "cmp")]) == 2
    assert "'rank' column" in capsys.readouterr().err
    assert balora_cli(["plot", "curves", str(run), str(run)]) == 2


def test_varying_metrics_are_not_settings():
    from balora.experiment.results import varying_settings

    rows = [{"cell": f"c{i}", "method": "lora", "seed": i, "label_noise": 0.2 * (i % 2), "accuracy": 0.5 + i / 10,
             "precision_class_0": 0.1 * i, "val_f1_macro": 0.3 + i / 7} for i in range(4)]
    assert varying_settings(rows) == ["label_noise"]


def test_tsne_legend_uses_the_runs_class_names(tmp_path):
    from balora.plots.run import _label_names

    (tmp_path / "run_info.json").write_text(json.dumps({"label_names": ["negative", "neutral", "positive"]}))
    assert _label_names(tmp_path) == ["negative", "neutral", "positive"]
    assert _label_names(tmp_path / "missing") == []


def test_methods_sort_in_their_usual_order_then_by_name():
    from balora.plots._common import method_order

    names = ["zeta", "ba-lora", "full", "lora", "dual-lora (lr 0.002)", "pissa", "alpha"]
    assert sorted(names, key=method_order) == ["lora", "pissa", "ba-lora", "dual-lora (lr 0.002)", "full",
                                               "alpha", "zeta"]
