"""The statistics of a comparison (balora.experiment.stats) and `balora compare`'s summary, on known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from balora.errors import DataError
from balora.experiment.compare import format_table, summary_rows
from balora.experiment.evaluate import write_predictions
from balora.experiment.stats import describe, paired_bootstrap


def test_describe_mean_and_sample_std():
    s = describe([0.5, 0.6, 0.7, 0.9])
    assert s.n == 4 and s.mean == pytest.approx(0.675)
    assert s.std == pytest.approx(math.sqrt(((0.175**2) + 0.075**2 + 0.025**2 + 0.225**2) / 3))
    assert describe([0.4]) == (0.4, 0.0, 1)
    with pytest.raises(DataError):
        describe([])


def test_identical_predictions_give_the_zero_interval():
    rng = np.random.default_rng(1)
    a = (rng.random((3, 50)) > 0.4).astype(float)
    d = paired_bootstrap(a, a.copy(), resamples=500)
    assert (d.diff, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.verdict() == "cannot tell" and not d.excludes_zero


def test_a_constant_shift_gives_an_interval_at_the_shift():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(4, 30))
    d = paired_bootstrap(b + 0.25, b, resamples=500)
    assert d.diff == pytest.approx(0.25) and d.low == pytest.approx(0.25) and d.high == pytest.approx(0.25)
    assert d.verdict() == "supported"
    down = paired_bootstrap(b - 0.25, b, resamples=500)
    assert down.verdict() == "not supported" and down.interval() == "-0.250 [-0.250, -0.250]"


def test_one_seed_interval_matches_the_normal_approximation():
    # 400 differences, half 1.1 and half -0.9: mean 0.1, population sd 1 -> 95 % CI ≈ 0.1 ± 1.96 / 20
    diff = np.tile([1.1, -0.9], 200)[None, :]
    d = paired_bootstrap(diff, np.zeros_like(diff), resamples=4000, seed=3)
    assert d.diff == pytest.approx(0.1)
    assert d.low == pytest.approx(0.1 - 0.098, abs=0.01) and d.high == pytest.approx(0.1 + 0.098, abs=0.01)


def test_seeds_that_disagree_widen_the_interval():
    # each seed alone is a clear difference (+0.3, -0.3, +0.3, -0.3 on every example); over seeds it is not
    diff = np.repeat([[0.3], [-0.3], [0.3], [-0.3]], 100, axis=1)
    d = paired_bootstrap(diff, np.zeros_like(diff), resamples=2000)
    assert d.diff == pytest.approx(0.0) and d.low < -0.1 and d.high > 0.1 and d.verdict() == "cannot tell"


def test_claimed_effect_outside_the_interval_is_not_supported():
    diff = np.full((2, 10), 0.002)
    d = paired_bootstrap(diff, np.zeros_like(diff), resamples=200)
    assert d.verdict(claimed=0.0059) == "supported"  # the direction holds ...
    flat = paired_bootstrap(np.zeros((2, 10)), np.zeros((2, 10)), resamples=200)
    assert flat.verdict(claimed=0.0059) == "not supported"  # ... and an interval at 0 excludes the claimed gain


def test_bootstrap_is_seeded_and_checks_shapes():
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 40)), rng.random((3, 40))
    assert paired_bootstrap(a, b, resamples=300) == paired_bootstrap(a, b, resamples=300)
    with pytest.raises(DataError, match="one shape"):
        paired_bootstrap(a, b[:, :5])


def test_compare_summary_means_and_stds():
    rows = [{"method": m, "label_noise": n, "seed": s, "accuracy": v}
            for m, n, values in (("lora", 0.0, [0.5, 0.7]), ("lora", 0.2, [0.4, 0.4]), ("pissa", 0.0, [0.6, 0.9]))
            for s, v in enumerate(values)]
    summary = summary_rows(rows, "accuracy", ["method", "label_noise"])
    by = {(s["method"], s["label_noise"]): s for s in summary}
    assert by[("lora", 0.0)]["mean"] == pytest.approx(0.6) and by[("lora", 0.0)]["std"] == pytest.approx(0.1414214)
    assert by[("lora", 0.2)]["std"] == 0.0 and by[("pissa", 0.0)]["mean"] == pytest.approx(0.75)
    assert by[("pissa", 0.0)]["std"] == pytest.approx(0.2121320) and {s["n"] for s in summary} == {2}
    table = format_table(rows, "accuracy", ["label_noise"])
    assert "0.6000 ± 0.1414 (n=2)" in table and "0.7500 ± 0.2121 (n=2)" in table


def test_write_predictions_one_line_per_example(tmp_path):
    path = tmp_path / "predictions_test.jsonl"
    write_predictions(path, [0, 2, 1], [0, 1, 1], [True, False, True])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"id": 0, "label": 0, "prediction": 0, "correct": True},
                    {"id": 1, "label": 2, "prediction": 1, "correct": False},
                    {"id": 2, "label": 1, "prediction": 1, "correct": True}]
    write_predictions(path, [1.5], [1.25])  # regression: no correctness
    assert json.loads(path.read_text()) == {"id": 0, "label": 1.5, "prediction": 1.25}
