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


def _flipped(grid: Grid, axes: tuple) -> Grid:
    """The same voxels indexed backwards along ``axes``: origin at the far corner, direction negated."""
    direction = grid.direction.copy()
    far = [grid.size[a] - 1 if a in axes else 0 for a in range(3)]
    for a in axes:
        direction[:, a] *= -1.0
    return Grid(grid.size, grid.spacing, grid.index_to_point(far), direction)


AXIS_PARALLEL_TARGETS = {
    # name: (size, spacing, first voxel in source index units, flipped axes of the target)
    "finer, partly outside": ((150, 130, 41), (0.9, 1.1, 2.2), (-12.3, 5.7, -4.4), ()),
    "coarser, RAS order": ((60, 50, 20), (4.1, 3.3, 5.5), (3.2, 2.9, 1.1), (0, 1)),
    "one voxel thick, z flipped": ((100, 90, 1), (1.0, 1.0, 1.0), (10.0, 10.0, 12.5), (2,)),
}


@pytest.mark.parametrize("target_name", sorted(AXIS_PARALLEL_TARGETS))
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_axis_parallel_path_equals_simpleitk(target_name: str, interpolation: str, data_dir: Path) -> None:
    """The per-axis interpolation used for axis-parallel grids must be SimpleITK's, voxel for voxel."""
    image = sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"))
    source = Grid.of_image(image)
    size, spacing, first, flipped = AXIS_PARALLEL_TARGETS[target_name]
    target = _flipped(Grid(size, spacing, source.index_to_point(first), source.direction), flipped)
    assert resample.SeparablePlan.of(source, target) is not None
    if interpolation == "linear":
        array, output_type, default = sitk.GetArrayFromImage(image), sitk.sitkFloat32, -1024.0
    else:  # label maps: integers through nearest neighbour
        array, output_type, default = (sitk.GetArrayFromImage(image) > 0).astype(np.uint8) * 7, sitk.sitkUInt8, 0
    fast = resample.resample_array(array, source, target, interpolation, default, output_type)
    reference = sitk.Resample(resample.image_on_grid(array, source), target.reference_image(), sitk.Transform(),
                              resample.INTERPOLATORS[interpolation], default, output_type)
    np.testing.assert_array_equal(fast, sitk.GetArrayFromImage(reference))
    assert fast.dtype == sitk.GetArrayViewFromImage(reference).dtype


def test_oblique_grids_are_left_to_simpleitk(real_ct_grid: Grid) -> None:
    rotation = np.reshape(sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, 0.3).GetMatrix(), (3, 3))
    oblique = Grid((40, 40, 10), (2.0, 2.0, 3.0), real_ct_grid.origin, rotation)
    assert resample.SeparablePlan.of(real_ct_grid, oblique) is None
    assert resample.SeparablePlan.of(oblique, real_ct_grid) is None


@pytest.fixture
def real_ct_grid(data_dir: Path) -> Grid:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"))
    reader.ReadImageInformation()
    return Grid(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), np.reshape(reader.GetDirection(), (3, 3)))


@pytest.mark.parametrize("flipped", [(), (0, 1)])
def test_label_mapping_equals_the_simpleitk_path(flipped: tuple, real_ct_grid: Grid) -> None:
    """The arg-max of segment probabilities on the input grid: the axis-parallel path and the
    slab-by-slab SimpleITK path give the same labels (including ties and points outside)."""
    from CTExplainLib.segment import _labels_by_slabs, labels_on_grid

    rng = np.random.default_rng(0)
    model_grid = _flipped(Grid((48, 40, 14), (7.1, 6.9, 6.3), real_ct_grid.index_to_point((5.5, 3.25, 2.0)), real_ct_grid.direction), flipped)
    logits = rng.normal(size=(4,) + model_grid.shape).astype(np.float32)
    logits[:, :, :5, :5] = 0.0  # equal probabilities: the first segment must win in both
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    assert resample.SeparablePlan.of(model_grid, real_ct_grid) is not None
    fast = labels_on_grid(probabilities, model_grid, real_ct_grid)
    reference = np.zeros(real_ct_grid.shape, dtype=np.uint8)
    _labels_by_slabs(probabilities, model_grid, real_ct_grid, reference)
    np.testing.assert_array_equal(fast, reference)
    assert len(np.unique(fast)) == 4


@pytest.mark.parametrize("flipped", [(), (0, 2)])
def test_label_mapping_of_a_real_segmentation_equals_the_simpleitk_path(flipped: tuple, data_dir: Path) -> None:
    """Real probabilities, where most target voxels lie among model-grid voxels of one clear
    winner (taken as they are) and a few near boundaries are interpolated: the labels are
    SimpleITK's all the same, here on a finer, partly flipped grid."""
    import torch

    from CTExplainLib.loading import load_volume
    from CTExplainLib.model_package import load_package
    from CTExplainLib.models_catalog import resolve_package
    from CTExplainLib.segment import _labels_by_slabs, _model_grid_probabilities, _no_stage, _settled_winners, labels_on_grid

    ct = load_volume(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz")
    probabilities, model_grid = _model_grid_probabilities(load_package(resolve_package("chest-ct-segmenter")), ct, torch.device("cpu"), _no_stage, [])
    target = _flipped(Grid((130, 110, 50), (2.3, 2.1, 1.9), ct.grid.index_to_point((6.5, 4.25, 3.0)), ct.grid.direction), flipped)
    assert resample.SeparablePlan.of(model_grid, target) is not None
    unsettled = float((_settled_winners(probabilities, np.uint8) == 255).mean())
    assert 0.0 < unsettled < 0.2  # both ways of labelling are used
    fast = labels_on_grid(probabilities, model_grid, target)
    reference = np.zeros(target.shape, dtype=np.uint8)
    _labels_by_slabs(probabilities, model_grid, target, reference)
    np.testing.assert_array_equal(fast, reference)
    assert set(np.unique(fast)) == {0, 1, 2}
