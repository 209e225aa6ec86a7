"""Chests as scanners cut them: the field of view cut at the lungs, thick coarse voxels, and the
scoring of a segmenter's lungs (Dice, lung called outside the body) on each."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from CTExplainLib.volume import Grid, Volume
from CTExplainTraining.datasets.lidc_lungs import coarser, cropped_to_lungs, spacing_argument
from CTExplainTraining.lung_robustness import BODY, LUNGS, score


def _phantom() -> "tuple[Volume, Volume]":
    """A 'body' of soft tissue with two air 'lungs', on an oblique, anisotropic grid."""
    ct = np.full((6, 40, 50), -1000, dtype=np.int16)
    labels = np.zeros(ct.shape, dtype=np.uint8)
    ct[:, 5:35, 5:45] = 40
    labels[:, 5:35, 5:45] = BODY
    for i0 in (10, 28):
        ct[1:5, 12:28, i0 : i0 + 12] = -850
        labels[1:5, 12:28, i0 : i0 + 12] = LUNGS
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    grid = Grid((50, 40, 6), (0.7, 0.8, 2.5), (-100.0, 30.0, 7.0), direction)
    return Volume(ct, grid), Volume(labels, grid)


def test_a_field_of_view_cut_at_the_lungs_keeps_every_voxel_where_it_was() -> None:
    ct, labels = _phantom()
    cut_ct, cut_labels = cropped_to_lungs(ct, labels, LUNGS)
    lungs = cut_labels.array == LUNGS
    # The lungs touch all four in-plane sides and no lung is lost.
    assert lungs[:, 0].any() and lungs[:, -1].any() and lungs[:, :, 0].any() and lungs[:, :, -1].any()
    assert lungs.sum() == (labels.array == LUNGS).sum()
    # Voxel (0, 0, k) of the cut is voxel (i0, j0, k) of the original, at the same point in space.
    assert cut_ct.array[2, 0, 0] == ct.array[2, 12, 10]
    assert np.allclose(cut_ct.grid.index_to_point((0, 0, 2)), ct.grid.index_to_point((10, 12, 2)))
    assert np.allclose(cut_labels.grid.direction, ct.grid.direction)


def test_margins_grow_the_cut_in_millimetres_and_stop_at_the_image() -> None:
    ct, labels = _phantom()
    cut_ct, _ = cropped_to_lungs(ct, labels, LUNGS, margins_mm=(1.4, 100.0, 0.0, 1.6))
    # i low: 1.4 mm = 2 pixels of 0.7 mm; i high: beyond the image, so to its edge; j high: 2 pixels of 0.8 mm.
    assert cut_ct.grid.size == (50 - 8, 16 + 2, 6)
    assert np.allclose(cut_ct.grid.index_to_point((0, 0, 0)), ct.grid.index_to_point((8, 12, 0)))


def test_thick_copies_take_per_axis_spacing() -> None:
    ct, labels = _phantom()
    thick_ct, thick_labels = coarser(ct, labels, (3.0, 3.0, 5.0))
    assert thick_ct.grid.spacing == pytest.approx((3.0, 3.0, 5.0))
    assert thick_ct.grid.size == (int((50 - 1) * 0.7 / 3) + 1, int((40 - 1) * 0.8 / 3) + 1, int(5 * 2.5 / 5) + 1)
    assert np.allclose(thick_ct.grid.origin, ct.grid.origin)
    assert (thick_labels.array == LUNGS).any()
    assert spacing_argument("3x3x5") == (3.0, 3.0, 5.0) and spacing_argument("2") == (2.0,)
    with pytest.raises(argparse.ArgumentTypeError):
        spacing_argument("3x5")


def test_lung_called_outside_the_body_is_counted() -> None:
    _, labels = _phantom()
    perfect = labels.array == LUNGS
    assert score(perfect, labels)["dice"] == pytest.approx(1.0)
    assert score(perfect, labels)["lung_voxels_outside_body"] == 0
    planted = perfect.copy()
    planted[0, 0:2, 0:3] = True  # six voxels of outside air called lung
    result = score(planted, labels)
    assert result["lung_voxels_outside_body"] == 6
    assert result["dice"] < 1.0


def test_a_slab_cut_at_its_lungs_is_part_of_the_chest_in_place() -> None:
    """--slab-copies: a random run of slices that holds lung, then the field of view cut at that run's lungs."""
    from CTExplainTraining.datasets.lidc_lungs import random_slab, slab

    ct, labels = _phantom()
    random = np.random.default_rng(0)
    for _ in range(20):
        start, stop = random_slab(labels, LUNGS, (5.0, 7.5), random)
        assert 0 <= start < stop <= 6 and stop - start in (2, 3)  # 5-7.5 mm of 2.5 mm slices
        assert (labels.array[start:stop] == LUNGS).any()
    part_ct, part_labels = slab(ct, labels, 3, 6)
    assert part_ct.grid.size == (50, 40, 3)
    np.testing.assert_array_equal(part_labels.array, labels.array[3:6])
    assert np.allclose(part_ct.grid.index_to_point((4, 5, 0)), ct.grid.index_to_point((4, 5, 3)))
    cut_ct, cut_labels = cropped_to_lungs(part_ct, part_labels, LUNGS)
    assert cut_labels.array[:, 0].any() or cut_labels.array[:, -1].any()
    with pytest.raises(ValueError, match="no lungs"):
        random_slab(Volume(np.zeros_like(labels.array), labels.grid), LUNGS, (5.0, 7.5), random)


def test_low_dose_noise_is_added_in_place_and_repeatably() -> None:
    from CTExplainTraining.lung_robustness import NOISE_HU, with_noise

    ct, _ = _phantom()
    noisy = with_noise(ct)
    assert noisy.grid == ct.grid and noisy.array.dtype == ct.array.dtype
    body = ct.array == 40  # soft tissue, far from the clip at -1024
    assert abs(float((noisy.array[body] - 40).std()) - NOISE_HU) < 0.05 * NOISE_HU
    np.testing.assert_array_equal(with_noise(ct).array, noisy.array)  # a fixed seed
