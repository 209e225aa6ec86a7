"""Dropping labels from a multilabel package (labels that did not validate) leaves the others exact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from CTExplainLib.classify import classify_and_explain
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import load_package
from CTExplainLib.models_catalog import HEAD_SAMPLE, resolve_package
from CTExplainLib.preprocess import preprocess
from CTExplainTraining.export import keep_labels


def test_kept_labels_give_the_same_probabilities_and_maps_in_their_new_order(tmp_path: Path) -> None:
    source = resolve_package("head-ct-ich-findings")
    kept = load_package(keep_labels(source, ["epidural", "any_hemorrhage"], tmp_path / "kept", "a test"))
    original = load_package(source)
    assert kept.metadata.class_names == ["epidural", "any_hemorrhage"]
    assert kept.metadata.provenance["labels_kept"]["dropped"] == ["intraparenchymal", "skull_fracture"]
    volume = load_volume(HEAD_SAMPLE.path)
    model_input = preprocess(volume, original.metadata.input)
    before = classify_and_explain(original, model_input, "gradcam", torch.device("cpu"))
    after = classify_and_explain(kept, model_input, "gradcam", torch.device("cpu"))
    rows = [original.metadata.class_names.index(name) for name in kept.metadata.class_names]
    np.testing.assert_allclose(after.probabilities, before.probabilities[rows], atol=1e-6)
    np.testing.assert_allclose(after.maps, before.maps[rows], atol=1e-5)
    assert not np.allclose(after.probabilities, before.probabilities[:2])  # the rows were picked, not the first ones


def test_keeping_an_unknown_label_or_from_a_binary_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="among any_hemorrhage"):
        keep_labels(resolve_package("head-ct-ich-findings"), ["spiculated"], tmp_path / "a", "")
    with pytest.raises(ValueError, match="multilabel"):
        keep_labels(resolve_package("lung-nodule-malignancy"), ["malignant"], tmp_path / "b", "")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
