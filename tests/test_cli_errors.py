"""Every bad input is one line on stderr and exit code 2, with a message that says what to change."""

from __future__ import annotations

import csv
import json

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
