"""The shipped packages, run by the core as a user's CT would be, give the numbers their
metadata records: no skew between the training run that measured them and inference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from CTExplainLib.classify import probabilities_from_logits
from CTExplainLib.loading import load_volume
from CTExplainLib.models_catalog import resolve_package
from CTExplainLib.model_package import load_package
from CTExplainLib.preprocess import preprocess


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
