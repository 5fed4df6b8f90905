"""Every bad input is one line on stderr and exit code 2, with a message that says what to change."""

from __future__ import annotations

import csv
import errno
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from balora.cli.main import main
from balora.models import tiny_model


def _csv(path, rows, header=("text", "label")):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _train(model, data, out, *extra):
    return main(["train", "--model", str(model), "--dataset", str(data), "--output", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--max-length", "16", "--rank", "2", *extra])


def _check(capsys, code, message):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("balora: error:")]
    assert len(errors) == 1 and message in errors[0], err  # progress bars may precede the one error line
    assert "Traceback" not in err


def test_missing_model_directory(tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    _check(capsys, _train(tmp_path / "no-model", data, tmp_path / "o"), "no-model")


def test_partial_model_directory(tmp_path, capsys):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    _check(capsys, _train(tmp_path / "partial", data, tmp_path / "o"), "weights")


def test_empty_data_set(tiny_dir, tmp_path, capsys):
    data = _csv(tmp_path / "empty.csv", [])
    _check(capsys, _train(tiny_dir, data, tmp_path / "o"), "empty")


def test_label_out_of_range(tiny_dir, tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    code = main(["train", "--model", str(tiny_dir), "--dataset", str(data), "--output", str(tmp_path / "o"),
                 "--max-steps", "1", "--rank", "2"])
    assert code == 0  # ids 0/1 fit a 2-label head
    capsys.readouterr()
    other = _csv(tmp_path / "ood.csv", [["a", 0], ["b", 7]] * 5)
    _check(capsys, _train(tiny_dir, data, tmp_path / "o2", "--eval-dataset", str(other)), "7")


def test_unknown_column(tiny_dir, tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10, header=("sentence", "label"))
    _check(capsys, _train(tiny_dir, data, tmp_path / "o"), "sentence")


def test_adapter_for_another_base_model(tiny_dir, tmp_path, capsys):
    from transformers import BertConfig, BertForSequenceClassification

    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    assert _train(tiny_dir, data, tmp_path / "run") == 0
    capsys.readouterr()
    wider = tmp_path / "wider"
    model = BertForSequenceClassification(BertConfig(vocab_size=128, hidden_size=48, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=2))
    model.save_pretrained(wider)
    tiny_model("bert", "classification")[1].save_pretrained(wider)
    code = main(["eval", "--model", str(wider), "--adapter", str(tmp_path / "run" / "adapter"),
                 "--dataset", str(data), "--max-length", "16"])
    _check(capsys, code, "does not fit this base model")


def test_contradictory_and_unknown_options(tiny_dir, tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    _check(capsys, _train(tiny_dir, data, tmp_path / "o", "--preset", "none", "--svd-weight", "0.1"), "contradicts")
    _check(capsys, _train(tiny_dir, data, tmp_path / "o", "--method", "lora", "--r1", "2"), "dual-lora only")


def test_unknown_method_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "m", "--dataset", "d", "--output", "o", "--method", "qlora"])
    assert info.value.code == 2
    assert "invalid choice: 'qlora'" in capsys.readouterr().err


def test_a_folder_in_use_is_refused(tiny_dir, tmp_path, capsys):
    from balora.atomic import FolderLock

    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    with FolderLock(tmp_path / "busy", "a test"):
        _check(capsys, _train(tiny_dir, data, tmp_path / "busy"), "is in use by a test (pid")
    assert _train(tiny_dir, data, tmp_path / "busy") == 0  # released


@pytest.mark.parametrize("text", ["{not json", '{"model_type": "bert", "hidden_size": "big"}'])
def test_malformed_model_config_is_named(tiny_dir, tmp_path, capsys, text):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "config.json").write_text(text)
    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    _check(capsys, _train(broken, data, tmp_path / "o"), f"{broken / 'config.json'} ")


def test_a_label_outside_the_fixed_classes(tiny_dir, tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", [["a", "pos"], ["b", "neg"]] * 10 + [["c", "oops"]])
    _check(capsys, _train(tiny_dir, data, tmp_path / "o", "--labels", "neg,pos"), "'oops' (row 20) in column 'label'")
    _check(capsys, _train(tiny_dir, data, tmp_path / "o2", "--labels", "pos"), "at least 2 comma-separated classes")


def test_adapter_for_a_base_of_another_name_needs_allow_other_base(tiny_dir, tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    assert _train(tiny_dir, data, tmp_path / "run") == 0
    other = tmp_path / "copies" / "other-name"
    shutil.copytree(tiny_dir, other)  # same shapes and weights, another name
    evaluate = ["eval", "--model", str(other), "--adapter", str(tmp_path / "run" / "adapter"), "--dataset", str(data),
                "--max-length", "16"]
    capsys.readouterr()
    _check(capsys, main(evaluate), "--allow-other-base")
    assert main([*evaluate, "--allow-other-base"]) == 0


def test_disk_full_while_writing_the_adapter_then_the_metrics(tiny_dir, tmp_path, capsys, monkeypatch):
    from balora.experiment import run

    data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
    out, save_adapter, write_json = tmp_path / "o", run.save_adapter_atomic, run.write_json_atomic

    def full_disk(directory, *args, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "adapter_config.json").write_bytes(b"")  # what peft leaves behind on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    def save_adapter_on_a_full_disk(model, folder):
        model.save_pretrained = full_disk
        save_adapter(model, folder)

    def metrics_on_a_full_disk(path, values):
        if Path(path).name == "metrics.json":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return write_json(path, values)

    last = out / "checkpoints" / "checkpoint-2"
    monkeypatch.setattr(run, "save_adapter_atomic", save_adapter_on_a_full_disk)
    _check(capsys, _train(tiny_dir, data, out, "--save-steps", "1"),
           f"disk full while writing {out / 'adapter'}; the last complete checkpoint is {last}.")
    assert not (out / "adapter").exists() and not (out / ".adapter.tmp").exists()
    monkeypatch.setattr(run, "save_adapter_atomic", save_adapter)
    monkeypatch.setattr(run, "write_json_atomic", metrics_on_a_full_disk)
    _check(capsys, _train(tiny_dir, data, out, "--save-steps", "1", "--resume"),
           f"disk full while writing {out / 'metrics.json'}; the last complete checkpoint is {last}.")
    assert not (out / "metrics.json").exists()  # so a later --resume does not take the run for finished
    monkeypatch.setattr(run, "write_json_atomic", write_json)
    assert _train(tiny_dir, data, out, "--save-steps", "1", "--resume") == 0
    assert json.loads((out / "run_info.json").read_text())["global_steps"] == 2
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] >= 2


def test_a_real_full_disk(tiny_dir, tmp_path, capsys):
    from balora.training.checkpoints import checkpoint_problem

    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 160 KiB tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        data = _csv(tmp_path / "d.csv", [["a", 0], ["b", 1]] * 10)
        code = _train(tiny_dir, data, disk / "run", "--max-steps", "4", "--save-steps", "1", "--method", "lora")
        err = capsys.readouterr().err
        assert code == 2, err
        lines = [line for line in err.splitlines() if "balora: error:" in line]
        assert len(lines) == 1 and "Traceback" not in err, err
        said = re.search(r"disk full while writing (\S+); (the last complete checkpoint is (\S+)\.|no checkpoint)",
                         lines[0])
        assert said, lines[0]
        left = sorted((disk / "run" / "checkpoints").glob("checkpoint-*"))
        assert all(checkpoint_problem(p) is None for p in left)  # nothing half-written stays
        assert [str(p) for p in left[-1:]] == ([said[3]] if said[3] else [])
        assert not (disk / "run" / "adapter").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_yaml_values_go_through_the_settings_schema(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndataset: d\noutput: o\ntemperature: hot\n")
    _check(capsys, main(["train", "--config", str(bad)]), "config key 'temperature': 'hot' is not a valid float")
    choice = tmp_path / "choice.yaml"
    choice.write_text("model: m\ndataset: d\noutput: o\nsvd_method: approximate\n")
    _check(capsys, main(["train", "--config", str(choice)]), "invalid choice: 'approximate'")


def test_an_old_eval_key_still_works_with_a_warning(tmp_path, caplog):
    from balora.cli.common import apply_yaml_config
    from balora.cli.main import build_parser

    old = tmp_path / "eval.yaml"
    old.write_text("model: m\ndataset: d\nbatch_size: 5\n")
    with caplog.at_level("WARNING", logger="balora"):
        args = apply_yaml_config(build_parser(), ["eval", "--config", str(old)])
    assert args.eval_batch_size == 5
    assert "'batch_size' is deprecated" in caplog.text and "eval_batch_size" in caplog.text
