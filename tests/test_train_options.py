"""The training knobs as settings fields (flags and YAML keys): quantize, gradient checkpointing, report-to,
LR scheduler, gradient clipping, bf16 — on a tiny local causal LM."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

from balora.cli.main import main
from balora.errors import ConfigError
from balora.experiment.settings import TrainSettings
from balora.methods import AdapterOptions


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": f"{a} plus {b}", "response": f"{a + b}"} for a in range(6) for b in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _scalars(folder, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def test_quantized_checkpointed_run_logs_the_terms_to_tensorboard(tiny_causal_dir, pairs_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    code = main(["train", "--model", str(tiny_causal_dir), "--dataset", str(pairs_file), "--method", "ba-lora",
                 "--output", str(out), "--max-steps", "4", "--batch-size", "4", "--rank", "4", "--quantize", "nf4",
                 "--gradient-checkpointing", "--report-to", "tensorboard", "--lr-scheduler", "cosine",
                 "--warmup-ratio", "0", "--max-grad-norm", "0.5", "--logging-steps", "1", "--learning-rate", "1e-2",
                 "--generate-size", "1", "--max-new-tokens", "2", "--max-length", "32"])
    assert code == 0
    consistency = _scalars(out / "tensorboard", "train/reg/consistency")
    assert [step for step, _ in consistency] == [1, 2, 3, 4]
    assert consistency[0][1] == pytest.approx(0.0, abs=1e-6)  # the reference is the step-0 (QPiSSA) model
    assert consistency[-1][1] > 0
    rates = [value for _, value in _scalars(out / "tensorboard", "train/learning_rate")]
    expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * step / 4)) for step in range(4)]
    assert rates == pytest.approx(expected, rel=1e-5)  # cosine, not the default linear decay
    config = (out / "config.yaml").read_text()
    assert "quantize: nf4" in config and "gradient_checkpointing: true" in config
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] > 0


def test_options_reach_the_training_arguments(tiny_causal_dir, pairs_file, tmp_path):
    from balora.experiment.data import load_experiment_data
    from balora.experiment.run import build_trainer

    settings = TrainSettings.from_dict({"model": str(tiny_causal_dir), "dataset": str(pairs_file),
                                        "output": str(tmp_path), "method": "lora", "rank": 4,
                                        "max_grad_norm": 0.25, "lr_scheduler": "constant", "bf16": True,
                                        "gradient_checkpointing": True, "max_steps": 1})
    trainer, _ = build_trainer(settings, load_experiment_data(settings), tmp_path)
    args = trainer.args
    assert (args.max_grad_norm, args.lr_scheduler_type.value, args.bf16) == (0.25, "constant", True)
    assert getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", None)


def test_bad_option_values_are_one_line_errors(tiny_causal_dir, pairs_file, tmp_path, capsys):
    base = ["train", "--model", str(tiny_causal_dir), "--dataset", str(pairs_file), "--output", str(tmp_path / "x")]
    for extra, message in ((["--quantize", "fp8"], "invalid choice"),
                           (["--method", "full", "--quantize", "nf4"], "--quantize is an option of --method"),
                           (["--max-grad-norm", "-1"], "--max-grad-norm must be >= 0"),
                           (["--report-to", "mlflow"], "invalid choice"),
                           (["--lr-scheduler", "zigzag"], "invalid choice")):
        try:
            code = main(base + extra)
        except SystemExit as exc:  # argparse's own choice check
            code = exc.code
        assert code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(ConfigError, match="--quantize is an option"):
        TrainSettings(model="m", dataset="d", output="o", method="full", adapter=AdapterOptions(quantize="nf4"))


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_a_missing_logging_package_is_one_line_before_anything_loads(tiny_causal_dir, pairs_file, tmp_path, capsys,
                                                                      monkeypatch, backend):
    from balora.experiment import reporting

    monkeypatch.setattr(reporting, "_installed", lambda package: package != backend)  # as on a machine without it
    out = tmp_path / "run"
    code = main(["train", "--model", str(tiny_causal_dir), "--dataset", str(pairs_file), "--output", str(out),
                 "--max-steps", "1", "--report-to", backend])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"balora: error: --report-to {backend} needs {backend}: "
                     f"{reporting.BACKENDS[backend][1]}."]  # nothing loaded, logged or written first
    assert not out.exists()


def test_each_wandb_run_gets_its_own_folder_and_is_finished(tmp_path, monkeypatch):
    """A compare grid trains its cells in one process: each cell must be its own wandb run, in its own folder."""
    import types

    from balora.experiment.reporting import reporting_session

    finished = []
    fake = types.SimpleNamespace(run=None)
    fake.finish = lambda: (finished.append(os.environ["WANDB_DIR"]), setattr(fake, "run", None))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's choice is kept
    for cell in ("a", "b"):
        with reporting_session("wandb", tmp_path / cell):
            assert os.environ["WANDB_DIR"] == str(tmp_path / cell) and os.environ["WANDB_MODE"] == "online"
            fake.run = object()  # what WandbCallback's wandb.init leaves behind
        assert "WANDB_DIR" not in os.environ and os.environ["WANDB_MODE"] == "online"
    assert finished == [str(tmp_path / "a"), str(tmp_path / "b")]
    with reporting_session("none", tmp_path / "c"):
        assert "WANDB_DIR" not in os.environ
