"""The command line end to end on a tiny local model: train -> eval -> compare -> plot, files checked."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from conftest import write_sentiment_csv

from balora.cli.main import main


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "sentiment.csv", 120)


def _train_args(tiny_dir, data_file, out, method="ba-lora", *extra):
    return ["train", "--model", str(tiny_dir), "--dataset", str(data_file), "--method", method, "--output", str(out),
            "--max-steps", "6", "--batch-size", "8", "--rank", "4", "--logging-steps", "2", "--max-length", "16",
            "--learning-rate", "5e-3", *extra]


def test_train_writes_metrics_config_adapter_and_logs(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(_train_args(tiny_dir, data_file, out, "ba-lora", "--label-noise", "0.25",
                            "--representation-checkpoints", "2"))
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "val_accuracy" in metrics and "matthews_correlation" in metrics
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"] == "ba-lora" and config["label_noise"] == 0.25
    noisy = json.loads((out / "noise_indices.json").read_text())
    assert len(noisy) == round(0.25 * 96)  # 120 rows - 10% validation - 10% test
    history = json.loads((out / "log_history.json").read_text())
    assert any("reg/consistency" in h for h in history)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    predictions = [json.loads(line) for line in (out / "predictions_test.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == list(range(12))  # 10% of 120 rows, in the split's order
    assert sum(p["correct"] for p in predictions) / 12 == pytest.approx(metrics["accuracy"])
    assert sorted(p.name for p in (out / "representations").iterdir()) == ["step_000000.safetensors",
                                                                         "step_000006.safetensors"]
    assert "balora train: ba-lora" in capsys.readouterr().out

    # eval of the saved adapter reproduces the run's test accuracy on the same rows is not guaranteed
    # (different split); it must run on the whole file and report the metrics
    code = main(["eval", "--model", str(tiny_dir), "--adapter", str(out / "adapter"), "--dataset", str(data_file),
                 "--max-length", "16", "--output", str(tmp_path / "eval.json")])
    assert code == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= evaluated["accuracy"] <= 1.0

    # a finished run is not overwritten by accident
    assert main(_train_args(tiny_dir, data_file, out)) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_compare_grid_then_rerun_skips_finished_cells(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    config = tmp_path / "cmp.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_dir), "dataset": str(data_file), "output": str(out), "methods": ["lora", "ba-lora"],
        "seeds": [0, 1], "grid": {"label_noise": [0.0, 0.2]}, "max_steps": 3, "batch_size": 8, "rank": 4,
        "max_length": 16, "logging_steps": 1,
    }))
    assert main(["compare", "--config", str(config)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 8 and {r["method"] for r in rows} == {"lora", "ba-lora"}
    assert {r["label_noise"] for r in rows} == {0.0, 0.2}
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert len(summary) == 4 and all(s["n"] == "2" for s in summary)
    first = capsys.readouterr().out
    assert "±" in first
    mtime = (out / "cells" / "lora-label_noise0.0-seed0" / "metrics.json").stat().st_mtime
    assert main(["compare", "--config", str(config)]) == 0
    assert (out / "cells" / "lora-label_noise0.0-seed0" / "metrics.json").stat().st_mtime == mtime

    # a finished cell is not reused under other settings
    changed = tmp_path / "changed.yaml"
    changed.write_text(config.read_text().replace("max_steps: 3", "max_steps: 4"))
    assert main(["compare", "--config", str(changed)]) == 2
    assert "was run with other settings (max_steps: 3 -> 4)" in capsys.readouterr().err

    assert main(["plot", "bars", str(out)]) == 0
    assert (out / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "noise", str(out)]) == 0
    assert (out / "noise.png").is_file()


def test_plot_curves_and_tsne_of_a_run(tiny_dir, data_file, tmp_path):
    out = tmp_path / "run"
    assert main(_train_args(tiny_dir, data_file, out, "ba-lora", "--representation-checkpoints", "3")) == 0
    assert main(["plot", "curves", str(out)]) == 0
    assert main(["plot", "tsne", str(out)]) == 0
    for name in ("curves.png", "tsne.png"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "nope-model", "--dataset", "tweets", "--output", "x"], "nope-model"),
        (["train", "--model", "minilm", "--dataset", "no-such-data", "--output", "x"], "no-such-data"),
        (["train", "--model", "minilm", "--dataset", "tweets", "--output", "x", "--label-noise", "1.5"],
         "--label-noise must be between 0 and 1"),
        (["train", "--model", "minilm", "--dataset", "tweets", "--output", "x", "--resume", "--overwrite"],
         "contradict"),
        (["train", "--model", "minilm", "--dataset", "tweets", "--output", "x", "--learning-rate", "0"],
         "--learning-rate must be > 0, got 0.0"),
        (["train", "--model", "minilm", "--dataset", "tweets", "--output", "x", "--batch-size", "0"],
         "--batch-size must be >= 1, got 0"),
        (["train", "--model", "minilm", "--dataset", "tweets", "--output", "x", "--warmup-ratio", "1.5"],
         "--warmup-ratio must be in [0, 1)"),
        (["train", "--model", "minilm", "--dataset", "tweets", "--output", "x", "--test-fraction", "-0.1"],
         "--test-fraction must be in [0, 1)"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_yaml_key_is_rejected(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: minilm\ndataset: tweets\noutput: x\nlearning_rat: 0.1\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "config key 'learning_rat'" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "compare", "bench", "plot"):
        assert command in out


def test_dual_lora_warmup_defaults_to_a_tenth_of_the_run(tiny_dir, data_file, tmp_path):
    out = tmp_path / "dual"
    assert main(_train_args(tiny_dir, data_file, out, "dual-lora", "--max-steps", "30")) == 0
    saved = json.loads((out / "adapter" / "balora_adapter.json").read_text())
    assert saved["method"] == "dual-lora" and saved["peft_config"]["warmup_steps"] == 3


def test_train_and_eval_share_option_names_and_help():
    """One name per option: eval's options are train's (same flag, type and help); train lists every regularizer
    setting; the old eval flag --batch-size still works with a warning."""
    import argparse

    from balora.cli.main import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train, evaluate = subparsers.choices["train"], subparsers.choices["eval"]
    flags = {o: a for a in train._actions for o in a.option_strings}
    for option in ("--temperature", "--top-k", "--nlu-svd-k", "--nlg-svd-k", "--svd-method", "--nlu-target",
                   "--preset", "--consistency-weight", "--rank", "--lora-dropout", "--pissa-niter"):
        assert option in flags, option
    for action in evaluate._actions:
        for option in action.option_strings:
            if option in flags and option not in ("-h", "--help", "--config", "--output", "--batch-size"):
                assert action.help == flags[option].help and action.dest == flags[option].dest, option
    args = parser.parse_args(["eval", "--model", "m", "--dataset", "d", "--batch-size", "7"])
    assert args.eval_batch_size == 7
    args = parser.parse_args(["train", "--model", "m", "--dataset", "d", "--output", "o", "--temperature", "3",
                              "--svd-method", "exact"])
    from balora.cli.train import settings_from_args

    settings = settings_from_args(args)
    assert settings.regularizers.temperature == 3.0 and settings.regularizers.svd_method == "exact"
    assert settings.to_dict()["temperature"] == 3.0  # config.yaml: the same flat name
