"""The shipped lung nodule models at a point of LIDC-IDRI-0001's full series.

The segmenter outlines the nodule at the ``nodules.csv`` centre; the classifier's box is cut
around that outline. The probability at the point of the full series must agree within 0.02
with the one from the nodule's crop file at that point.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import load_package
from CTExplainLib.models_catalog import SHIPPED_MODELS
from CTExplainLib.points.crop import PointError, crop_input
from CTExplainLib.points.outline import nodule_size, outline_nodule
from CTExplainLib.resample import resample_array
from CTExplainLib.volume import Grid, Volume

CENTRE_0001 = (56.20840547, 86.34341278, -115.8675792)  # nodules.csv, LIDC-IDRI-0001 nodule 1 (LPS mm)
DIAMETER_0001 = 23.35064438
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models():
    return load_package(SHIPPED_MODELS / "lung-nodule-segmenter"), load_package(SHIPPED_MODELS / "lung-nodule-malignancy")


def test_size_of_a_sphere() -> None:
    grid = Grid((41, 41, 21), (0.5, 0.5, 1.0), (-10.0, -10.0, -10.0))
    k, j, i = np.meshgrid(np.arange(21) - 10.0, (np.arange(41) - 20) * 0.5, (np.arange(41) - 20) * 0.5, indexing="ij")
    sphere = Volume(((i ** 2 + j ** 2 + k ** 2) <= 25.0).astype(np.uint8), grid)  # radius 5 mm
    size = nodule_size(sphere)
    assert size.diameter_mm == pytest.approx(10.5)  # centres 10 mm apart, plus a pixel
    assert size.volume_ml == pytest.approx(4 / 3 * np.pi * 0.125, rel=0.03)
    assert size.slices == 11
    assert size.equivalent_diameter_mm == pytest.approx(10.0, rel=0.01)


@pytest.mark.slow
def test_point_on_the_full_series_gives_the_training_probability(models, data_dir: Path) -> None:
    segmenter, classifier = models
    series = load_volume(data_dir / "lidc-idri-0001")
    crop = load_volume(data_dir / "lidc-nodules" / "image" / "LIDC-IDRI-0001_R_1.nii.gz")
    readers = load_volume(data_dir / "lidc-nodules" / "nodule_mask" / "LIDC-IDRI-0001_R_1.nii.gz")
    outline = outline_nodule(segmenter, series, CENTRE_0001, CPU)
    # The outline against the readers' on the crop's grid.
    predicted = resample_array(outline.array.astype(np.float32), outline.grid, readers.grid, "nearest", 0.0) > 0.5
    truth = readers.array > 0
    dice = 2.0 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice > 0.75
    assert abs(nodule_size(outline).equivalent_diameter_mm - DIAMETER_0001) < 3.0

    def probability(volume: Volume, point, mask: Volume) -> float:
        tensor = crop_input(volume, classifier.metadata.input, point, mask).model_input.batch()
        with torch.no_grad():
            return float(torch.sigmoid(classifier.network(tensor.float()))[0, 0])

    # The same outline gives the same input, hence the same probability, from either source.
    trained_on = probability(crop, None, readers)
    assert probability(series, CENTRE_0001, readers) == pytest.approx(trained_on, abs=1e-6)
    # At the point, as a user runs it: the segmenter outlines the nodule in the crop file and
    # in the full series (where it sees the slices beyond the crop too), and the classifier's
    # probabilities agree within 0.02. (Against the readers' outline they may differ more: 0.935
    # vs 0.987 with segmenter 1.0, 0.983 vs 0.987 with 1.1; that is the outline's doing, not the crop's.)
    in_crop = probability(crop, CENTRE_0001, outline_nodule(segmenter, crop, CENTRE_0001, CPU))
    at_point = probability(series, CENTRE_0001, outline)
    assert abs(at_point - in_crop) < 0.02
    assert min(at_point, trained_on) > classifier.metadata.threshold


@pytest.mark.slow
def test_a_point_off_any_nodule_is_refused(models, data_dir: Path) -> None:
    segmenter, _ = models
    series = load_volume(data_dir / "lidc-idri-0001")
    in_air = series.grid.index_to_point((5, 5, 60))  # the corner of the field of view, outside the body
    with pytest.raises(PointError, match=r"point \(.*\) LPS: no nodule"):
        outline_nodule(segmenter, series, in_air, CPU)
