"""The HTML report: one self-contained file for every task, with the images it promises."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List

import numpy as np
import pytest

from CTExplainTraining.metrics import classification_metrics, segmentation_metrics, summarise_folds
from CTExplainTraining.report import RunReport, write_report

DATA_URI = 'src="data:image/png;base64,'


def _history(epochs: int = 4) -> List[dict]:
    return [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_auc_macro": 0.5 + 0.1 * e, "lr": 1e-3 * 0.5**e, "data_fraction": min(1.0, 0.25 * e)}
        for e in range(1, epochs + 1)
    ]


def _overlay() -> np.ndarray:
    image = np.zeros((24, 32, 3), dtype=np.uint8)
    image[4:12, 8:20, 0] = 255
    return image


def _check_self_contained(text: str) -> None:
    assert 'src="http' not in text and "href=\"http" not in text and "src='http" not in text
    assert "<link" not in text and "<script" not in text
    for uri in re.findall(r'src="(data:[^"]*)"', text):
        assert uri.startswith("data:image/png;base64,iVBORw0KGgo")  # PNG signature, base64


def _classification(task: str, names: List[str], probabilities: np.ndarray, targets: np.ndarray, tmp_path: Path, **extra) -> str:
    metrics = classification_metrics(task, probabilities, targets, names)
    report = RunReport(
        title=f"{task} <run> & co",
        task=task,
        class_names=names,
        history=_history(),
        metrics=metrics,
        probabilities=probabilities,
        targets=targets,
        overlays=[("Grad-CAM <bleed>", _overlay()), ("second", _overlay())],
        config={"epochs": 4, "optimizer": {"name": "AdamW", "lr": 1e-3}, "note": "<script>alert(1)</script>"},
        **extra,
    )
    path = write_report(report, tmp_path / "out" / "report.html")
    assert path == tmp_path / "out" / "report.html" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left
    text = path.read_text(encoding="utf-8")
    _check_self_contained(text)
    assert "&lt;run&gt; &amp; co" in text and "<script>alert" not in text and "Grad-CAM &lt;bleed&gt;" in text
    assert "optimizer.name" in text and "AdamW" in text
    for name in names:
        assert name in text
    return text


def test_binary_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    targets = (np.arange(40) % 2).astype(float)[:, None]
    probabilities = np.clip(targets * 0.6 + rng.uniform(0, 0.4, size=(40, 1)), 0, 1)
    text = _classification("binary", ["hemorrhage"], probabilities, targets, tmp_path)
    # learning curves, ROC+PR, confusion matrices, calibration, 2 overlays
    assert text.count(DATA_URI) == 6
    assert "sensitivity" in text and "specificity" in text


def test_multiclass_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    logits = np.eye(3)[y] * 2 + rng.normal(size=(30, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    text = _classification("multiclass", ["adeno", "large cell", "normal"], probabilities, np.eye(3)[y], tmp_path)
    assert text.count(DATA_URI) == 6
    assert "Rows: true class" in text


def test_multilabel_report_with_undefined_auc_and_folds(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    targets = np.stack([np.arange(20) % 2, np.zeros(20), (np.arange(20) % 4 == 0)], axis=1).astype(float)
    probabilities = rng.uniform(size=(20, 3))
    names = ["any_hemorrhage", "epidural", "fracture"]
    folds = [classification_metrics("multilabel", probabilities[i::2], targets[i::2], names) for i in range(2)]
    text = _classification("multilabel", names, probabilities, targets, tmp_path, fold_metrics=folds)
    assert text.count(DATA_URI) == 6
    assert "AUC undefined" in text and "epidural" in text
    assert "fold 0" in text and "fold 1" in text and "±" in text  # per-class mean ± sd across folds


def test_cross_validation_summary_as_metrics(tmp_path: Path) -> None:
    names = ["a", "b"]
    folds = [
        classification_metrics("multilabel", np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([[1, 0], [0, 1], [1, 0]]), names),
        classification_metrics("multilabel", np.array([[0.7, 0.3], [0.4, 0.6], [0.1, 0.2]]), np.array([[1, 0], [0, 1], [0, 0]]), names),
    ]
    report = RunReport("cv", "multilabel", names, [], summarise_folds(folds), None, None, [], {}, fold_metrics=folds)
    text = write_report(report, tmp_path / "cv.html").read_text(encoding="utf-8")
    _check_self_contained(text)
    assert text.count(DATA_URI) == 0  # no history, no probabilities, no confusion matrix in a summary
    assert "No training history" in text and "1.000 ± 0.000 (n=2)" in text


def test_segmentation_report(tmp_path: Path) -> None:
    reference = np.zeros((8, 8), dtype=np.int64)
    reference[2:6, 2:6] = 1
    prediction = np.zeros_like(reference)
    prediction[3:7, 2:6] = 1
    names = ["background", "lung left", "lung right"]
    metrics = segmentation_metrics(prediction, reference, names)
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_dice_mean": 0.2 * e, "lr": 1e-3} for e in range(1, 4)]
    report = RunReport("lungs", "segmentation", names, history, metrics, None, None, [("case 1", _overlay())], {"spacing": [1, 1, 1]})
    text = write_report(report, tmp_path / "seg.html").read_text(encoding="utf-8")
    _check_self_contained(text)
    assert text.count(DATA_URI) == 2  # learning curves and one overlay
    assert "lung left" in text and "lung right" in text and "dice" in text and "iou" in text
    assert "0.750" in text  # Dice of the two 16-voxel squares overlapping by 12


def test_bad_overlay_is_an_error_and_leaves_no_file(tmp_path: Path) -> None:
    report = RunReport("x", "segmentation", ["bg", "a"], [], {}, None, None, [("float", np.zeros((4, 4, 3)))], {})
    with pytest.raises(ValueError, match="overlay 'float'"):
        write_report(report, tmp_path / "x.html")
    assert list(tmp_path.iterdir()) == []
