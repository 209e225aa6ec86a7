"""The shipped packages, run by the core as a user's CT would be, give the numbers their
metadata records: no skew between the training run that measured them and inference."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from CTExplainLib.classify import classify_and_explain, probabilities_from_logits
from CTExplainLib.loading import load_volume
from CTExplainLib.models_catalog import HEAD_SAMPLE, resolve_package
from CTExplainLib.model_package import load_package
from CTExplainLib.preprocess import preprocess
from CTExplainLib.segment import segment
from CTExplainTraining.datasets.totalsegmentator import group_lookup
from CTExplainTraining.metrics import segmentation_metrics


@pytest.mark.slow
def test_chest_4class_reproduces_its_recorded_test_accuracy_through_the_core(data_dir: Path) -> None:
    model = load_package(resolve_package("chest-ct-4class"))
    recorded = model.metadata.provenance["metrics"]["test"]
    classes = [c.name for c in model.metadata.classes]
    truth, predicted = [], []
    with torch.no_grad():
        for label in classes:
            for path in sorted((data_dir / "chest-ct-4class" / "test" / label).iterdir()):
                volume = load_volume(path, image_spacing=(1.0, 1.0, 1.0))  # what `ctexplain explain --spacing 1 1 1` does
                logits = model.network(preprocess(volume, model.metadata.input).slices())
                predicted.append(int(probabilities_from_logits(logits, model.metadata.task)[0].argmax()))
                truth.append(classes.index(label))
    truth_array, predicted_array = np.asarray(truth), np.asarray(predicted)
    assert len(truth) == recorded["n"]
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (truth_array, predicted_array), 1)
    # One slice either way at most: the training run evaluated in batches, this in ones.
    assert np.abs(confusion - np.asarray(recorded["confusion_matrix"])).sum() <= 2, confusion.tolist()
    assert abs(float((truth_array == predicted_array).mean()) - recorded["accuracy"]) <= 1.0 / len(truth)


def test_chest_segmenter_reproduces_its_recorded_held_out_dice_through_the_core(data_dir: Path) -> None:
    """The held-out TotalSegmentator case, its lobes grouped into lungs as the recipe's data
    preparation groups them: the Dice on the case's own grid is the one the package records."""
    model = load_package(resolve_package("chest-ct-segmenter"))
    names = [c.name for c in model.metadata.classes]
    root = data_dir / "totalsegmentator"
    lookup = group_lookup(json.loads((root / "labels_total_v2.json").read_text()), names[1:])
    reference = lookup[sitk.GetArrayFromImage(sitk.ReadImage(str(root / "example_seg.nii.gz"))).astype(np.int64)]
    labels = segment(model, load_volume(root / "example_ct_sm.nii.gz"), torch.device("cpu")).labels.array
    measured = segmentation_metrics(labels.astype(np.int64), reference.astype(np.int64), names)["per_segment"]
    recorded = model.metadata.provenance["metrics"]["test_input_grid"]["per_segment"]
    for name in names[1:]:
        assert measured[name]["voxels_prediction"] == recorded[name]["voxels_prediction"], name
        assert abs(measured[name]["dice"] - recorded[name]["dice"]) < 1e-6, name


def test_head_findings_reproduce_their_recorded_volume_scores_through_the_core() -> None:
    """The sample head CT (CT-ICH patient 050, one of the training patients, the same file the
    data preparation writes) through the core's load, preprocessing (2.5D slices included) and
    classify_and_explain: the volume probabilities, by the package's aggregation, are the ones
    the training run recorded for that volume. Its nested-CV numbers come from other networks
    (one per outer fold), so this checks the shipped network and its inference path."""
    model = load_package(resolve_package("head-ct-ich-findings"))
    metadata = model.metadata
    metrics = metadata.provenance["metrics"]
    assert metrics["protocol"].startswith("nested 5-fold cross-validation by patient")
    assert metadata.volume_score == metrics["selected"]["volume_score"]
    recorded = np.asarray(metrics["training_case_scores"]["050.nii.gz"])
    volume = load_volume(HEAD_SAMPLE.path)
    result = classify_and_explain(model, preprocess(volume, metadata.input), "gradcam", torch.device("cpu"))
    np.testing.assert_allclose(result.probabilities, recorded, atol=2e-3)


@pytest.mark.slow
def test_chest_segmenter_reproduces_its_recorded_robustness_and_calls_no_lung_where_there_is_none(data_dir: Path) -> None:
    """The held-out case, the demo chest (the same lung bases with abdomen and pelvis below) and
    another patient's three slices (dcmqi), as scanned, cut at their lungs, at 3 x 3 x 5 mm and
    with low-dose noise, give the Dice the package records
    (lung_robustness); no lung outside the body (1.3 called 84 mL of air lung there) and none
    in the demo chest's abdomen and pelvis (1.4 called 30 mL of bowel gas lung there until a
    stray liver part's voxels, handed to their runner-up, were held to the lungs' max_parts)."""
    from CTExplainTraining.lung_robustness import evaluate, reference_cases, variants

    model = load_package(resolve_package("chest-ct-segmenter"))
    recorded = model.metadata.provenance["metrics"]["robustness"]["cases"]
    cases = {name: (ct, lungs) for name, ct, lungs in reference_cases(data_dir) if name != "lidc-idri-0001"}
    assert sorted(cases) == ["dcmqi-ct3slice", "example_ct", "example_ct_sm"]
    for name, (ct, lungs) in cases.items():
        for variant, variant_ct, masks in variants(ct, lungs):
            measured = evaluate(model, variant_ct, masks)
            assert abs(measured["dice"] - recorded[name][variant]["dice"]) < 1e-6, (name, variant)
            assert measured["lung_voxels_outside_body"] == 0, (name, variant)
            # At most a voxel's partial volume in a slice next to the bases (0.09 mL at 3 x 3 x 5 mm), no gas blob.
            assert measured["predicted_ml_in_slices_without_lung"] < 0.5, (name, variant)


@pytest.fixture(scope="module")
def lidc_nodules(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The nodule manifests exactly as the recipes' data preparation writes them."""
    from CTExplainTraining.datasets.lidc_nodules import prepare

    return prepare(data_dir / "lidc-nodules", tmp_path_factory.mktemp("lidc-nodules"))


def _test_rows(manifest: Path) -> list:
    with open(manifest, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == "test"]


@pytest.mark.parametrize("name, manifest", [("lung-nodule-malignancy", "malignancy"), ("lung-nodule-characteristics", "characteristics")])
def test_nodule_classifiers_reproduce_their_recorded_test_scores_through_the_core(name: str, manifest: str, lidc_nodules: dict) -> None:
    """Every fixed test nodule, its box cut by the core's crop policy around the readers'
    outline (CTExplainLib.points.crop) and classified as at a point: each label's AUC and
    confusion matrix at its recorded threshold are the ones the package's evaluation records
    (nodule_check, which predicted in one batch)."""
    from sklearn.metrics import roc_auc_score

    from CTExplainLib.points.crop import crop_input

    model = load_package(resolve_package(name))
    evaluation = model.metadata.provenance["evaluation"]
    labels = [c.name for c in model.metadata.classes]
    recorded = {labels[0]: evaluation["model"]} if len(labels) == 1 else {k: v["model"] for k, v in evaluation["labels"].items()}
    rows = _test_rows(lidc_nodules[manifest])
    probabilities = np.array([
        classify_and_explain(model, crop_input(load_volume(row["image"]), model.metadata.input, mask=load_volume(row["mask"])).model_input,
                             "gradcam", torch.device("cpu")).probabilities
        for row in rows
    ])
    assert len(rows) == evaluation["test_nodules"]
    for j, label in enumerate(labels):
        truth = np.array([int(row[label if len(labels) > 1 else "malignant"]) for row in rows])
        test = recorded[label]["test"]
        assert abs(roc_auc_score(truth, probabilities[:, j]) - test["auc"]) < 1e-6, label
        called = probabilities[:, j] >= test["threshold"]
        matrix = test["confusion_matrix"]
        assert [int((~called & (truth == 0)).sum()), int((called & (truth == 0)).sum()), int((~called & (truth == 1)).sum()),
                int((called & (truth == 1)).sum())] == [matrix["tn"], matrix["fp"], matrix["fn"], matrix["tp"]], label


def test_covid_consolidation_reproduces_its_recorded_test_scores_through_the_core(data_dir: Path, tmp_path: Path) -> None:
    """Its 10 held-out slices (the data preparation's draw), loaded as ``ctexplain explain
    --spacing 1 1 1`` loads a PNG: the test AUC and accuracy the package records."""
    from sklearn.metrics import roc_auc_score

    from CTExplainTraining.datasets.covid_infection import prepare

    model = load_package(resolve_package("covid-consolidation-2d"))
    recorded = model.metadata.provenance["metrics"]["test"]
    prepare(data_dir / "covid-infection-2d", tmp_path)
    with open(tmp_path / "findings.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    scores = np.array([
        classify_and_explain(model, preprocess(load_volume(row["image"], image_spacing=(1.0, 1.0, 1.0)), model.metadata.input), "gradcam",
                             torch.device("cpu")).probabilities[0]
        for row in rows
    ])
    truth = np.array([int(row["consolidation"]) for row in rows])
    assert len(rows) == recorded["n"]
    assert abs(roc_auc_score(truth, scores) - recorded["auc_macro"]) < 1e-6
    assert float(((scores >= model.metadata.threshold) == truth).mean()) == pytest.approx(recorded["accuracy"])


def test_nodule_segmenter_reproduces_its_recorded_test_dice_through_the_core(lidc_nodules: dict) -> None:
    """Each test nodule outlined at its nodules.csv centre as at a user's point
    (CTExplainLib.points.outline): the Dice against the readers' outlines the package records."""
    from CTExplainTraining.nodule_check import check_segmenter

    package = resolve_package("lung-nodule-segmenter")
    recorded = load_package(package).metadata.provenance["evaluation"]
    measured = check_segmenter(package, lidc_nodules["nodules"])
    assert measured["nodules"] == recorded["nodules"] == 143
    assert measured["dice_mean"] == pytest.approx(recorded["dice_mean"], abs=1e-6)
    assert measured["diameter_error_mm"]["mean_absolute"] == pytest.approx(recorded["diameter_error_mm"]["mean_absolute"], abs=1e-6)


def test_covid_infection_reproduces_its_recorded_training_case_dice_through_the_core(data_dir: Path, tmp_path: Path) -> None:
    """Its cross-validation numbers come from fold networks it does not hold, and no slice is kept
    apart; what its own network can be checked on are the training slices' Dice the training
    code's validation gave it (CTExplainTraining.case_scores): every slice, loaded as
    ``ctexplain explain --spacing 1 1 1`` loads it and segmented by the core, gives the same."""
    import dataclasses

    from CTExplainTraining.config import make_config, read_recipe
    from CTExplainTraining.datasets.covid_infection import prepare
    from CTExplainTraining.run import load_manifest
    from CTExplainTraining.validate import segment_files

    package = resolve_package("covid-infection-2d")
    recorded = load_package(package).metadata.provenance["metrics"]["training_case_dice"]["cases"]
    prepare(data_dir / "covid-infection-2d", tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "CTExplainTraining" / "recipes" / "covid_infection_2d.json"
    config = dataclasses.replace(make_config(read_recipe(recipe)), manifest=str(tmp_path / "manifest.csv"))
    manifest = load_manifest(config)
    assert sorted(Path(e.image).name for e in manifest.examples) == sorted(recorded) and len(recorded) == 50
    for example in manifest.examples:
        measured = segment_files(package, config, manifest.classes, [example], torch.device("cpu"))["dice_mean"]
        assert measured == pytest.approx(recorded[Path(example.image).name], abs=1e-6), example.image


# Entries of a package's metrics that hold no score of their own.
NOT_SCORES = {"protocol", "best_epoch", "folds", "outer_folds", "selections", "selected"}


def unstated_protocols(provenance: dict) -> list:
    """The scores of a package's metrics (and its nested cross-validation) whose protocol it does not state."""
    metrics = provenance.get("metrics", {})
    stated = provenance.get("metrics_protocol", {})
    missing = [f"metrics.{key}" for key, value in metrics.items()
               if key not in NOT_SCORES and value and "protocol" not in metrics and key not in stated
               and not (isinstance(value, dict) and "protocol" in value)]
    nested = provenance.get("nested_cross_validation")
    if nested is not None and not nested.get("protocol"):
        missing.append("nested_cross_validation")
    return missing


def test_every_shipped_package_states_the_protocol_of_each_of_its_numbers() -> None:
    """Each recorded score says how it was obtained (which cases, what chose the model), and a
    package that loses one such statement is caught."""
    from CTExplainLib.models_catalog import SHIPPED_MODELS, read_package_info

    infos = [read_package_info(folder) for folder in sorted(SHIPPED_MODELS.iterdir())]
    trained = [info.path for info in infos if info is not None and not info.untrained]
    assert len(trained) == 8
    for package in trained:
        provenance = load_package(package).metadata.provenance
        assert provenance.get("metrics"), package
        assert unstated_protocols(provenance) == [], package
    planted = json.loads(json.dumps(load_package(resolve_package("lung-nodule-malignancy")).metadata.provenance))
    del planted["metrics_protocol"]["test"]
    assert unstated_protocols(planted) == ["metrics.test"]
