"""Metrics checked against numbers worked out by hand (or by plain numpy) on small cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from CTExplainTraining.metrics import (
    calibration_bins,
    classification_metrics,
    curves,
    segmentation_metrics,
    summarise_folds,
)


def _pairwise_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic: P(score of a positive > score of a negative)."""
    pos, neg = scores[truth == 1], scores[truth == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.sum() / len(confidence) * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_perfect_binary_classifier() -> None:
    probs = np.array([[0.1], [0.2], [0.8], [0.9]])
    targets = np.array([[0.0], [0.0], [1.0], [1.0]])
    m = classification_metrics("binary", probs, targets, ["bleed"])
    assert m["auc_macro"] == 1.0 and m["map_macro"] == 1.0
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["mcc"] == 1.0 and m["f1_macro"] == 1.0
    c = m["per_class"]["bleed"]
    assert (c["sensitivity"], c["specificity"], c["support_positive"], c["support_negative"]) == (1.0, 1.0, 2, 2)
    assert m["confusion_matrix"] == {"bleed": [[2, 0], [0, 2]]}
    json.dumps(m, allow_nan=False)


def test_known_binary_confusion_matrix() -> None:
    # TP 3, FN 1 (positives 0..3), FP 2, TN 4 (negatives 4..9) at threshold 0.5.
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    probs = np.array([0.92, 0.73, 0.61, 0.33, 0.84, 0.55, 0.42, 0.21, 0.13, 0.05])  # off the bin edges
    m = classification_metrics("binary", probs[:, None], truth[:, None].astype(float), ["pos"])
    c = m["per_class"]["pos"]
    assert m["confusion_matrix"]["pos"] == [[4, 2], [1, 3]]
    assert c["sensitivity"] == pytest.approx(3 / 4)
    assert c["specificity"] == pytest.approx(4 / 6)
    assert c["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["mcc"] == pytest.approx((3 * 4 - 2 * 1) / math.sqrt(5 * 4 * 6 * 5))
    assert c["auc"] == pytest.approx(_pairwise_auc(truth, probs))
    assert m["ece"] == pytest.approx(_ece(probs, truth.astype(float)), abs=1e-6)
    # A stricter threshold moves the 0.61 and 0.55 cases.
    strict = classification_metrics("binary", probs[:, None], truth[:, None].astype(float), ["pos"], threshold=0.65)
    assert strict["confusion_matrix"]["pos"] == [[5, 1], [2, 2]] and strict["threshold"] == 0.65


def test_multiclass_argmax_confusion_and_ece() -> None:
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # true 0, pred 0
            [0.6, 0.3, 0.1],  # true 0, pred 0
            [0.2, 0.5, 0.3],  # true 0, pred 1
            [0.1, 0.8, 0.1],  # true 1, pred 1
            [0.3, 0.4, 0.3],  # true 1, pred 1
            [0.1, 0.2, 0.7],  # true 2, pred 2
            [0.5, 0.1, 0.4],  # true 2, pred 0
        ]
    )
    y = np.array([0, 0, 0, 1, 1, 2, 2])
    targets = np.eye(3)[y]
    m = classification_metrics("multiclass", probs, targets, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["per_class"]["a"]["sensitivity"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["specificity"] == pytest.approx(3 / 4)  # 1 false "a" among 4 non-a
    for c, name in enumerate("abc"):
        assert m["per_class"][name]["auc"] == pytest.approx(_pairwise_auc((y == c).astype(int), probs[:, c]))
    assert m["auc_macro"] == pytest.approx(np.mean([m["per_class"][n]["auc"] for n in "abc"]))
    correct = (probs.argmax(1) == y).astype(float)
    assert m["ece"] == pytest.approx(_ece(probs.max(1), correct), abs=1e-6)
    assert m["decision"] == "argmax"
    json.dumps(m, allow_nan=False)


def test_undefined_auc_is_none_and_left_out_of_the_macro_average() -> None:
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.7], [0.8, 0.1, 0.9], [0.3, 0.4, 0.8]])
    targets = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=float)  # b never positive, c always
    m = classification_metrics("multilabel", probs, targets, ["a", "b", "c"])
    assert m["per_class"]["a"]["auc"] == 1.0
    assert m["per_class"]["b"]["auc"] is None and m["per_class"]["c"]["auc"] is None
    assert m["per_class"]["b"]["average_precision"] is None  # no positives
    assert m["per_class"]["c"]["average_precision"] == 1.0  # all positive: defined
    assert m["per_class"]["b"]["sensitivity"] is None and m["per_class"]["c"]["specificity"] is None
    assert m["auc_classes_defined"] == 1 and m["auc_macro"] == 1.0
    assert m["map_classes_defined"] == 2
    # per-label accuracy: a 4/4, b 4/4, c 4/4 (all >= 0.5); exact match 4/4
    assert m["accuracy"] == 1.0 and m["subset_accuracy"] == 1.0
    json.dumps(m, allow_nan=False)


def test_binary_with_one_target_value_does_not_crash() -> None:
    m = classification_metrics("binary", np.array([0.2, 0.7, 0.4]), np.zeros(3), ["x"])
    assert m["auc_macro"] is None and m["auc_classes_defined"] == 0 and m["map_macro"] is None
    assert m["per_class"]["x"]["specificity"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=False)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="class names"):
        classification_metrics("multilabel", np.zeros((3, 2)), np.zeros((3, 2)), ["a"])
    with pytest.raises(ValueError, match="one-hot"):
        classification_metrics("multiclass", np.full((2, 2), 0.5), np.ones((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="unknown"):
        classification_metrics("regression", np.zeros((3, 1)), np.zeros((3, 1)), ["a"])


def test_dice_and_iou_of_known_masks() -> None:
    reference = np.zeros((4, 6, 6), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[1, 0, 0:6] = 1  # 6 voxels of segment 1
    prediction[1, 0, 3:7] = 1  # 3 voxels, all inside the reference... (6 is the edge)
    prediction[2, 5, 5] = 1  # ... plus one outside: 4 predicted, 3 overlapping
    reference[3, 3, 3] = 3  # segment 3 only in the reference
    m = segmentation_metrics(prediction, reference, ["background", "one", "two", "three"])
    one = m["per_segment"]["one"]
    assert (one["voxels_reference"], one["voxels_prediction"]) == (6, 4)
    assert one["dice"] == pytest.approx(2 * 3 / (6 + 4))
    assert one["iou"] == pytest.approx(3 / 7)
    assert m["per_segment"]["two"]["dice"] is None and m["per_segment"]["two"]["iou"] is None
    assert m["per_segment"]["three"]["dice"] == 0.0
    assert m["segments_defined"] == 2
    assert m["dice_mean"] == pytest.approx((0.6 + 0.0) / 2)
    assert m["iou_mean"] == pytest.approx((3 / 7) / 2)
    json.dumps(m, allow_nan=False)


def test_dice_over_several_cases_averages_defined_ones() -> None:
    perfect = np.array([[0, 1], [1, 2]])
    half = np.array([[0, 1], [0, 0]])  # one of two "1" voxels, no "2"
    empty = np.zeros((2, 2), dtype=int)
    m = segmentation_metrics([perfect, half, empty], [perfect, perfect, empty], ["bg", "a", "b"])
    a = m["per_segment"]["a"]
    assert a["cases_defined"] == 2 and a["dice"] == pytest.approx((1.0 + 2 * 1 / 3) / 2)
    assert m["per_segment"]["b"]["dice"] == pytest.approx(0.5)  # 1.0 and 0.0
    with pytest.raises(ValueError, match="outside"):
        segmentation_metrics(np.array([5]), np.array([0]), ["bg", "a"])
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((2, 2), int), np.zeros((3, 2), int), ["bg", "a"])


def test_summarise_folds_mean_sd_and_none() -> None:
    folds = [
        {"auc_macro": 0.8, "per_class": {"x": {"auc": 0.7, "f1": 0.5}}, "confusion_matrix": [[1]], "decision": "argmax"},
        {"auc_macro": 0.9, "per_class": {"x": {"auc": None, "f1": 0.7}}, "confusion_matrix": [[2]], "decision": "argmax"},
        {"auc_macro": None, "per_class": {"x": {"auc": 0.9, "f1": 0.6}}, "confusion_matrix": [[3]], "decision": "argmax"},
    ]
    s = summarise_folds(folds)
    assert s["auc_macro"]["mean"] == pytest.approx(0.85)
    assert s["auc_macro"]["sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert (s["auc_macro"]["n"], s["auc_macro"]["n_none"]) == (2, 1)
    assert s["per_class"]["x"]["auc"]["mean"] == pytest.approx(0.8)
    assert s["per_class"]["x"]["f1"]["sd"] == pytest.approx(0.1)
    assert "confusion_matrix" not in s and "decision" not in s
    single = summarise_folds([{"dice_mean": 0.5, "x": None}])
    assert single["dice_mean"] == {"mean": 0.5, "sd": None, "n": 1, "n_none": 0}
    assert single["x"] == {"mean": None, "sd": None, "n": 0, "n_none": 1}
    json.dumps(s, allow_nan=False)


def test_curves_per_class() -> None:
    probs = np.array([[0.1, 0.5], [0.9, 0.5], [0.8, 0.5]])
    targets = np.array([[0, 0], [1, 0], [1, 0]], dtype=float)
    c = curves(probs, targets, ["good", "never"])
    assert [0.0, 1.0] in [list(p) for p in zip(c["good"]["fpr"], c["good"]["tpr"])]  # the perfect corner
    assert c["good"]["precision"][-1] == 1.0 and c["good"]["recall"][-1] == 0.0
    assert c["never"] == {"fpr": [], "tpr": [], "recall": [], "precision": []}


def test_calibration_bins() -> None:
    probs = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    targets = np.array([0, 1, 1, 1, 0], dtype=float)
    b = calibration_bins(probs, targets, n_bins=10)
    assert b["count"] == [2, 1, 2]
    assert b["mean_predicted"] == pytest.approx([0.05, 0.55, 0.95])
    assert b["fraction_positive"] == pytest.approx([0.5, 0.0, 1.0])
    assert b["bin_lower"] == pytest.approx([0.0, 0.5, 0.9])
    top = calibration_bins(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([[1, 0], [1, 0]]), n_bins=5, task="multiclass")
    assert top["mean_predicted"] == pytest.approx([0.6, 0.9]) and top["fraction_positive"] == pytest.approx([0.0, 1.0])
