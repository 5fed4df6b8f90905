"""reasoning-gym tasks as packaged data (balora.data.gym): columns, determinism, and the experiment path."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("datasets")
pytest.importorskip("reasoning_gym")

from balora.data import PACKAGED_DATASETS, load_packaged  # noqa: E402
from balora.data.gym import GYM_TASKS, load_gym_task  # noqa: E402
from balora.errors import ConfigError  # noqa: E402
from balora.evaluation import answer_accuracy  # noqa: E402
from balora.experiment.data import answer_type, default_metric, load_experiment_data  # noqa: E402
from balora.experiment.settings import TrainSettings  # noqa: E402


@pytest.mark.parametrize("name", sorted(GYM_TASKS))
def test_gym_task_columns_determinism_and_answer(name):
    ds = load_packaged(name, size=40, seed=3)
    assert ds.column_names == ["prompt", "response", "answer"] and ds.num_rows == 40
    assert list(load_packaged(name, size=40, seed=3)["prompt"]) == list(ds["prompt"])
    assert list(load_packaged(name, size=40, seed=4)["prompt"]) != list(ds["prompt"])
    assert list(ds["response"]) == list(ds["answer"])  # no rationale: the response is the answer
    entry = PACKAGED_DATASETS[name]
    assert entry.generated and entry.metric == "exact_match" and entry.licence == "Apache-2.0"
    # the reference answers score themselves as right under the data set's answer type
    assert answer_accuracy(list(ds["response"]), list(ds["answer"]), entry.answer)["accuracy"] == 1.0


def test_chain_sum_is_two_term_two_digit_arithmetic():
    for row in load_packaged("chain-sum", size=50, seed=0):
        left, op, right = row["prompt"].rsplit(":", 1)[1].strip().rstrip("=").split()
        assert len(left) == len(right) == 2 and op in "+-"
        assert int(row["answer"]) == (int(left) + int(right) if op == "+" else int(left) - int(right))


def test_word_sorting_answer_is_the_sorted_words():
    for row in load_packaged("word-sorting", size=30, seed=0):
        words = [w.strip() for w in row["prompt"].rsplit(":", 1)[1].split(",")]
        descending = "sort these words in descending" in row["prompt"]
        assert row["answer"] == ", ".join(sorted(words, reverse=descending))


def test_rationale_ends_with_the_answer_and_bad_configs_are_config_errors():
    ds = load_gym_task("gsm_symbolic", size=3, seed=0, rationale_key="answer_cot")
    for row in ds:
        assert row["response"].endswith(f"\n#### {row['answer']}") and len(row["response"]) > len(row["answer"]) + 6
    with pytest.raises(ConfigError, match="chain_sum"):
        load_gym_task("chain_sum", size=3, config={"min_terms": 5, "max_terms": 2})
    with pytest.raises(ConfigError, match="positive"):
        load_gym_task("chain_sum", size=0)


def _settings(tmp_path, dataset, **extra):
    return TrainSettings.from_dict({"model": "smollm2-135m", "dataset": dataset, "output": str(tmp_path),
                                    "train_size": 50, "validation_fraction": 0.1, "test_fraction": 0.2, **extra})


@pytest.mark.parametrize("name", sorted(GYM_TASKS))
def test_dataset_name_goes_through_experiment_loading(tmp_path, name):
    """``--dataset NAME``: an sft task, generated to fill every split, scored with the entry's answer type."""
    settings = _settings(tmp_path, name)
    data = load_experiment_data(settings)
    total = math.ceil(50 / (1 - 0.3))
    assert data.task == "sft" and data.train.num_rows == 50
    assert 50 + data.validation.num_rows + data.test.num_rows <= total  # the training split, subsampled to 50
    assert data.test.num_rows >= 0.2 * total - 1 and data.validation.num_rows >= 0.1 * total - 1
    assert data.test.column_names == ["prompt", "response", "answer"]
    again = load_experiment_data(settings)
    assert list(again.test["prompt"]) == list(data.test["prompt"])  # the same split on every run
    assert answer_type(settings) == PACKAGED_DATASETS[name].answer
    assert default_metric(name) == "exact_match"


def test_answer_type_and_metric_defaults(tmp_path):
    assert answer_type(_settings(tmp_path, "word-sorting")) == "text"
    assert answer_type(_settings(tmp_path, "word-sorting", answer_type="number")) == "number"  # --answer-type wins
    assert answer_type(_settings(tmp_path, "gsm-symbolic")) == "number"
    assert answer_type(_settings(tmp_path, "local.jsonl")) == "number"  # any other data: the final number
    assert default_metric("humaneval") == "pass@1" and default_metric("tweets") == "accuracy"
    assert default_metric("gsm-symbolic") == "exact_match" and default_metric("local.csv") == "accuracy"
    with pytest.raises(ConfigError, match="answer-type"):
        _settings(tmp_path, "chain-sum", answer_type="words")


def test_generation_metrics_score_text_answers_and_write_consistent_predictions(tmp_path, monkeypatch):
    """The word-sorting cells' exact match, generations and predictions use the text answer type."""
    import json

    import datasets

    from balora.experiment import evaluate

    rows = datasets.Dataset.from_dict({"prompt": ["p1", "p2", "p3"], "response": ["b, a", "x, Y", "c"],
                                       "answer": ["b, a", "x, Y", "c"]})
    completions = ["b,a.", "x, y", ""]  # right (formatting), wrong (case), no answer
    monkeypatch.setattr(evaluate, "generate_greedy", lambda *args, **kwargs: completions)
    settings = _settings(tmp_path, "word-sorting", generate_size=3)
    generations, predictions = tmp_path / "gen.jsonl", tmp_path / "pred.jsonl"
    metrics = evaluate._generation_metrics(None, None, rows, "sft", settings, generations, predictions)
    assert metrics == {"exact_match": 1 / 3, "answered": 2 / 3, "generated_n": 3.0}
    written = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["correct"] for r in written] == [True, False, False]
    assert all(r["correct"] == (r["prediction"] == r["label"]) for r in written)  # what the exporter checks
    assert [json.loads(line)["extracted"] for line in generations.read_text().splitlines()] == ["b, a", "x, y", None]
    sums = datasets.Dataset.from_dict({"prompt": ["p1", "p2"], "response": ["76", "-3"], "answer": ["76", "-3"]})
    monkeypatch.setattr(evaluate, "generate_greedy", lambda *args, **kwargs: ["The answer is 76.", "3"])
    number = evaluate._generation_metrics(None, None, sums, "sft", _settings(tmp_path, "chain-sum", generate_size=2),
                                          None, predictions)
    assert number["exact_match"] == 0.5
    assert [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()] == [76.0, 3.0]
