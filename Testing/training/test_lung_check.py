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
