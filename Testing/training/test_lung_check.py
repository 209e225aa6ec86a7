"""The threshold lung yardstick used on LIDC-IDRI-0001, which has no reference masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib.loading import load_volume
from CTExplainLib.volume import Volume
from CTExplainLib.writing import write_label_map
from CTExplainTraining.lung_check import lung_agreement, threshold_lungs


@pytest.fixture(scope="module")
def lidc(data_dir: Path) -> Volume:
    return load_volume(data_dir / "lidc-idri-0001")


def test_threshold_lungs_of_a_real_chest(lidc: Volume) -> None:
    lungs = threshold_lungs(lidc)
    litres = lungs.sum() * np.prod(lidc.grid.spacing) / 1e6
    assert 2.5 < litres < 7.0, litres
    # Both lungs: air on each side of the body's middle, in similar amounts.
    columns = np.nonzero(lungs.any(axis=(0, 1)))[0]
    middle = (columns.min() + columns.max()) / 2
    left, right = lungs[..., : int(middle)].sum(), lungs[..., int(middle) :].sum()
    assert 0.5 < left / right < 2.0


def test_agreement_is_one_for_the_yardstick_and_drops_when_shifted(lidc: Volume, data_dir: Path, tmp_path: Path) -> None:
    lungs = threshold_lungs(lidc).astype(np.uint8)
    write_label_map(lidc.with_array(lungs), tmp_path / "same.nrrd")
    shifted = np.roll(lungs, 40, axis=1)  # 40 rows (~28 mm) towards the back
    write_label_map(lidc.with_array(shifted), tmp_path / "shifted.nrrd")
    source = data_dir / "lidc-idri-0001"
    assert lung_agreement(source, tmp_path / "same.nrrd", 1)["dice_vs_threshold_lungs"] == pytest.approx(1.0)
    assert lung_agreement(source, tmp_path / "shifted.nrrd", 1)["dice_vs_threshold_lungs"] < 0.8


def test_labels_on_another_grid_are_refused(data_dir: Path, tmp_path: Path) -> None:
    other = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    sitk.WriteImage(other, str(tmp_path / "other.nrrd"))
    with pytest.raises(SystemExit, match="not the grid"):
        lung_agreement(data_dir / "lidc-idri-0001", tmp_path / "other.nrrd", 1)


def test_picture_shows_the_outlines_with_the_head_up(lidc: Volume) -> None:
    """The overview's last panel is coronal: the lungs' outline lies above the abdomen's."""
    from CTExplainTraining.lung_check import LUNG_OUTLINE, overview

    lungs = threshold_lungs(lidc)
    labels = lungs.astype(np.uint8)
    feet = slice(0, 10) if lidc.grid.direction[2, 2] > 0 else slice(-10, None)
    abdomen = np.zeros_like(lungs)
    abdomen[feet] = (lidc.array[feet] > 0) & (lidc.array[feet] < 200)
    labels[abdomen] = 2
    picture = overview(lidc, labels, lungs, 1)
    orange = np.all(picture == np.round(np.asarray(LUNG_OUTLINE) * 255).astype(np.uint8), axis=2)
    other = np.any(picture != picture[..., :1], axis=2) & ~orange  # coloured, not orange, not gray
    coronal = slice(3 * picture.shape[1] // 4 + 20, None)  # the panels are about equally wide
    assert orange[:, : picture.shape[1] // 4].any() and orange[:, coronal].any()
    lung_rows, abdomen_rows = np.nonzero(orange[:, coronal])[0], np.nonzero(other[:, coronal])[0]
    assert abdomen_rows.size and lung_rows.mean() < abdomen_rows.mean()
