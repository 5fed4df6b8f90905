"""balora.data.transforms: exact seeded label noise, imbalance and stratified splits."""

from __future__ import annotations

import math
from collections import Counter

import pytest

datasets = pytest.importorskip("datasets")

from balora.data import add_label_noise, imbalanced_counts, make_imbalanced, split  # noqa: E402
from balora.errors import ConfigError, DataError  # noqa: E402


def _labelled(counts: dict[int, int], names=None):
    labels = [c for c, n in sorted(counts.items()) for _ in range(n)]
    features = datasets.Features({"id": datasets.Value("int64"), "label": datasets.ClassLabel(
        names=names or [str(i) for i in range(max(counts) + 1)])})
    return datasets.Dataset.from_dict({"id": list(range(len(labels))), "label": labels}, features=features)


@pytest.mark.parametrize(("rate", "n"), [(0.1, 1000), (0.25, 7), (0.35, 10), (1.0, 30), (0.5, 1)])
def test_noise_changes_exactly_round_rate_n(rate, n):
    ds = _labelled({0: n // 3, 1: n // 3, 2: n - 2 * (n // 3)})
    noisy, changed = add_label_noise(ds, rate, num_labels=3, seed=0)
    before, after = list(ds["label"]), list(noisy["label"])
    assert len(changed) == round(rate * n) == sum(a != b for a, b in zip(before, after, strict=True))
    assert all(before[i] != after[i] for i in changed) and changed == sorted(set(changed))
    assert all(0 <= v < 3 for v in after) and noisy.features["label"] == ds.features["label"]
    assert list(noisy["id"]) == list(ds["id"])


def test_noise_seeded_and_uniform_over_other_labels():
    ds = _labelled({0: 3000, 1: 3000, 2: 3000, 3: 3000})
    a, rows_a = add_label_noise(ds, 0.2, 4, seed=7)
    b, rows_b = add_label_noise(ds, 0.2, 4, seed=7)
    c, rows_c = add_label_noise(ds, 0.2, 4, seed=8)
    assert rows_a == rows_b and list(a["label"]) == list(b["label"]) and rows_a != rows_c
    before, after = list(ds["label"]), list(a["label"])
    moves = Counter(after[i] for i in rows_a if before[i] == 0)  # class 0's rows go to 1, 2, 3 evenly
    assert set(moves) == {1, 2, 3} and all(abs(v / sum(moves.values()) - 1 / 3) < 0.06 for v in moves.values())


def test_noise_rate_zero_and_bad_rates():
    ds = _labelled({0: 5, 1: 5})
    noisy, changed = add_label_noise(ds, 0.0, 2, seed=0)
    assert changed == [] and list(noisy["label"]) == list(ds["label"])
    for rate in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            add_label_noise(ds, rate, 2, seed=0)
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        add_label_noise(_labelled({0: 2, 2: 2}), 0.5, 2, seed=0)
    with pytest.raises(DataError, match="integer"):
        add_label_noise(datasets.Dataset.from_dict({"label": ["a", "b"]}), 0.5, 2, seed=0)


def test_imbalance_exact_counts_and_reproducible():
    ds = _labelled({0: 100, 1: 300, 2: 50})
    out = make_imbalanced(ds, ratio=10, seed=3)
    assert Counter(out["label"]) == {1: 300, 0: 30, 2: 30}  # ceil(300 / 10) = 30
    assert list(out["id"]) == sorted(out["id"])
    assert list(make_imbalanced(ds, 10, seed=3)["id"]) == list(out["id"])
    assert list(make_imbalanced(ds, 10, seed=4)["id"]) != list(out["id"])
    assert Counter(make_imbalanced(ds, 7, seed=0)["label"]) == {1: 300, 0: math.ceil(300 / 7), 2: 43}
    assert Counter(make_imbalanced(ds, 100, seed=0, majority=0)["label"]) == {0: 100, 1: 1, 2: 1}
    assert Counter(make_imbalanced(ds, 1, seed=0)["label"]) == {0: 100, 1: 300, 2: 50}  # ratio 1: nothing cut
    assert imbalanced_counts({0: 10, 1: 10}, 3) == {0: 10, 1: 4}  # tie: the smaller id is the majority
    with pytest.raises(ConfigError, match=">= 1"):
        make_imbalanced(ds, 0.5, seed=0)
    with pytest.raises(DataError, match="majority class 5"):
        make_imbalanced(ds, 2, seed=0, majority=5)


def test_split_sizes_and_stratification():
    ds = _labelled({0: 600, 1: 300, 2: 100})
    parts = split(ds, 0.1, 0.2, seed=0)
    assert {k: v.num_rows for k, v in parts.items()} == {"train": 700, "validation": 100, "test": 200}
    assert Counter(parts["test"]["label"]) == {0: 120, 1: 60, 2: 20}
    assert Counter(parts["validation"]["label"]) == {0: 60, 1: 30, 2: 10}
    ids = [set(p["id"]) for p in parts.values()]
    assert set.union(*ids) == set(range(1000)) and sum(len(s) for s in ids) == 1000
    again = split(ds, 0.1, 0.2, seed=0)
    assert list(again["test"]["id"]) == list(parts["test"]["id"])
    assert list(split(ds, 0.1, 0.2, seed=1)["test"]["id"]) != list(parts["test"]["id"])


def test_split_rounding_unstratified_and_errors():
    ds = _labelled({0: 7, 1: 4})
    parts = split(ds, 0.25, 0.25, seed=0)
    assert [parts[k].num_rows for k in ("train", "validation", "test")] == [5, 3, 3]  # round(2.75) = 3
    assert all(len(set(parts[k]["label"])) == 2 for k in parts)  # both classes in every split
    plain = datasets.Dataset.from_dict({"text": [str(i) for i in range(10)], "label": [0.5] * 10})
    parts = split(plain, 0.2, 0.0, seed=0)
    assert (parts["train"].num_rows, parts["validation"].num_rows, parts["test"].num_rows) == (8, 2, 0)
    with pytest.raises(ConfigError):
        split(ds, 0.5, 0.5, seed=0)
    with pytest.raises(ConfigError):
        split(ds, -0.1, 0.2, seed=0)
