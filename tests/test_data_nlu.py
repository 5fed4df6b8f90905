"""balora.data.nlu: column and label validation, label mapping, tokenization."""

from __future__ import annotations

import json
import logging

import pytest

datasets = pytest.importorskip("datasets")

from balora.data import NLUColumns, load_table, prepare_nlu, tokenize_nlu  # noqa: E402
from balora.errors import DataError  # noqa: E402
from balora.models import tiny_tokenizer  # noqa: E402


def _ds(**columns):
    return datasets.Dataset.from_dict(columns)


def test_string_labels_map_to_sorted_ids():
    ds, names = prepare_nlu(_ds(text=["a", "b", "c"], label=["pos", "neg", "pos"]))
    assert names == ["neg", "pos"] and list(ds["label"]) == [1, 0, 1]
    assert ds.features["label"].names == ["neg", "pos"] and ds.column_names == ["text", "label"]


def test_given_label_names_and_unknown_label():
    ds, names = prepare_nlu(_ds(text=["a", "b"], label=["pos", "neg"]), label_names=["pos", "neg", "neutral"])
    assert names == ["pos", "neg", "neutral"] and list(ds["label"]) == [0, 1]
    with pytest.raises(DataError, match="'maybe'"):
        prepare_nlu(_ds(text=["a", "b"], label=["pos", "maybe"]), label_names=["pos", "neg"])


def test_integer_labels_range():
    ds, names = prepare_nlu(_ds(text=["a", "b", "c"], label=[0, 2, 1]))
    assert names == ["0", "1", "2"] and list(ds["label"]) == [0, 2, 1]
    with pytest.raises(DataError, match=r"\[3\].*outside \[0, 3\)"):
        prepare_nlu(_ds(text=["a", "b"], label=[0, 3]), num_labels=3)
    with pytest.raises(DataError, match="outside"):
        prepare_nlu(_ds(text=["a", "b"], label=[0, -1]))
    with pytest.raises(DataError, match="outside"):
        prepare_nlu(_ds(text=["a", "b"], label=[0, 2]), label_names=["x", "y"])
    with pytest.raises(DataError, match="regression"):
        prepare_nlu(_ds(text=["a", "b"], label=[0.5, 1.0]))


def test_null_labels_are_dropped_and_logged(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": None}, {"text": "c", "label": 0},
            {"text": None, "label": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.INFO, logger="balora.data.nlu"):
        ds, names = prepare_nlu(load_table(path))
    assert list(ds["text"]) == ["a", "c"] and list(ds["label"]) == [1, 0] and names == ["0", "1"]
    assert any("dropped 1 of 4 rows with a null label" in r.message for r in caplog.records)
    with pytest.raises(DataError, match="no rows left"):
        prepare_nlu(_ds(text=["a"], label=[None]))


def test_bool_and_classlabel_columns():
    ds, names = prepare_nlu(_ds(text=["a", "b"], label=[True, False]))
    assert names == ["False", "True"] and list(ds["label"]) == [1, 0]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["x", "y", "z"])})
    source = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, -1, 0]}, features=features)
    ds, names = prepare_nlu(source)
    assert names == ["x", "y", "z"] and list(ds["label"]) == [2, 0]  # -1 means unlabelled


def test_missing_column_names_the_available_ones():
    with pytest.raises(DataError, match=r"\['label'\].*\['sentence', 'label_x'\]"):
        prepare_nlu(_ds(sentence=["a"], label_x=[0]), NLUColumns(text="sentence"))
    with pytest.raises(DataError, match="'premise'"):
        prepare_nlu(_ds(text=["a"], label=[0]), NLUColumns(text_pair="premise"))


def test_text_pair_inferred_and_regression():
    cols = NLUColumns.infer(["text", "text_pair", "label"])
    assert cols == NLUColumns("text", "text_pair", "label")
    ds, names = prepare_nlu(_ds(text=["a", "b"], text_pair=["c", "d"], label=["0.5", "3"]), task="regression")
    assert names is None and list(ds["label"]) == [0.5, 3.0] and ds.features["label"].dtype == "float32"
    with pytest.raises(DataError, match="numeric"):
        prepare_nlu(_ds(text=["a"], label=["high"]), task="regression")


def test_single_class_is_an_error():
    with pytest.raises(DataError, match="at least 2 classes"):
        prepare_nlu(_ds(text=["a", "b"], label=["x", "x"]))


def test_tokenize_nlu_pairs():
    tok = tiny_tokenizer("bert")
    ds, _ = prepare_nlu(_ds(text=["ab", "a" * 50], text_pair=["c", "d"], label=[0, 1]))
    out = tokenize_nlu(ds, tok, max_length=16)
    assert out.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    assert out[0]["input_ids"] == [tok.cls_token_id, *tok.convert_tokens_to_ids(["a", "b"]), tok.sep_token_id,
                                   tok.convert_tokens_to_ids("c"), tok.sep_token_id]
    assert out[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert len(out[1]["input_ids"]) == 16 and list(out["labels"]) == [0, 1]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_rare_label_is_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="balora.data.nlu"):
        _, names = prepare_nlu(_ds(text=["t"] * 41, label=["pos", "neg"] * 20 + ["oops"]))
    assert names == ["neg", "oops", "pos"]  # still a class of its own, but said so
    warned = _warnings(caplog)
    assert len(warned) == 1 and "'oops' (1 row)" in warned[0] and "--labels neg,pos" in warned[0], warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="balora.data.nlu"):  # 6 rows in 9,006: under 0.1 %
        prepare_nlu(_ds(text=["t"] * 9006, label=["a", "b", "c"] * 3000 + ["d"] * 6))
        prepare_nlu(_ds(text=["t"] * 15, label=["a", "b", "c"] * 5))  # 5 rows each: fine
    assert len(_warnings(caplog)) == 1 and "'d' (6 rows)" in _warnings(caplog)[0]


def test_fixed_classes_make_any_other_value_an_error_naming_its_rows():
    rows = {"text": ["t"] * 8, "label": [None, "pos", "neg", "oops", "pos", "oops", "neg", "meh"]}
    with pytest.raises(DataError, match=r"'meh' \(row 7\), 'oops' \(rows 3, 5\) in column 'label'"):
        prepare_nlu(_ds(**rows), label_names=["neg", "pos"])
    with pytest.raises(DataError, match=r"\[7\] in column 'label' are outside \[0, 2\) \(7 \(row 2\)"):
        prepare_nlu(_ds(text=["a", "b", "c"], label=[0, 1, 7]), label_names=["neg", "pos"])
    ds, names = prepare_nlu(_ds(text=["a", "b", "c"], label=["pos", "neg", "pos"]), label_names=["pos", "neg"])
    assert names == ["pos", "neg"] and list(ds["label"]) == [0, 1, 0]
