"""Probabilities and stacked CAMs from classify_and_explain, for 3D and 2D-slice models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from CTExplainLib.classify import HEAT_MAP_STEPS, classify_and_explain, volume_score
from CTExplainLib.demo_models import LUNG, SOFT_TISSUE, untrained_package
from CTExplainLib.model_package import InputSpec, load_package
from CTExplainLib.preprocess import preprocess
from CTExplainLib.resample import resample_array
from CTExplainLib.volume import Volume


def test_volume_score_rules() -> None:
    slices = np.array([[0.1, 0.9], [0.7, 0.2], [0.4, 0.3], [0.2, 0.8]])
    np.testing.assert_allclose(volume_score(slices, "max", 3), [0.7, 0.9])
    np.testing.assert_allclose(volume_score(slices, "topk_mean", 2), [(0.7 + 0.4) / 2, (0.9 + 0.8) / 2])
    np.testing.assert_allclose(volume_score(slices[:1], "topk_mean", 3), slices[0])
    np.testing.assert_allclose(volume_score(slices, "noisy_or", 3), 1.0 - np.prod(1.0 - slices, axis=0))
    # Thirty slices at 0.1 each: noisy-OR calls the volume likely positive where max says 0.1.
    assert volume_score(np.full((30, 1), 0.1), "noisy_or", 3)[0] == pytest.approx(1.0 - 0.9 ** 30)
    with pytest.raises(ValueError, match="unknown volume score rule 'mean'"):
        volume_score(slices, "mean", 3)


def test_2d_model_runs_slice_by_slice(real_ct: Volume, tmp_path: Path) -> None:
    spec = InputSpec(2, [SOFT_TISSUE, LUNG], spacing=(4.0, 4.0), size=(64, 64), orientation="LPS")
    model = load_package(untrained_package(tmp_path / "m2d", "slices", "multilabel", "CompactCNN", ["a", "b"], spec, seed=3))
    model_input = preprocess(real_ct, spec)
    result = classify_and_explain(model, model_input, "gradcam", torch.device("cpu"))
    slices = model_input.tensor.shape[1]
    assert slices == real_ct.grid.size[2]  # one model slice per CT slice
    assert result.slice_probabilities.shape == (slices, 2)
    np.testing.assert_allclose(result.probabilities, result.slice_probabilities.max(axis=0))
    with torch.no_grad():
        alone = torch.sigmoid(model.network(model_input.slices()[7:8])).numpy()[0]
    np.testing.assert_allclose(result.slice_probabilities[7], alone, atol=1e-5)
    assert result.maps.shape[:2] == (2, slices)
    assert result.feature_grid.size[2] == slices and result.feature_grid.spacing[2] == pytest.approx(real_ct.grid.spacing[2])
    assert result.maps.max() == pytest.approx(1.0)  # scaled over the whole stack, not per slice
    per_slice_max = result.maps[0].reshape(slices, -1).max(axis=1)
    assert (per_slice_max < 0.999).any()


def test_heat_maps_on_the_input_grid_are_rounded_to_steps(real_ct: Volume, tmp_path: Path) -> None:
    spec = InputSpec(3, [SOFT_TISSUE], spacing=(6.0, 6.0, 6.0), size=(32, 32, 16), orientation="LPS")
    model = load_package(untrained_package(tmp_path / "m", "m", "multilabel", "CompactCNN", ["a", "b"], spec, seed=5))
    result = classify_and_explain(model, preprocess(real_ct, spec), "gradcam", torch.device("cpu"))
    exact = resample_array(result.maps[0], result.feature_grid, real_ct.grid, "linear", 0.0)
    heat = result.heat_map(0, real_ct.grid)
    assert heat.dtype == np.float32 and heat.shape == real_ct.array.shape
    steps = heat.astype(np.float64) * HEAT_MAP_STEPS
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # multiples of 1/HEAT_MAP_STEPS
    assert np.abs(heat - exact).max() <= 0.5 / HEAT_MAP_STEPS + 1e-6
    assert len(np.unique(heat)) > 100  # a map, not a handful of levels
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and np.all(heat[exact == 0] == 0)


def test_multiclass_uses_softmax(real_ct: Volume, tmp_path: Path) -> None:
    spec = InputSpec(3, [SOFT_TISSUE], spacing=(6.0, 6.0, 6.0), size=(32, 32, 16), orientation="LPS")
    model = load_package(untrained_package(tmp_path / "mc", "mc", "multiclass", "CompactCNN", ["a", "b", "c", "d"], spec))
    result = classify_and_explain(model, preprocess(real_ct, spec), "gradcampp", torch.device("cpu"))
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.maps.shape[0] == 4 and result.method == "gradcampp"


def test_segmenter_is_not_a_classifier(real_ct: Volume) -> None:
    from CTExplainLib.models_catalog import DEMO_SEGMENTER, resolve_package

    model = load_package(resolve_package(DEMO_SEGMENTER))
    with pytest.raises(ValueError, match="segmentation model"):
        classify_and_explain(model, preprocess(real_ct, model.metadata.input), "gradcam", torch.device("cpu"))
