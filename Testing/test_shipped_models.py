"""The shipped packages, run by the core as a user's CT would be, give the numbers their
metadata records: no skew between the training run that measured them and inference."""
from __future__ import annotations

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
def test_chest_segmenter_reproduces_its_recorded_robustness_and_calls_no_lung_outside_the_body(data_dir: Path) -> None:
    """The held-out case cut at its lungs and at 3 x 3 x 5 mm gives the Dice the package records
    (lung_robustness), and the demo chest gets no lung outside its body (1.3 called 84 mL of
    bowel gas lung there)."""
    from CTExplainLib.anatomy import body_mask
    from CTExplainLib.models_catalog import CHEST_SAMPLE
    from CTExplainTraining.lung_robustness import evaluate, lung_label, reference_cases, variants

    model = load_package(resolve_package("chest-ct-segmenter"))
    recorded = model.metadata.provenance["metrics"]["robustness"]["cases"]["example_ct_sm"]
    name, ct, lungs = next(reference_cases(data_dir))
    assert name == "example_ct_sm"
    for variant, variant_ct, masks in variants(ct, lungs):
        measured = evaluate(model, variant_ct, masks)
        assert abs(measured["dice"] - recorded[variant]["dice"]) < 1e-6, variant
        assert measured["lung_voxels_outside_body"] == 0, variant
    demo = load_volume(CHEST_SAMPLE.path)
    called = segment(model, demo, torch.device("cpu")).labels.array == lung_label(model)
    assert not (called & ~body_mask(demo)).any()
