"""The lung nodule models scored as issue 16 asks, each number beside its baseline.

``malignancy``: out-of-fold probabilities of the 5 cross-validation folds (each fold's best
weights, from its checkpoint) and the final model's on the fixed test patients, beside a
logistic regression on ``diameter_mm`` alone fitted on the same folds and the same training
patients. The decision threshold is chosen on the pooled out-of-fold probabilities (Youden's
J), never on the test patients; sensitivity, specificity, the confusion matrix and the
expected calibration error on the test patients use it. Nodules rated 3 are predicted and
summarised, not scored.

``segmenter``: the package outlines each test nodule at its ``nodules.csv`` centre, as at a
user's point (:func:`CTExplainLib.points.outline.outline_nodule`); Dice against the readers'
outline on the crop's grid, and the diameter error against ``diameter_mm``.

    python -m CTExplainTraining.nodule_check malignancy CTExplainTraining/recipes/lung_nodule_malignancy.json
    python -m CTExplainTraining.nodule_check segmenter build/runs/lung-nodule-segmenter/model build/lidc-nodules/nodules.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from CTExplainLib.classify import probabilities_from_logits
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import load_package
from CTExplainLib.points.crop import crop_input
from CTExplainLib.points.outline import nodule_size, outline_nodule
from CTExplainLib.resample import resample_array

from .config import make_config, read_recipe
from .engine import CHECKPOINT, build_model
from .manifest import Example
from .metrics import classification_metrics
from .run import PACKAGE_DIR, load_manifest
from .splits import patient_folds

LOG = logging.getLogger(__name__)
RESULT_FILE = "nodule_check.json"


def youden_threshold(targets: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 on these scores."""
    fpr, tpr, thresholds = roc_curve(targets, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


@torch.no_grad()
def predict(network: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> np.ndarray:
    network.eval()
    logits = network(torch.stack(list(inputs)).float())
    return probabilities_from_logits(logits, "binary").numpy()[:, 0]


def _mean_sd(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def _scored(probabilities: np.ndarray, targets: np.ndarray, threshold: float) -> Dict[str, Any]:
    metrics = classification_metrics("binary", probabilities[:, None], targets[:, None].astype(np.float32), ["malignant"], threshold)
    per = metrics["per_class"]["malignant"]
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]["malignant"]
    return {"auc": per["auc"], "sensitivity": per["sensitivity"], "specificity": per["specificity"], "ece": metrics["ece"],
            "threshold": threshold, "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}, "n": metrics["n"]}


def check_malignancy(recipe: Path, nodules_csv: Optional[Path] = None) -> Dict[str, Any]:
    config = make_config(read_recipe(recipe))
    manifest = load_manifest(config)
    spec = config.input_spec()
    examples = manifest.examples

    def network_input(example: Example) -> torch.Tensor:
        return crop_input(load_volume(example.image), spec, mask=load_volume(example.mask)).model_input.tensor

    inputs = [network_input(e) for e in examples]
    targets = np.array([float(e.target[0]) for e in examples])
    diameter_of = diameters_by_image(Path(config.manifest))
    diameters = np.array([[diameter_of[str(e.image)]] for e in examples])
    out = Path(config.out)
    folds = patient_folds(manifest, config.cv, config.seed)
    oof = {"model": np.full(len(examples), np.nan), "diameter": np.full(len(examples), np.nan)}
    fold_auc: Dict[str, List[float]] = {"model": [], "diameter": []}
    for fold in folds:
        network = build_model(config, manifest)
        state = torch.load(out / f"fold-{fold.index + 1}" / CHECKPOINT, map_location="cpu", weights_only=True)
        network.load_state_dict(state["best_state"])
        oof["model"][fold.val] = predict(network, [inputs[i] for i in fold.val])
        baseline = LogisticRegression().fit(diameters[fold.train], targets[fold.train])
        oof["diameter"][fold.val] = baseline.predict_proba(diameters[fold.val])[:, 1]
        for name in oof:
            fold_auc[name].append(float(roc_auc_score(targets[fold.val], oof[name][fold.val])))
    pool = [i for f in folds for i in f.val]
    test = [i for i, e in enumerate(examples) if e.split == "test"]
    train = [i for i, e in enumerate(examples) if e.split != "test"]
    final = load_package(out / PACKAGE_DIR)
    test_scores = {
        "model": predict(final.network, [inputs[i] for i in test]),
        "diameter": LogisticRegression().fit(diameters[train], targets[train]).predict_proba(diameters[test])[:, 1],
    }
    result: Dict[str, Any] = {"recipe": str(recipe), "folds": len(folds), "test_nodules": len(test),
                              "test_patients": len({examples[i].patient for i in test})}
    for name in oof:
        threshold = youden_threshold(targets[pool], oof[name][pool])
        result[name] = {
            "cv_auc": _mean_sd(fold_auc[name]),
            "cv_fold_auc": fold_auc[name],
            "cv_pooled": _scored(oof[name][pool], targets[pool], threshold),
            "test": _scored(test_scores[name], targets[test], threshold),
        }
    if nodules_csv is not None:
        result["rating_3"] = _rating_three(final, spec, nodules_csv, result["model"]["test"]["threshold"])
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def diameters_by_image(manifest_csv: Path) -> Dict[str, float]:
    """``diameter_mm`` of each image of the malignancy manifest (paths resolved as the manifest
    reader resolves them), for the baseline."""
    with open(manifest_csv, newline="") as handle:
        return {os.path.normpath(os.path.abspath(manifest_csv.parent / row["image"])): float(row["diameter_mm"])
                for row in csv.DictReader(handle)}


def _rating_three(model: Any, spec: Any, nodules_csv: Path, threshold: float) -> Dict[str, Any]:
    """The final model's probabilities for the nodules rated 3 (no label: predicted, not scored)."""
    scores: Dict[str, List[float]] = {"test": [], "train": []}
    with open(nodules_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["malignancy"]) != 3:
                continue
            tensor = crop_input(load_volume(row["image"]), spec, mask=load_volume(row["mask"])).model_input.tensor
            scores["test" if row["split"] == "test" else "train"].append(float(predict(model.network, [tensor])[0]))
    return {
        split: {"n": len(values), "median_probability": float(np.median(values)) if values else None,
                "called_malignant": float(np.mean(np.asarray(values) >= threshold)) if values else None}
        for split, values in scores.items()
    }


def check_segmenter(package: Path, nodules_csv: Path, split: str = "test") -> Dict[str, Any]:
    model = load_package(package)
    device = torch.device("cpu")
    dice, diameter_error, rows_out = [], [], []
    with open(nodules_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    for row in rows:
        volume, reference = load_volume(row["image"]), load_volume(row["mask"])
        point = [float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]
        try:
            outline = outline_nodule(model, volume, point, device)
        except Exception as exc:  # a missed nodule scores Dice 0; the reason is kept
            LOG.warning("%s: %s", row["key"], exc)
            dice.append(0.0)
            rows_out.append({"key": row["key"], "dice": 0.0, "error": str(exc)})
            continue
        predicted = resample_array(outline.array.astype(np.float32), outline.grid, reference.grid, "nearest", 0.0) > 0.5
        truth = reference.array > 0
        score = 2.0 * float((predicted & truth).sum()) / float(predicted.sum() + truth.sum())
        size = nodule_size(outline)
        dice.append(score)
        diameter_error.append(size.diameter_mm - float(row["diameter_mm"]))
        rows_out.append({"key": row["key"], "dice": score, **size.to_dict(), "reference_diameter_mm": float(row["diameter_mm"]),
                         "reference_volume_ml": float(truth.sum()) * float(np.prod(reference.grid.spacing)) / 1000.0})
    errors = np.abs(diameter_error)
    result = {
        "package": str(package), "split": split, "nodules": len(rows), "patients": len({r["patient"] for r in rows}),
        "dice_mean": float(np.mean(dice)), "dice_median": float(np.median(dice)),
        "dice_below_0.5": int(np.sum(np.asarray(dice) < 0.5)),
        "diameter_error_mm": {"mean_absolute": float(errors.mean()), "median_absolute": float(np.median(errors)),
                              "mean_signed": float(np.mean(diameter_error))},
        "per_nodule": rows_out,
    }
    (Path(package).parent / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def _print(result: Dict[str, Any], prefix: str = "") -> None:
    for key, value in result.items():
        if key == "per_nodule":
            continue
        if isinstance(value, dict):
            _print(value, f"{prefix}{key}.")
        else:
            print(f"{prefix}{key}={value}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    malignancy = commands.add_parser("malignancy")
    malignancy.add_argument("recipe", type=Path)
    malignancy.add_argument("--nodules", type=Path, default=Path("build/lidc-nodules/nodules.csv"))
    segmenter = commands.add_parser("segmenter")
    segmenter.add_argument("package", type=Path)
    segmenter.add_argument("nodules", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "malignancy":
        _print(check_malignancy(args.recipe, args.nodules))
    else:
        _print(check_segmenter(args.package, args.nodules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
