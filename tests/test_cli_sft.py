"""``balora train`` on an instruction/response (SFT) file with a tiny local causal LM: held-out loss, exact
match of the final number, and the generations written next to the metrics."""

from __future__ import annotations

import json

import pytest

from balora.cli.main import main
from balora.evaluation import extract_final_number


@pytest.fixture(scope="module")
def math_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sums.jsonl"
    rows = [{"prompt": f"{a}+{b}=?", "response": f"{a}+{b}={a + b}\n#### {a + b}", "answer": str(a + b)}
            for a in range(6) for b in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("method", ["lora", "ba-lora"])
def test_sft_run_reports_loss_exact_match_and_writes_the_generations(tiny_causal_dir, math_file, tmp_path,
                                                                      method):
    out = tmp_path / method
    code = main(["train", "--model", str(tiny_causal_dir), "--dataset", str(math_file), "--method", method,
                 "--output", str(out), "--max-steps", "3", "--batch-size", "4", "--rank", "4",
                 "--learning-rate", "5e-3", "--generate-size", "2", "--max-new-tokens", "6", "--max-length", "64"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] > 0 and metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["eval_loss"],
                                                                                 rel=1e-6)
    assert metrics["generated_n"] == 2 and 0.0 <= metrics["exact_match"] <= 1.0
    lines = [json.loads(line) for line in (out / "generations_test.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and (out / "generations_val.jsonl").is_file()
    for line in lines:
        assert line["prompt"].endswith("=?") and line["reference"].isdigit()
        assert line["extracted"] == extract_final_number(line["completion"])
    correct = sum(line["extracted"] is not None and float(line["extracted"]) == float(line["reference"])
                  for line in lines)
    assert metrics["exact_match"] == correct / 2


def test_eval_without_adapter_scores_the_base_model(tiny_causal_dir, math_file, tmp_path):
    out = tmp_path / "base.json"
    code = main(["eval", "--model", str(tiny_causal_dir), "--dataset", str(math_file), "--eval-size", "6",
                 "--generate-size", "2", "--max-new-tokens", "4", "--max-length", "64", "--output", str(out)])
    assert code == 0
    metrics = json.loads(out.read_text())
    # a random tiny model over a 128-token vocabulary: the loss is near log(128) = 4.85, far from trained
    assert 3.5 < metrics["eval_loss"] < 6.5 and metrics["generated_n"] == 2
    assert len((tmp_path / "base.generations.jsonl").read_text().splitlines()) == 2


def test_eval_of_a_classifier_needs_an_adapter(tiny_causal_dir, tmp_path, capsys):
    data = tmp_path / "labels.csv"
    data.write_text("text,label\ngood,pos\nbad,neg\n")
    assert main(["eval", "--model", str(tiny_causal_dir), "--dataset", str(data)]) == 2
    assert "needs --adapter" in capsys.readouterr().err
