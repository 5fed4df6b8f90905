"""balora.data.files.load_table and load_dataset_any on small files written in tmp_path."""

from __future__ import annotations

import gzip
import json

import pytest

datasets = pytest.importorskip("datasets")

from balora.data import load_dataset_any, load_table  # noqa: E402
from balora.errors import DataError  # noqa: E402


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".csv.gz", "dir"])
def test_formats_read_the_same_rows(tmp_path, suffix):
    rows = {"text": ["good film", "bad, very bad", "fine"], "label": ["pos", "neg", "pos"]}
    reference = datasets.Dataset.from_dict(rows)
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        reference.to_csv(path, index=False)
    elif suffix == ".tsv":
        reference.to_csv(path, index=False, sep="\t")
    elif suffix == ".csv.gz":
        with gzip.open(path, "wt") as handle:
            handle.write("text,label\ngood film,pos\n\"bad, very bad\",neg\nfine,pos\n")
    elif suffix == ".jsonl":
        reference.to_json(path, lines=True)
    elif suffix == ".json":
        path.write_text(json.dumps([dict(zip(rows, v, strict=True)) for v in zip(*rows.values(), strict=True)]))
    elif suffix == ".parquet":
        reference.to_parquet(path)
    else:
        reference.save_to_disk(str(path))
    loaded = load_table(path)
    assert loaded.num_rows == 3
    assert list(loaded["text"]) == rows["text"] and list(loaded["label"]) == rows["label"]


def test_split_slices_and_dataset_dict(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": str(i), "label": i % 2} for i in range(10)])
    assert load_table(path, split="train[:4]").num_rows == 4
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"a": [1, 2]}),
                               "test": datasets.Dataset.from_dict({"a": [3]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert list(load_table(tmp_path / "dd")["a"]) == [1, 2]  # train by default
    assert list(load_table(tmp_path / "dd", split="test")["a"]) == [3]
    with pytest.raises(DataError, match="no split 'validation'"):
        load_table(tmp_path / "dd", split="validation")


@pytest.mark.parametrize(("name", "content", "match"), [
    ("empty.csv", "", "empty"),
    ("blank.jsonl", "\n\n", "empty"),
    ("header.csv", "text,label\n", "no rows"),
    ("data.txt", "text,label\na,1\n", "unknown file type"),
    ("data", "text,label\na,1\n", "unknown file type"),
    ("broken.jsonl", '{"text": "a", "label": 1}\n{"text": \n', "could not read"),
])
def test_bad_files(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=match):
        load_table(tmp_path / name)


def test_missing_file_and_plain_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_table(tmp_path / "nope.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_table(tmp_path / "folder")


def test_encoding_option(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    assert load_table(path, encoding="latin-1")[0]["text"] == "café"


def test_load_dataset_any(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": str(i), "label": i % 2} for i in range(10)])
    assert load_dataset_any(path).num_rows == 10
    small = load_dataset_any(str(path), size=4, seed=1)
    assert small.num_rows == 4 and list(small["text"]) == list(load_dataset_any(path, size=4, seed=1)["text"])
    with pytest.raises(DataError, match="boolq.*tweets"):
        load_dataset_any(tmp_path / "missing.csv")
