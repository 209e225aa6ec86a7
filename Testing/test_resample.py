"""Slab-by-slab resampling gives exactly what one SimpleITK Resample over the grid gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib import resample
from CTExplainLib.volume import Grid


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_slabs_equal_one_resample(interpolation: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"))
    source = Grid.of_image(image)
    rotation = np.reshape(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3).GetMatrix(), (3, 3))
    target = Grid((90, 70, 23), (3.3, 2.9, 3.7), source.index_to_point((10, 8, 3)), rotation)
    monkeypatch.setattr(resample, "SLAB_VOXELS", 90 * 70 * 4)  # 4 slices a slab: 6 slabs, the last partial
    assert len(list(resample.slabs(target))) == 6
    pieces = resample.resample_array(sitk.GetArrayFromImage(image), source, target, interpolation, -1024.0)
    whole = sitk.Resample(image, target.reference_image(), sitk.Transform(), resample.INTERPOLATORS[interpolation], -1024.0, sitk.sitkFloat32)
    np.testing.assert_array_equal(pieces, sitk.GetArrayFromImage(whole))
