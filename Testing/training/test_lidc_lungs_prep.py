"""LIDC-IDRI-0001's upper chest as lung training data: which slices, which voxels."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib.errors import InputError
from CTExplainLib.models_catalog import SHIPPED_MODELS
from CTExplainTraining.datasets.lidc_lungs import slices_above_the_bases, with_vessels
from CTExplainTraining.datasets.lidc_lungs import prepare as add_lidc_lungs
from CTExplainTraining.datasets.totalsegmentator import prepare as prepare_totalsegmentator


def test_slices_start_where_the_lungs_are_full_on_the_head_side() -> None:
    lungs = np.zeros((10, 4, 4), dtype=bool)
    areas = [0, 1, 4, 8, 16, 16, 15, 10, 3, 0]  # feet → head
    for k, area in enumerate(areas):
        lungs[k].flat[:area] = True
    assert slices_above_the_bases(lungs, superior_is_up=True) == slice(4, 10)
    # The same volume stored head first: the bases are at the end.
    assert slices_above_the_bases(lungs[::-1], superior_is_up=False) == slice(0, 6)
    with pytest.raises(ValueError):
        slices_above_the_bases(np.zeros((3, 4, 4), dtype=bool), True)


def test_vessel_holes_are_filled_but_not_the_mediastinum() -> None:
    lungs = np.zeros((1, 60, 60), dtype=bool)
    lungs[0, 5:55, 5:55] = True
    lungs[0, 10:13, 10:13] = False  # a vessel: 9 mm² at 1 mm pixels
    lungs[0, 20:50, 20:50] = False  # a 900 mm² hole: the mediastinum between touching lungs
    filled = with_vessels(lungs, (1.0, 1.0))
    assert filled[0, 10:13, 10:13].all()
    assert not filled[0, 20:50, 20:50].any()
    assert (filled | ~lungs).all()  # nothing of the lungs is taken away


def test_lidc_upper_chest_is_added_for_training_and_the_lung_case_held_out(data_dir: Path, tmp_path: Path) -> None:
    manifest = prepare_totalsegmentator(data_dir / "totalsegmentator", tmp_path / "ts", ["lungs", "liver"])
    combined = add_lidc_lungs(data_dir / "lidc-idri-0001", manifest, tmp_path / "out", "example_ct_sm")
    with open(combined, newline="") as handle:
        rows = {row["patient"]: row for row in csv.DictReader(handle)}
    assert {p: r["split"] for p, r in rows.items()} == {"example_ct_sm": "test", "example_ct_dicom": "train", "lidc-idri-0001": "train"}
    ct = sitk.ReadImage(rows["lidc-idri-0001"]["image"])
    mask = sitk.ReadImage(rows["lidc-idri-0001"]["mask"])
    assert ct.GetSize() == mask.GetSize() and ct.GetOrigin() == mask.GetOrigin() and ct.GetSize()[:2] == (512, 512)
    assert 20 < ct.GetSize()[2] < 133
    lungs = sitk.GetArrayFromImage(mask)
    litres = (lungs == 1).sum() * np.prod(mask.GetSpacing()) / 1e6
    assert 1.5 < litres < 6.0, litres
    # Each kept slice holds lungs on both sides of the body's middle.
    assert all(s[:, :256].any() and s[:, 256:].any() for s in lungs[:-10])
    with pytest.raises(Exception, match="no patient"):
        add_lidc_lungs(data_dir / "lidc-idri-0001", manifest, tmp_path / "bad", "nobody")


@pytest.mark.slow
def test_whole_chest_with_the_liver_from_a_segmenter(data_dir: Path, tmp_path: Path) -> None:
    """With --liver-from the lung bases are kept, and the liver under them is labelled (not
    background), as one organ that never takes a lung voxel; --coarse-mm adds the same chest
    at 3 mm, blurred, with the same organs at the same size."""
    manifest = prepare_totalsegmentator(data_dir / "totalsegmentator", tmp_path / "ts", ["lungs", "liver"])
    combined = add_lidc_lungs(data_dir / "lidc-idri-0001", manifest, tmp_path / "out", "example_ct_sm",
                              liver_from=SHIPPED_MODELS / "chest-ct-segmenter", coarse_mm=[3.0])
    with open(combined, newline="") as handle:
        fine, coarse = [r for r in csv.DictReader(handle) if r["patient"] == "lidc-idri-0001"]
    mask = sitk.ReadImage(fine["mask"])
    labels = sitk.GetArrayFromImage(mask)
    assert labels.shape[0] == 133 and set(np.unique(labels)) == {0, 1, 2}
    voxel_ml = np.prod(mask.GetSpacing()) / 1e3
    assert 200 < (labels == 2).sum() * voxel_ml < 2500
    assert sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((labels == 2).astype(np.uint8)))).max() == 1
    # The liver lies below the lungs' widest slice, and the lung bases are kept beneath it.
    lung_area = (labels == 1).reshape(133, -1).sum(axis=1)
    liver_slices = np.flatnonzero((labels == 2).any(axis=(1, 2)))
    assert liver_slices.max() < np.argmax(lung_area)
    assert lung_area[liver_slices].sum() > 0

    coarse_ct, coarse_mask = sitk.ReadImage(coarse["image"]), sitk.ReadImage(coarse["mask"])
    assert coarse_ct.GetSpacing() == coarse_mask.GetSpacing() == (3.0, 3.0, 3.0)
    assert coarse_ct.GetOrigin() == coarse_mask.GetOrigin() == mask.GetOrigin()
    coarse_labels = sitk.GetArrayFromImage(coarse_mask)
    for label in (1, 2):
        fine_ml, coarse_ml = (labels == label).sum() * voxel_ml, (coarse_labels == label).sum() * 27.0 / 1e3
        assert abs(coarse_ml - fine_ml) < 0.05 * fine_ml, (label, fine_ml, coarse_ml)
    # Blurred: the 3 mm image is smoother than the fine one sampled at the same points.
    fine_ct = sitk.ReadImage(fine["image"])
    sampled = sitk.Resample(fine_ct, coarse_ct, sitk.Transform(), sitk.sitkNearestNeighbor, -1024.0)
    roughness = [np.abs(np.diff(sitk.GetArrayFromImage(i).astype(float), axis=2)).mean() for i in (sampled, coarse_ct)]
    assert roughness[1] < 0.8 * roughness[0], roughness
    with pytest.raises(InputError, match="no 'liver'"):
        add_lidc_lungs(data_dir / "lidc-idri-0001", manifest, tmp_path / "bad", "example_ct_sm",
                       liver_from=SHIPPED_MODELS / "covid-infection-2d")
