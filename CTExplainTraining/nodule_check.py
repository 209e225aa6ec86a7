"""The lung nodule models scored as issue 16 asks, each number beside its baseline.

``malignancy``: out-of-fold probabilities of the 5 cross-validation folds (each fold's best
weights, from its checkpoint) and the final model's on the fixed test patients, beside a
logistic regression on ``diameter_mm`` alone fitted on the same folds and the same training
patients. The decision threshold is chosen on the pooled out-of-fold probabilities (Youden's
J), never on the test patients; sensitivity, specificity, the confusion matrix and the
expected calibration error on the test patients use it. Nodules rated 3 are predicted and
summarised, not scored. With ``--segmenter``, the test nodules are scored once more with the
box cut around that segmenter's outline at the table's centre, as at a user's point.

``characteristics``: the same for the multilabel characteristics classifier, label by label
(each beside its own diameter baseline; sensitivity and specificity at the package's one
threshold, which every label's call uses, and the baseline's at its Youden threshold); a label *validates* when its
pooled out-of-fold AUC is at least ``VALIDATES_AUC`` (0.75) and above the diameter
baseline's (:func:`validates`): decided on the folds, before the test patients are scored.

``segmenter``: the package outlines each test nodule at its ``nodules.csv`` centre, as at a
user's point (:func:`CTExplainLib.points.outline.outline_nodule`); Dice against the readers'
outline on the crop's grid, and the error of its sphere-equivalent diameter against ``diameter_mm``.

    python -m CTExplainTraining.nodule_check malignancy CTExplainTraining/recipes/lung_nodule_malignancy.json \
        --segmenter build/runs/lung-nodule-segmenter/model --record-in build/runs/lung-nodule-malignancy/model
    python -m CTExplainTraining.nodule_check characteristics CTExplainTraining/recipes/lung_nodule_characteristics.json \
        --keep-validated build/runs/lung-nodule-characteristics/validated
    python -m CTExplainTraining.nodule_check segmenter build/runs/lung-nodule-segmenter/model build/lidc-nodules/nodules.csv \
        --record-in build/runs/lung-nodule-segmenter/model
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
from CTExplainLib.writing import record_in_metadata

from .config import make_config, read_recipe
from .engine import CHECKPOINT, build_model
from .export import keep_labels
from .manifest import Example
from .metrics import classification_metrics
from .run import PACKAGE_DIR, load_manifest
from .splits import holdout_split, patient_folds

LOG = logging.getLogger(__name__)
RESULT_FILE = "nodule_check.json"
VALIDATES_AUC = 0.75


def youden_threshold(targets: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 on these scores."""
    fpr, tpr, thresholds = roc_curve(targets, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


@torch.no_grad()
def predict(network: torch.nn.Module, inputs: Sequence[torch.Tensor], task: str = "binary") -> np.ndarray:
    """Probabilities (N, labels) of a binary or multilabel network."""
    network.eval()
    logits = network(torch.stack(list(inputs)).float())
    return probabilities_from_logits(logits, task).numpy()


def _mean_sd(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def _scored(probabilities: np.ndarray, targets: np.ndarray, threshold: float, label: str) -> Dict[str, Any]:
    metrics = classification_metrics("binary", probabilities[:, None], targets[:, None].astype(np.float32), [label], threshold)
    per = metrics["per_class"][label]
    (tn, fp), (fn, tp) = metrics["confusion_matrix"][label]
    return {"auc": per["auc"], "sensitivity": per["sensitivity"], "specificity": per["specificity"], "ece": metrics["ece"],
            "threshold": threshold, "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}, "n": metrics["n"]}


def _centres(nodules_csv: Path) -> Dict[str, List[float]]:
    with open(nodules_csv, newline="") as handle:
        return {os.path.normpath(row["image"]): [float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]
                for row in csv.DictReader(handle)}


def validates(label: Dict[str, Any]) -> bool:
    """A label validates when its pooled out-of-fold AUC reaches ``VALIDATES_AUC`` and beats the
    diameter baseline's on the same folds (decided before the test patients are looked at)."""
    model, diameter = label["model"]["cv_pooled"]["auc"], label["diameter"]["cv_pooled"]["auc"]
    return bool(model >= VALIDATES_AUC and model > diameter)


def check_classifier(recipe: Path, nodules_csv: Optional[Path] = None, segmenter: Optional[Path] = None) -> Dict[str, Any]:
    """The scores of the module docstring for a binary (malignancy) or multilabel
    (characteristics) nodule classifier's run, every label beside its diameter baseline."""
    config = make_config(read_recipe(recipe))
    manifest = load_manifest(config)
    spec = config.input_spec()
    examples = manifest.examples
    labels = list(manifest.classes)

    def network_input(example: Example) -> torch.Tensor:
        return crop_input(load_volume(example.image), spec, mask=load_volume(example.mask)).model_input.tensor

    inputs = [network_input(e) for e in examples]
    targets = np.stack([np.asarray(e.target, dtype=float) for e in examples])  # (N, labels)
    diameter_of = diameters_by_image(Path(config.manifest))
    diameters = np.array([[diameter_of[str(e.image)]] for e in examples])

    def diameter_baseline(train: List[int], scored: List[int]) -> np.ndarray:
        return np.stack([LogisticRegression().fit(diameters[train], targets[train, j]).predict_proba(diameters[scored])[:, 1]
                         for j in range(len(labels))], axis=1)

    out = Path(config.out)
    folds = patient_folds(manifest, config.cv, config.seed)
    oof = {"model": np.full(targets.shape, np.nan), "diameter": np.full(targets.shape, np.nan)}
    fold_auc: Dict[str, List[List[float]]] = {"model": [], "diameter": []}
    for fold in folds:
        network = build_model(config, manifest)
        state = torch.load(out / f"fold-{fold.index + 1}" / CHECKPOINT, map_location="cpu", weights_only=True)
        network.load_state_dict(state["best_state"])
        oof["model"][fold.val] = predict(network, [inputs[i] for i in fold.val], config.task)
        oof["diameter"][fold.val] = diameter_baseline(fold.train, fold.val)
        for name in oof:
            fold_auc[name].append([float(roc_auc_score(targets[fold.val, j], oof[name][fold.val, j])) for j in range(len(labels))])
    pool = [i for f in folds for i in f.val]
    test = [i for i, e in enumerate(examples) if e.split == "test"]
    train = [i for i, e in enumerate(examples) if e.split != "test"]
    final = load_package(out / PACKAGE_DIR)
    test_scores = {"model": predict(final.network, [inputs[i] for i in test], config.task), "diameter": diameter_baseline(train, test)}
    per_label: Dict[str, Dict[str, Any]] = {}
    for j, label in enumerate(labels):
        per_label[label] = {}
        for name in oof:
            # One label (malignancy): Youden's threshold, which its recipe then records as the package's.
            # Several: the model at the package's one threshold, which every label's call uses.
            threshold = config.threshold if len(labels) > 1 and name == "model" else youden_threshold(targets[pool, j], oof[name][pool, j])
            per_label[label][name] = {
                "cv_auc": _mean_sd([auc[j] for auc in fold_auc[name]]),
                "cv_fold_auc": [auc[j] for auc in fold_auc[name]],
                "cv_pooled": _scored(oof[name][pool, j], targets[pool, j], threshold, label),
                "test": _scored(test_scores[name][:, j], targets[test, j], threshold, label),
            }
        per_label[label]["validates"] = validates(per_label[label])
    result: Dict[str, Any] = {"recipe": str(recipe), "folds": len(folds), "test_nodules": len(test),
                              "test_patients": len({examples[i].patient for i in test})}
    if len(labels) > 1:
        result.update({"labels": per_label, "validated": [label for label in labels if per_label[label]["validates"]]})
    else:  # the malignancy classifier's layout: its one label's scores at the top
        result.update(per_label[labels[0]])
    if nodules_csv is not None and len(labels) == 1:
        result["rating_3"] = _rating_three(final, spec, nodules_csv, result["model"]["test"]["threshold"])
    if segmenter is not None and nodules_csv is not None:
        # As at a user's point: the segmenter's outline at the table's centre, not the readers'.
        centres = _centres(nodules_csv)
        outliner = load_package(segmenter)
        at_point = [crop_input(volume, spec, centres[str(examples[i].image)], outline).model_input.tensor
                    for i in test for volume in [load_volume(examples[i].image)]
                    for outline in [outline_nodule(outliner, volume, centres[str(examples[i].image)], torch.device("cpu"))]]
        probabilities = predict(final.network, at_point, config.task)
        for j, label in enumerate(labels):
            scores = per_label[label]["model"]
            scores["test_segmenter_outline"] = _scored(probabilities[:, j], targets[test, j], scores["test"]["threshold"], label)
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
            scores["test" if row["split"] == "test" else "train"].append(float(predict(model.network, [tensor])[0, 0]))
    return {
        split: {"n": len(values), "median_probability": float(np.median(values)) if values else None,
                "called_malignant": float(np.mean(np.asarray(values) >= threshold)) if values else None}
        for split, values in scores.items()
    }


def validation_patients(recipe: Path) -> List[str]:
    """The patients a segmenter recipe's run validated on (its holdout split)."""
    config = make_config(read_recipe(recipe))
    manifest = load_manifest(config)
    fold = holdout_split(manifest, config.val_fraction, config.seed)
    return sorted({manifest.examples[i].patient for i in fold.val})


def check_segmenter(package: Path, nodules_csv: Path, split: str = "test", threshold: Optional[float] = None,
                    recipe: Optional[Path] = None) -> Dict[str, Any]:
    """Dice at the point on the test patients, or (``split="val"``, with the recipe) on the
    run's own validation patients, where a ``threshold`` may be chosen."""
    model = load_package(package)
    device = torch.device("cpu")
    dice, diameter_error, rows_out = [], [], []
    with open(nodules_csv, newline="") as handle:
        if split == "val":
            assert recipe is not None, "the validation patients come from the recipe's run"
            chosen = set(validation_patients(recipe))
            rows = [r for r in csv.DictReader(handle) if r["patient"] in chosen]
        else:
            rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    for row in rows:
        volume, reference = load_volume(row["image"]), load_volume(row["mask"])
        point = [float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]
        try:
            outline = outline_nodule(model, volume, point, device, threshold=threshold)
        except Exception as exc:  # a missed nodule scores Dice 0; the reason is kept
            LOG.warning("%s: %s", row["key"], exc)
            dice.append(0.0)
            rows_out.append({"key": row["key"], "dice": 0.0, "error": str(exc)})
            continue
        predicted = resample_array(outline.array.astype(np.float32), outline.grid, reference.grid, "nearest", 0.0) > 0.5
        truth = reference.array > 0
        score = 2.0 * float((predicted & truth).sum()) / float(predicted.sum() + truth.sum())
        size, readers = nodule_size(outline), nodule_size(reference)
        dice.append(score)
        diameter_error.append(size.equivalent_diameter_mm - float(row["diameter_mm"]))
        rows_out.append({"key": row["key"], "dice": score, **size.to_dict(), "reference_diameter_mm": float(row["diameter_mm"]),
                         "readers_outline": readers.to_dict()})
    errors = np.abs(diameter_error)
    result = {
        "package": str(package), "split": split, "threshold": model.metadata.threshold if threshold is None else threshold,
        "nodules": len(rows), "patients": len({r["patient"] for r in rows}),
        "dice_mean": float(np.mean(dice)), "dice_median": float(np.median(dice)),
        "dice_below_0.5": int(np.sum(np.asarray(dice) < 0.5)),
        # The outline's sphere-equivalent diameter against nodules.csv's diameter_mm.
        "diameter_error_mm": {"mean_absolute": float(errors.mean()), "median_absolute": float(np.median(errors)),
                              "mean_signed": float(np.mean(diameter_error))},
        "volume_ml_median": {"outline": float(np.median([r["volume_ml"] for r in rows_out if "volume_ml" in r])),
                             "readers": float(np.median([r["readers_outline"]["volume_ml"] for r in rows_out if "readers_outline" in r]))},
        "per_nodule": rows_out,
    }
    return result


def check_attention(classifier: Path, segmenter: Path, nodules_csv: Path, split: str = "test") -> Dict[str, Any]:
    """Where the malignancy map lies at each nodule of ``split``: point mode (the segmenter's
    outline at the nodules.csv centre, the classifier's Grad-CAM on its box) on the nodule's crop,
    the share of the map's energy inside the outline against the share of the crop it fills, and
    the map's faithfulness (fast: its median score and the share called faithful)."""
    from CTExplainLib.points.points_file import MarkedPoint
    from CTExplainLib.points.run import explain_points

    models = load_package(classifier), load_package(segmenter)
    with open(nodules_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    energy, share, faithful, failed = [], [], [], 0
    for row in rows:
        point = MarkedPoint(row["key"], (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])))
        record = explain_points(load_volume(row["image"]), *models, [point], device="cpu")[0].record
        if not record["ok"]:
            failed += 1
            continue
        energy.append(max(f["energy_in_nodule"] for f in record["findings"]))
        share.append(record["nodule"]["share_of_crop"])
        faithful.append(record["findings"][0]["faithfulness"])  # point mode's default: fast
    lift = np.asarray(energy) / np.maximum(np.asarray(share), 1e-9)
    return {"split": split, "nodules": len(rows), "patients": len({r["patient"] for r in rows}), "no_outline": failed,
            "energy_in_nodule_median": float(np.median(energy)), "nodule_share_of_crop_median": float(np.median(share)),
            "lift_median": float(np.median(lift)), "lift_above_1": float(np.mean(lift > 1.0)),
            "faithfulness_score_median": float(np.median([f["score"] for f in faithful])),
            "faithful_share": float(np.mean([f["verdict"] == "faithful" for f in faithful]))}


def record_in_package(package: Path, result: Dict[str, Any]) -> None:
    """The check's numbers (without the per-nodule rows) into the package's provenance."""
    record_in_metadata(package, ["provenance", "evaluation"], {k: v for k, v in result.items() if k != "per_nodule"})


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
    characteristics = commands.add_parser("characteristics", help="the multilabel characteristics classifier, label by label")
    for command in (malignancy, characteristics):
        command.add_argument("recipe", type=Path)
        command.add_argument("--nodules", type=Path, default=Path("build/lidc-nodules/nodules.csv"))
        command.add_argument("--segmenter", type=Path, help="also score the test nodules with this point segmenter's outline")
    characteristics.add_argument("--keep-validated", type=Path, metavar="OUT",
                                 help="write the run's package with only the labels that validate to OUT, these numbers in it")
    segmenter = commands.add_parser("segmenter")
    segmenter.add_argument("package", type=Path)
    segmenter.add_argument("nodules", type=Path)
    segmenter.add_argument("--split", choices=("test", "val"), default="test", help="val: the run's validation patients (needs --recipe)")
    segmenter.add_argument("--threshold", type=float, help="nodule probability for the outline (default: the package's)")
    segmenter.add_argument("--recipe", type=Path)
    attention = commands.add_parser("attention", help="share of the malignancy map inside the nodule at each test nodule")
    attention.add_argument("classifier", type=Path)
    attention.add_argument("segmenter", type=Path)
    attention.add_argument("nodules", type=Path)
    for command in (malignancy, characteristics, segmenter):
        command.add_argument("--record-in", type=Path, help="a package whose provenance gets these numbers (evaluation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command in ("malignancy", "characteristics"):
        result = check_classifier(args.recipe, args.nodules, args.segmenter)
    elif args.command == "attention":
        result = check_attention(args.classifier, args.segmenter, args.nodules)
    else:
        result = check_segmenter(args.package, args.nodules, args.split, args.threshold, args.recipe)
        if args.split == "test":  # beside the run's package, with the per-nodule rows
            (Path(args.package).parent / RESULT_FILE).write_text(json.dumps(result, indent=2))
    _print(result)
    if getattr(args, "record_in", None):
        record_in_package(args.record_in, result)
    if getattr(args, "keep_validated", None):
        package = Path(make_config(read_recipe(args.recipe)).out) / PACKAGE_DIR
        note = (f"labels whose pooled out-of-fold AUC was below {VALIDATES_AUC} or not above the diameter baseline's on the same "
                "folds were dropped (python -m CTExplainTraining.nodule_check characteristics); their numbers stay in 'evaluation'")
        saved = keep_labels(package, result["validated"], args.keep_validated, note)
        record_in_package(saved, result)
        print(f"package with {', '.join(result['validated'])}: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
