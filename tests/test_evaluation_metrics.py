"""GLUE metrics against hand-computed values (SPEC section 4)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from balora.errors import DataError
from balora.evaluation import classification_metrics, regression_metrics


def test_binary_metrics_by_hand():
    # labels 1 1 1 1 0 0 / predictions 1 1 1 0 0 1: TP=3, FN=1, FP=1, TN=1.
    # accuracy 4/6; class 1: precision 3/4, recall 3/4, F1 3/4; class 0: precision 1/2, recall 1/2, F1 1/2.
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3 - 1) / sqrt(4*4*2*2) = 2/8 = 0.25.
    m = classification_metrics([1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0], num_labels=2)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(0.75)  # GLUE: F1 of the positive class
    assert m["f1_macro"] == pytest.approx(0.625)
    assert m["matthews_correlation"] == pytest.approx(0.25)
    assert m["balanced_accuracy"] == pytest.approx(0.625)
    assert m["precision_class_1"] == pytest.approx(0.75)
    assert m["recall_class_0"] == pytest.approx(0.5)
    assert m["f1_class_0"] == pytest.approx(0.5)


def test_multiclass_metrics_by_hand():
    # labels 0 0 1 1 2 2 / predictions 0 1 1 1 2 0. Confusion (rows true): [[1,1,0],[0,2,0],[1,0,1]].
    # precision 1/2, 2/3, 1; recall 1/2, 1, 1/2; F1 1/2, 4/5, 2/3; macro F1 = 1.9667/3.
    # MCC (Gorodkin): c = 4 correct, s = 6, predicted counts p = (2,3,1), true counts t = (2,2,2):
    # (c*s - sum p*t) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = (24 - 12) / sqrt(22 * 24) = 0.522233.
    m = classification_metrics([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2], num_labels=3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    macro = (0.5 + 0.8 + 2 / 3) / 3
    assert m["f1_macro"] == pytest.approx(macro)
    assert m["f1"] == pytest.approx(macro)  # more than two labels: GLUE's F1 is the macro F1
    assert m["matthews_correlation"] == pytest.approx(12 / math.sqrt(528))
    assert [m[f"precision_class_{c}"] for c in range(3)] == pytest.approx([0.5, 2 / 3, 1.0])
    assert [m[f"recall_class_{c}"] for c in range(3)] == pytest.approx([0.5, 1.0, 0.5])
    assert m["f1_class_1"] == pytest.approx(0.8)


def test_logits_are_argmaxed_and_values_are_plain_floats():
    logits = torch.tensor([[2.0, -1.0], [0.1, 0.3], [5.0, 4.0], [-1.0, 1.0]])  # argmax 0 1 0 1
    m = classification_metrics(logits, np.array([0, 1, 1, 1]))
    assert m["accuracy"] == pytest.approx(0.75)
    assert all(type(v) is float for v in m.values())
    json.dumps(m, allow_nan=False)


def test_unseen_class_gets_zero_not_an_error():
    m = classification_metrics([0, 0, 0], [0, 0, 1], num_labels=3)
    assert m["precision_class_2"] == 0.0 and m["recall_class_1"] == 0.0
    assert m["matthews_correlation"] == 0.0


@pytest.mark.parametrize(
    "preds, labels, num_labels",
    [([], [], 2), ([0, 1], [0], 2), ([0, 3], [0, 1], 2), ([0, 1], [0, -1], 2), ([0.5, 1], [0, 1], 2)],
)
def test_classification_bad_input_raises_data_error(preds, labels, num_labels):
    with pytest.raises(DataError):
        classification_metrics(preds, labels, num_labels)


def test_regression_monotone_nonlinear():
    # x = 1..5, prediction x^3. Ranks agree exactly: Spearman 1. Pearson by hand: dx = (-2,-1,0,1,2),
    # dy = (-44,-37,-18,19,80) around the mean 45; r = 304 / sqrt(10 * 10390) = 0.943112.
    # MSE = (0 + 36 + 576 + 3600 + 14400) / 5 = 3722.4.
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    m = regression_metrics([v**3 for v in x], x)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(304 / math.sqrt(103900))
    assert m["pearson"] < 0.95
    assert m["pearson_spearman_mean"] == pytest.approx((1.0 + 304 / math.sqrt(103900)) / 2)
    assert m["mse"] == pytest.approx(3722.4)
    assert all(type(v) is float for v in m.values())


def test_regression_rank_swaps():
    # preds 1..5 vs labels (2,1,4,3,5): rank differences (-1,1,-1,1,0), rho = 1 - 6*4/(5*24) = 0.8;
    # both series are ranks already, so Pearson is 0.8 too. Shape (N, 1) is accepted.
    m = regression_metrics(torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]]), [2, 1, 4, 3, 5])
    assert m["spearman"] == pytest.approx(0.8)
    assert m["pearson"] == pytest.approx(0.8)


def test_regression_constant_predictions_give_zero_correlation():
    m = regression_metrics([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])
    assert m["pearson"] == 0.0 and m["spearman"] == 0.0
    assert m["mse"] == pytest.approx((4 + 1 + 0) / 3)
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize(
    "preds, labels", [([], []), ([1.0], [1.0]), ([1.0, 2.0], [1.0]), ([1.0, float("nan")], [1, 2])]
)
def test_regression_bad_input_raises_data_error(preds, labels):
    with pytest.raises(DataError):
        regression_metrics(preds, labels)
