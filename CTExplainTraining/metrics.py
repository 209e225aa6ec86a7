"""Classification and segmentation metrics, as JSON-ready dictionaries.

Numbers come from scikit-learn (AUC, average precision, confusion matrices, F1, MCC,
balanced accuracy, ROC/PR curves, calibration curve), torchmetrics (expected calibration
error) and MONAI (Dice, IoU). A metric that is undefined on the given set (the AUC of a class
whose targets are all one value, the Dice of a segment absent from both masks) is ``None``,
and macro averages are taken over the defined classes only. Example::

    from CTExplainTraining.metrics import classification_metrics
    m = classification_metrics("multilabel", probs, targets, ["bleed", "fracture"])
    m["auc_macro"], m["per_class"]["bleed"]["sensitivity"]
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.utils import one_hot
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    multilabel_confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

LOG = logging.getLogger(__name__)

CLASSIFICATION_TASKS = ("binary", "multiclass", "multilabel")
ECE_BINS = 10


def classification_metrics(
    task: str,
    probabilities: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    threshold: float = 0.5,
) -> Dict[str, Any]:
    """Metrics of ``probabilities`` (N, C) against one-/multi-hot ``targets`` (N, C).

    Binary: C == 1 (the positive class). Multiclass predicts the argmax; binary and
    multilabel predict ``probability >= threshold``. Keys: ``accuracy`` (multilabel: mean
    per-label accuracy; ``subset_accuracy`` is the exact-match rate), ``balanced_accuracy``,
    ``auc_macro``, ``auc_classes_defined``, ``map_macro``, ``map_classes_defined``, ``mcc``
    (multilabel: mean per-label MCC), ``f1_macro``, ``ece`` (multiclass: top-label; binary
    and multilabel: over every label's probability), ``per_class``, ``confusion_matrix``
    (multiclass: C x C, rows true, columns predicted; otherwise per class
    ``[[tn, fp], [fn, tp]]``), ``threshold``, ``decision``, ``n``.
    """
    probabilities, targets = _check_inputs(task, probabilities, targets, class_names)
    names = [str(c) for c in class_names]
    n, n_classes = targets.shape
    truth = targets > 0.5
    if task == "multiclass":
        y_true = np.argmax(targets, axis=1)
        y_pred = np.argmax(probabilities, axis=1)
        predicted = np.eye(n_classes, dtype=bool)[y_pred]
        per_class_cm = multilabel_confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    else:
        predicted = probabilities >= threshold
        # Column by column: scikit-learn reads a one-column indicator as binary labels.
        per_class_cm = np.stack(
            [confusion_matrix(truth[:, c], predicted[:, c], labels=[False, True]) for c in range(n_classes)]
        )

    per_class: Dict[str, Dict[str, Any]] = {}
    for c, name in enumerate(names):
        (tn, fp), (fn, tp) = per_class_cm[c].tolist()
        per_class[name] = {
            "auc": _auc(truth[:, c], probabilities[:, c]),
            "average_precision": _average_precision(truth[:, c], probabilities[:, c]),
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "f1": _float(_quiet(f1_score, truth[:, c], predicted[:, c], zero_division=0)),
            "support_positive": int(tp + fn),
            "support_negative": int(tn + fp),
        }

    aucs = [v["auc"] for v in per_class.values() if v["auc"] is not None]
    aps = [v["average_precision"] for v in per_class.values() if v["average_precision"] is not None]
    result: Dict[str, Any] = {
        "n": int(n),
        "auc_macro": _mean(aucs),
        "auc_classes_defined": len(aucs),
        "map_macro": _mean(aps),
        "map_classes_defined": len(aps),
        "f1_macro": _mean([v["f1"] for v in per_class.values()]),
        "threshold": float(threshold),
        "decision": "argmax" if task == "multiclass" else "threshold",
    }
    if task == "multiclass":
        result["accuracy"] = _float(np.mean(y_pred == y_true))
        result["balanced_accuracy"] = _float(_quiet(balanced_accuracy_score, y_true, y_pred))
        result["mcc"] = _float(_quiet(matthews_corrcoef, y_true, y_pred))
        result["ece"] = _float(
            multiclass_calibration_error(
                torch.as_tensor(probabilities), torch.as_tensor(y_true), num_classes=n_classes, n_bins=ECE_BINS, norm="l1"
            )
        )
        result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).tolist()
    else:
        balanced = [_quiet(balanced_accuracy_score, truth[:, c], predicted[:, c]) for c in range(n_classes)]
        mccs = [_quiet(matthews_corrcoef, truth[:, c], predicted[:, c]) for c in range(n_classes)]
        for c, name in enumerate(names):
            per_class[name]["mcc"] = _float(mccs[c])
            per_class[name]["ece"] = _float(
                binary_calibration_error(
                    torch.as_tensor(probabilities[:, c]), torch.as_tensor(truth[:, c].astype(np.int64)), n_bins=ECE_BINS, norm="l1"
                )
            )
        result["accuracy"] = _float(np.mean(truth == predicted))
        result["balanced_accuracy"] = _mean([_float(b) for b in balanced])
        result["mcc"] = _mean([_float(m) for m in mccs])
        result["ece"] = _float(
            binary_calibration_error(
                torch.as_tensor(probabilities.reshape(-1)), torch.as_tensor(truth.reshape(-1).astype(np.int64)), n_bins=ECE_BINS, norm="l1"
            )
        )
        result["confusion_matrix"] = {name: per_class_cm[c].tolist() for c, name in enumerate(names)}
        if task == "multilabel":
            result["subset_accuracy"] = _float(np.mean(np.all(truth == predicted, axis=1)))
    result["ece_bins"] = ECE_BINS
    result["per_class"] = per_class
    return result


def segmentation_metrics(
    prediction: Union[np.ndarray, Sequence[np.ndarray]],
    reference: Union[np.ndarray, Sequence[np.ndarray]],
    segment_names: Sequence[str],
) -> Dict[str, Any]:
    """Dice and IoU per segment (label 1..S; 0 is background) of integer label maps.

    ``prediction`` and ``reference`` are one label map each (any number of dimensions) or
    equally long lists of them (cases, shapes may differ between cases): a segment's score
    is then the mean over the cases where it is defined. A segment absent from both masks
    of a case is undefined there (``None`` when undefined in every case); absent from only
    one, it scores 0. Keys: ``per_segment`` {name: {dice, iou, voxels_reference,
    voxels_prediction, cases_defined}}, ``dice_mean``, ``iou_mean`` (over defined segments),
    ``segments_defined``, ``cases``.
    """
    names = [str(s) for s in segment_names]
    if len(names) < 2:
        raise ValueError("segment_names needs the background name first and at least one segment")
    predictions = [prediction] if isinstance(prediction, np.ndarray) else list(prediction)
    references = [reference] if isinstance(reference, np.ndarray) else list(reference)
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n_labels = len(names)
    dice_metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    iou_metric = MeanIoU(include_background=False, reduction="none", ignore_empty=False)
    dice_rows, iou_rows = [], []
    voxels_ref = np.zeros(n_labels - 1, dtype=np.int64)
    voxels_pred = np.zeros(n_labels - 1, dtype=np.int64)
    for case, (pred, ref) in enumerate(zip(predictions, references)):
        pred, ref = np.asarray(pred), np.asarray(ref)
        if pred.shape != ref.shape:
            raise ValueError(f"case {case}: prediction shape {pred.shape} differs from reference shape {ref.shape}")
        for what, labels in (("prediction", pred), ("reference", ref)):
            if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
                raise ValueError(f"case {case}: the {what} holds {labels.dtype} values, not integer labels")
            if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
                raise ValueError(f"case {case}: the {what} has labels outside 0..{n_labels - 1} ({', '.join(names)})")
        pred_oh = one_hot(torch.as_tensor(pred.astype(np.int64))[None, None], num_classes=n_labels, dim=1)
        ref_oh = one_hot(torch.as_tensor(ref.astype(np.int64))[None, None], num_classes=n_labels, dim=1)
        dice = dice_metric(pred_oh, ref_oh)[0].numpy().astype(np.float64)
        iou = iou_metric(pred_oh, ref_oh)[0].numpy().astype(np.float64)
        in_ref = ref_oh[0, 1:].reshape(n_labels - 1, -1).sum(dim=1).numpy()
        in_pred = pred_oh[0, 1:].reshape(n_labels - 1, -1).sum(dim=1).numpy()
        both_empty = (in_ref == 0) & (in_pred == 0)
        dice[both_empty] = np.nan
        iou[both_empty] = np.nan
        dice_rows.append(dice)
        iou_rows.append(iou)
        voxels_ref += in_ref.astype(np.int64)
        voxels_pred += in_pred.astype(np.int64)
    dice_all, iou_all = np.stack(dice_rows), np.stack(iou_rows)
    per_segment: Dict[str, Dict[str, Any]] = {}
    for s, name in enumerate(names[1:]):
        defined = ~np.isnan(dice_all[:, s])
        per_segment[name] = {
            "dice": _float(dice_all[defined, s].mean()) if defined.any() else None,
            "iou": _float(iou_all[defined, s].mean()) if defined.any() else None,
            "voxels_reference": int(voxels_ref[s]),
            "voxels_prediction": int(voxels_pred[s]),
            "cases_defined": int(defined.sum()),
        }
    dices = [v["dice"] for v in per_segment.values() if v["dice"] is not None]
    ious = [v["iou"] for v in per_segment.values() if v["iou"] is not None]
    return {
        "per_segment": per_segment,
        "dice_mean": _mean(dices),
        "iou_mean": _mean(ious),
        "segments_defined": len(dices),
        "cases": len(predictions),
    }


def summarise_folds(fold_metrics: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean and sample SD (ddof=1) of every numeric leaf across folds, in the same nesting.

    Each leaf becomes ``{"mean", "sd", "n", "n_none"}``: ``n`` folds had a number, ``n_none``
    had None or lacked the key (those are skipped). ``sd`` is None with fewer than two
    numbers, ``mean`` with none. Lists (confusion matrices), strings and booleans are left out.
    """
    if not fold_metrics:
        raise ValueError("no fold metrics to summarise")
    return _summarise(fold_metrics)


def curves(probabilities: np.ndarray, targets: np.ndarray, class_names: Sequence[str]) -> Dict[str, Dict[str, List[float]]]:
    """One-vs-rest ROC (``fpr``, ``tpr``) and PR (``recall``, ``precision``) per class.

    A class whose targets are all one value has empty ROC lists; one with no positives has
    empty PR lists.
    """
    probabilities = _as_2d(probabilities, "probabilities")
    targets = _as_2d(targets, "targets")
    if probabilities.shape != targets.shape or probabilities.shape[1] != len(class_names):
        raise ValueError(f"probabilities {probabilities.shape}, targets {targets.shape} and {len(class_names)} class names disagree")
    result: Dict[str, Dict[str, List[float]]] = {}
    for c, name in enumerate(class_names):
        truth = targets[:, c] > 0.5
        entry: Dict[str, List[float]] = {"fpr": [], "tpr": [], "recall": [], "precision": []}
        if 0 < truth.sum() < len(truth):
            fpr, tpr, _ = roc_curve(truth, probabilities[:, c])
            entry["fpr"], entry["tpr"] = fpr.tolist(), tpr.tolist()
        if truth.any():
            precision, recall, _ = precision_recall_curve(truth, probabilities[:, c])
            entry["recall"], entry["precision"] = recall.tolist(), precision.tolist()
        result[str(name)] = entry
    return result


def calibration_bins(
    probabilities: np.ndarray, targets: np.ndarray, n_bins: int = 10, task: Optional[str] = None
) -> Dict[str, List[float]]:
    """Reliability-diagram bins: ``mean_predicted``, ``fraction_positive``, ``count``,
    ``bin_lower``, ``bin_upper`` for each non-empty bin of equal width on [0, 1].

    ``task="multiclass"`` bins the top-label confidence against whether the top label is
    right (as the multiclass ECE does); otherwise every (probability, target) pair of every
    column is one sample (as the binary/multilabel ECE does).
    """
    probabilities = _as_2d(probabilities, "probabilities")
    targets = _as_2d(targets, "targets")
    if probabilities.shape != targets.shape:
        raise ValueError(f"probabilities {probabilities.shape} and targets {targets.shape} differ in shape")
    if task == "multiclass":
        scores = probabilities.max(axis=1)
        outcome = (np.argmax(probabilities, axis=1) == np.argmax(targets, axis=1)).astype(int)
    else:
        scores = probabilities.reshape(-1)
        outcome = (targets.reshape(-1) > 0.5).astype(int)
    scores = np.clip(scores, 0.0, 1.0)
    fraction, mean_predicted = calibration_curve(outcome, scores, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts, _ = np.histogram(scores, bins=edges)
    full = counts > 0
    return {
        "mean_predicted": mean_predicted.tolist(),
        "fraction_positive": fraction.tolist(),
        "count": counts[full].astype(int).tolist(),
        "bin_lower": edges[:-1][full].tolist(),
        "bin_upper": edges[1:][full].tolist(),
    }


# --- helpers ---------------------------------------------------------------------------


def _check_inputs(task: str, probabilities: np.ndarray, targets: np.ndarray, class_names: Sequence[str]):
    if task not in CLASSIFICATION_TASKS:
        raise ValueError(f"unknown classification task {task!r}; expected one of {', '.join(CLASSIFICATION_TASKS)}")
    probabilities = _as_2d(probabilities, "probabilities")
    targets = _as_2d(targets, "targets")
    if probabilities.shape != targets.shape:
        raise ValueError(f"probabilities {probabilities.shape} and targets {targets.shape} differ in shape")
    if probabilities.shape[0] == 0:
        raise ValueError("no examples to score")
    if probabilities.shape[1] != len(class_names):
        raise ValueError(f"{probabilities.shape[1]} probability columns for {len(class_names)} class names")
    if task == "binary" and probabilities.shape[1] != 1:
        raise ValueError(f"binary probabilities have one column (the positive class), not {probabilities.shape[1]}")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities contain NaN or infinite values")
    if task == "multiclass" and not np.all(targets.sum(axis=1) == 1):
        raise ValueError("multiclass targets must be one-hot (exactly one 1 per row)")
    return probabilities, targets


def _as_2d(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"{what} must be (N, C), not shape {values.shape}")
    return values


def _quiet(function, *args, **kwargs):
    """Call a scikit-learn metric without its warnings about classes absent from the set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


def _auc(truth: np.ndarray, scores: np.ndarray) -> Optional[float]:
    if truth.all() or not truth.any():
        return None
    return _float(roc_auc_score(truth, scores))


def _average_precision(truth: np.ndarray, scores: np.ndarray) -> Optional[float]:
    if not truth.any():
        return None
    return _float(average_precision_score(truth, scores))


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return float(numerator) / float(denominator) if denominator else None


def _float(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.item()
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _summarise(items: List[Any]) -> Dict[str, Any]:
    keys: List[str] = []
    for item in items:
        for key in item if isinstance(item, dict) else ():
            if key not in keys:
                keys.append(key)
    result: Dict[str, Any] = {}
    for key in keys:
        values = [item.get(key) if isinstance(item, dict) else None for item in items]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            nested = _summarise([v if isinstance(v, dict) else {} for v in values])
            if nested:  # a dict of lists (per-class confusion matrices) leaves nothing
                result[key] = nested
        elif all(_is_number(v) for v in present):
            # Numbers, or None in every fold (a metric undefined everywhere).
            numbers = [float(v) for v in present if not math.isnan(float(v))]
            result[key] = {
                "mean": float(np.mean(numbers)) if numbers else None,
                "sd": float(np.std(numbers, ddof=1)) if len(numbers) > 1 else None,
                "n": len(numbers),
                "n_none": len(values) - len(numbers),
            }
    return result
