"""The model grid and the network input, checked in physical space on a real CT."""
from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk
import torch

from CTExplainLib.model_package import ChannelSpec, InputSpec
from CTExplainLib.preprocess import feature_grid, model_grid, orientation_direction, preprocess, slices_with_context
from CTExplainLib.volume import Grid, Volume

SOFT = ChannelSpec("soft", 40.0, 400.0)
LUNG = ChannelSpec("lung", -600.0, 1500.0)


def centre(grid: Grid) -> np.ndarray:
    return grid.index_to_point((np.asarray(grid.size) - 1) / 2.0)


def test_model_grid_is_centred_and_oriented(real_ct: Volume) -> None:
    spec = InputSpec(3, [SOFT], spacing=(2.0, 2.5, 4.0), size=(40, 30, 20), orientation="RAS")
    grid = model_grid(real_ct.grid, spec)
    assert grid.size == (40, 30, 20) and grid.spacing == (2.0, 2.5, 4.0)
    np.testing.assert_allclose(grid.direction, np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(centre(grid), centre(real_ct.grid), atol=1e-6)


def test_uncropped_grid_covers_the_input(real_ct: Volume) -> None:
    own_orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(real_ct.grid.direction.ravel()))
    assert own_orientation == "RAS"
    spec = InputSpec(3, [SOFT], spacing=None, size=(16, 16, 16), orientation=own_orientation)
    grid = model_grid(real_ct.grid, spec, crop=False)
    # Same orientation and native spacing: the grid is the input's own grid.
    assert grid.same_as(real_ct.grid, tolerance=1e-4)


def test_oblique_input_native_spacing_follows_the_closest_axis() -> None:
    rotated = np.reshape(sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.radians(80)).GetMatrix(), (3, 3))
    grid = Grid((50, 60, 10), (0.5, 0.9, 3.0), (0, 0, 0), rotated)
    spec = InputSpec(2, [SOFT], spacing=None, size=None, orientation="LPS")
    result = model_grid(grid, spec)
    # Rotated by 80° about S: the input's j axis is closest to L, its i axis to P.
    assert result.spacing == pytest.approx((0.9, 0.5, 3.0))
    np.testing.assert_allclose(centre(result), centre(grid), atol=1e-6)


def test_network_input_samples_the_ct_at_the_same_points(real_ct: Volume) -> None:
    spec = InputSpec(3, [SOFT, LUNG], spacing=(3.5, 3.5, 3.5), size=(32, 32, 24), orientation="PIR")
    model_input = preprocess(real_ct, spec)
    assert tuple(model_input.tensor.shape) == (2, 24, 32, 32)
    assert float(model_input.tensor.min()) >= 0.0 and float(model_input.tensor.max()) <= 1.0
    image = real_ct.to_sitk()
    interpolator = sitk.sitkLinear
    rng = np.random.default_rng(0)
    for _ in range(20):
        k, j, i = (int(rng.integers(4, n - 4)) for n in model_input.grid.shape)
        point = model_input.grid.index_to_point((i, j, k))
        if not np.all((image.TransformPhysicalPointToContinuousIndex(tuple(point)) > np.zeros(3))):
            continue
        hu = image.EvaluateAtPhysicalPoint(tuple(point), interpolator)
        expected = np.clip((hu - (SOFT.level - SOFT.width / 2)) / SOFT.width, 0, 1)
        assert float(model_input.tensor[0, k, j, i]) == pytest.approx(expected, abs=1e-4)


def test_outside_the_ct_is_air(real_ct: Volume) -> None:
    spec = InputSpec(3, [SOFT], spacing=(3.0, 3.0, 3.0), size=(200, 200, 200), orientation="LPS")
    model_input = preprocess(real_ct, spec)
    assert float(model_input.tensor[0, 0, 0, 0]) == 0.0  # padded corner: -1024 HU under a soft-tissue window


def test_feature_voxel_centre_is_its_block_centre() -> None:
    grid = Grid((32, 24, 16), (0.7, 0.8, 2.5), (10.0, -5.0, 3.0), orientation_direction("RAI"))
    features = feature_grid(grid, (8, 6, 4))
    block = [grid.index_to_point((i, j, k)) for i in range(4) for j in range(4) for k in range(4)]
    np.testing.assert_allclose(features.index_to_point((0, 0, 0)), np.mean(block, axis=0), atol=1e-9)
    assert features.spacing == pytest.approx((2.8, 3.2, 10.0))


def test_display_images_are_scaled_not_windowed() -> None:
    grid = Grid((8, 8, 4), (0.5, 0.5, 5.0), (0, 0, 0))
    array = np.full(grid.shape, 255, dtype=np.uint8)
    volume = Volume(array, grid, metadata={"intensity": "display"})
    model_input = preprocess(volume, InputSpec(3, [SOFT, LUNG], None, None, "LPS"))
    assert float(model_input.tensor.min()) == pytest.approx(1.0)
    assert model_input.warnings and "display" in model_input.warnings[0]


def test_fit_scales_the_whole_image_into_the_size(data_dir) -> None:
    """Screenshots of any size: the whole picture fits the network input, aspect ratio kept."""
    from CTExplainLib.loading import load_volume

    path = next(iter(sorted((data_dir / "chest-ct-4class" / "test" / "adenocarcinoma").iterdir())))
    volume = load_volume(path, image_spacing=(1.0, 1.0, 1.0))
    rows, columns = volume.array.shape[1:]
    volume = volume.with_array(np.full_like(volume.array, 200))  # a bright frame shows the extent
    spec = InputSpec(2, [ChannelSpec("display", 127.5, 255.0)], size=(64, 64), intensity="display", resize="fit")
    tensor = preprocess(volume, spec).tensor[0, 0].numpy()
    covered_rows = int((tensor > 0.5).any(axis=1).sum())
    covered_columns = int((tensor > 0.5).any(axis=0).sum())
    longest = max(rows, columns)
    assert max(covered_rows, covered_columns) == 64
    assert abs(covered_rows - 64 * rows / longest) <= 1.5 and abs(covered_columns - 64 * columns / longest) <= 1.5
    cropped = preprocess(volume, InputSpec(2, spec.channels, size=(64, 64), intensity="display")).tensor[0, 0].numpy()
    assert (cropped > 0.5).all()  # the crop policy would have cut out a 64-pixel window instead


def test_image_normalisation_removes_brightness_and_contrast_per_slice(data_dir) -> None:
    """With ``normalise: image`` a slice and a brighter, flatter copy of it give one input."""
    from CTExplainLib.loading import load_volume

    path = next(iter(sorted((data_dir / "chest-ct-4class" / "train" / "normal").iterdir())))
    slice_ = load_volume(path, image_spacing=(1.0, 1.0, 1.0)).array[0].astype(np.float32)
    grid = Grid((slice_.shape[1], slice_.shape[0], 2), (1.0, 1.0, 1.0), (0, 0, 0))
    volume = Volume(np.stack([slice_, 0.6 * slice_ + 40.0]), grid, metadata={"intensity": "display"})
    display = [ChannelSpec("display", 127.5, 255.0)]
    tensor = preprocess(volume, InputSpec(2, display, intensity="display", normalise="image")).tensor.numpy()
    np.testing.assert_allclose(tensor[0, 0], tensor[0, 1], atol=1e-4)
    assert abs(float(tensor[0, 1].mean())) < 1e-4 and float(tensor[0, 1].std()) == pytest.approx(1.0, abs=1e-3)
    plain = preprocess(volume, InputSpec(2, display, intensity="display")).tensor.numpy()
    assert np.abs(plain[0, 0] - plain[0, 1]).max() > 0.1  # without it the two slices differ


def _display_slice(data_dir, split: str, label: str) -> np.ndarray:
    from CTExplainLib.loading import load_volume

    path = next(iter(sorted((data_dir / "chest-ct-4class" / split / label).iterdir())))
    return load_volume(path, image_spacing=(1.0, 1.0, 1.0)).array[0].astype(np.float32)


def _display_volume(*slices: np.ndarray) -> Volume:
    rows, columns = slices[0].shape
    return Volume(np.stack(slices), Grid((columns, rows, len(slices)), (1.0, 1.0, 1.0), (0, 0, 0)), metadata={"intensity": "display"})


def test_fit_body_frames_the_body_whatever_the_margin(data_dir) -> None:
    """The chest screenshots of one source show the body with wide black margins, of another
    with none: ``fit_body`` gives the network the same picture for both, ``fit`` does not."""
    slice_ = _display_slice(data_dir, "train", "adenocarcinoma")
    margined = np.pad(slice_, ((60, 90), (120, 40)))  # black, off-centre
    display = [ChannelSpec("display", 127.5, 255.0)]

    def network_input(image: np.ndarray, resize: str) -> np.ndarray:
        spec = InputSpec(2, display, size=(96, 96), intensity="display", resize=resize)
        return preprocess(_display_volume(image), spec).tensor[0, 0].numpy()

    assert np.abs(network_input(slice_, "fit_body") - network_input(margined, "fit_body")).mean() < 0.01
    assert np.abs(network_input(slice_, "fit") - network_input(margined, "fit")).mean() > 0.1


def test_body_box_of_a_ct_holds_the_body_and_keeps_the_grid(real_ct: Volume) -> None:
    from CTExplainLib.anatomy import body_mask
    from CTExplainLib.preprocess import body_box

    box = body_box(real_ct, display_input=False)
    body = body_mask(real_ct)
    j, i = np.flatnonzero(body.any(axis=(0, 2))), np.flatnonzero(body.any(axis=(0, 1)))
    start = np.rint(real_ct.grid.point_to_index(box.origin)).astype(int)
    assert start[2] == 0 and box.size[2] == real_ct.grid.size[2] and box.spacing == real_ct.grid.spacing
    # The box starts at or before the body and ends at or after it, on the input's own voxels.
    assert start[0] <= i[0] and start[1] <= j[0]
    assert start[0] + box.size[0] > i[-1] and start[1] + box.size[1] > j[-1]
    assert box.size[0] < real_ct.grid.size[0] or box.size[1] < real_ct.grid.size[1]  # air around it is cut off


def test_body_box_of_sub_millimetre_slices_is_the_full_resolution_box_within_an_averaged_pixel(data_dir) -> None:
    """On 0.7 mm slices the box is found on pixels averaged to about 1.5 mm: its edges move by
    less than one such pixel from those found pixel by pixel (the skin's partial pixels,
    averaged with the air, may fall out)."""
    from dataclasses import replace

    from CTExplainLib.loading import load_volume
    from CTExplainLib.preprocess import body_box

    ct = load_volume(data_dir / "lidc-idri-0001")
    every_8th = ct.array[::8].copy()  # slices 20 mm apart: the box's extent, in less time
    ct = replace(ct, array=every_8th, grid=replace(ct.grid, size=(*ct.grid.size[:2], every_8th.shape[0])))
    assert ct.grid.spacing[0] < 0.75  # averaged 2 x 2
    coarse = body_box(ct, display_input=False)
    as_if_1_5_mm = replace(ct, grid=replace(ct.grid, spacing=(1.5, 1.5, ct.grid.spacing[2])))  # no averaging
    fine = body_box(as_if_1_5_mm, display_input=False)

    def edges(box, grid) -> np.ndarray:
        start = np.rint(grid.point_to_index(box.origin)).astype(int)[:2]
        return np.concatenate([start, start + np.asarray(box.size[:2])])

    coarse_edges, fine_edges = edges(coarse, ct.grid), edges(fine, as_if_1_5_mm.grid)
    assert np.all(np.abs(coarse_edges - fine_edges) < 2)
    assert coarse.size[1] < ct.grid.size[1]  # the air above and below the patient is cut off


def test_histogram_normalisation_undoes_a_contrast_curve(data_dir) -> None:
    """Screenshots exported with another window or gamma: equalised, a slice and its re-curved
    copy give one input, where per-image standardisation does not."""
    slice_ = _display_slice(data_dir, "train", "normal")
    recurved = 255.0 * (slice_ / 255.0) ** 0.5  # monotone: the same ranks, another curve
    volume = _display_volume(slice_, recurved)
    display = [ChannelSpec("display", 127.5, 255.0)]

    def difference(normalise: str) -> float:
        tensor = preprocess(volume, InputSpec(2, display, intensity="display", normalise=normalise)).tensor.numpy()
        return float(np.abs(tensor[0, 0] - tensor[0, 1]).mean())

    assert difference("histogram") < 0.01
    assert difference("image") > 0.05


def test_body_only_blanks_a_table_under_the_patient(data_dir) -> None:
    """The chest screenshots' test split shows the table under the patient, which Grad-CAM
    showed a classifier using as a shortcut: with ``body_only`` it is gone, the body is not."""
    slice_ = np.pad(_display_slice(data_dir, "train", "adenocarcinoma"), ((0, 40), (0, 0)))
    rows = slice_.shape[0]
    slice_[rows - 25 : rows - 15, 20:-20] = 180.0  # a table, apart from the body by black air
    display = [ChannelSpec("display", 127.5, 255.0)]

    def network_input(body_only: bool) -> np.ndarray:
        spec = InputSpec(2, display, intensity="display", body_only=body_only)
        return preprocess(_display_volume(slice_), spec).tensor[0, 0].numpy()

    plain, body = network_input(False), network_input(True)
    assert plain[rows - 25 : rows - 15, 20:-20].min() > 0.6 and body[rows - 25 : rows - 15].max() == 0.0
    inside = slice_[: rows - 40] > 60  # the body's bright tissue is kept as it was
    np.testing.assert_array_equal(body[: rows - 40][inside], plain[: rows - 40][inside])


def test_bodies_of_many_slices_at_once_are_each_slices_own(real_ct: Volume) -> None:
    """Labelling slices together must not let a region of one slice reach into the next: a
    large region in one slice above a small one in the next leaves each its own body."""
    from CTExplainLib.preprocess import _slice_bodies, slice_body

    stack = np.full((3, 40, 50), -1000.0, dtype=np.float32)
    stack[0, 5:35, 5:45] = 40.0  # slice 0: one large body
    stack[1, 5:35, 5:20] = 40.0  # slice 1: a smaller region under part of it ...
    stack[1, 5:35, 30:48] = 40.0  # ... and its larger body beside it
    stack[2] = real_ct.array[15, :40, :50]
    together = _slice_bodies(stack, display_input=False, filled=True)
    for k in range(3):
        np.testing.assert_array_equal(together[k], slice_body(stack[k], display_input=False))
    assert together[1, 10, 35] and not together[1, 10, 10]
    real = real_ct.array[10:16]
    np.testing.assert_array_equal(_slice_bodies(real, False, True), np.stack([slice_body(s, False) for s in real]))


@pytest.mark.parametrize("low, high", [(-160.0, 240.0), (-1350.0, 150.0), (0.0, 255.0), (-20.0, 100.0)])
def test_windows_are_monais_scale_intensity_range_to_the_last_bit(real_ct: Volume, low: float, high: float) -> None:
    from monai.transforms import ScaleIntensityRange

    from CTExplainLib.windowing import window_to_unit

    values = real_ct.array.astype(np.float32)
    expected = np.asarray(ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(values))
    windowed = window_to_unit(values, low, high, np.empty_like(values))
    np.testing.assert_array_equal(windowed, expected)
    assert 0.0 < windowed.mean() < 1.0  # the window cuts through the CT's values


def test_slices_with_context_stack_neighbours_as_channels(real_ct: Volume) -> None:
    """2.5D: slice k's channels are those of k-1, k, k+1 (the ends repeated); context 0 is the slices."""
    spec = InputSpec(2, [ChannelSpec("a", 40, 400), ChannelSpec("b", -600, 1500)], spacing=(6.0, 6.0), size=(48, 48), slice_context=1)
    model_input = preprocess(real_ct, spec)
    tensor = model_input.tensor
    depth = tensor.shape[1]
    batch = model_input.slices()
    assert batch.shape == (depth, 6, 48, 48) and spec.network_channels == 6
    for k in (0, 7, depth - 1):
        below, above = max(k - 1, 0), min(k + 1, depth - 1)
        expected = torch.cat([tensor[:, below], tensor[:, k], tensor[:, above]])
        assert torch.equal(batch[k], expected)
    assert torch.equal(slices_with_context(tensor, 3, 9, 0), tensor[:, 3:9].permute(1, 0, 2, 3))
    assert torch.equal(model_input.slices(5, 8), batch[5:8])
