"""The crop policy of point models: the box cut at a point of a full CT is the training crop.

LIDC-IDRI-0001's nodule crop (``lidc-nodules``) is an exact crop of the full series in
``lidc-idri-0001``; at the centre ``nodules.csv`` gives, the network input built from the full
series must equal the one built from the crop file, and planted geometry faults must not.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from CTExplainLib.errors import ModelPackageError
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import CropSpec, parse_input_spec
from CTExplainLib.points.crop import PointError, crop_input, nodule_part
from CTExplainLib.volume import LPS_TO_RAS, Grid, Volume

# nodules.csv, LIDC-IDRI-0001 nodule 1: coordX, coordY, coordZ (LPS mm)
CENTRE_0001 = (56.20840547, 86.34341278, -115.8675792)
SPEC = {
    "spatial_dims": 3,
    "channels": [{"name": "lung", "level": -300, "width": 1400}, {"name": "soft", "level": 40, "width": 400}],
    "spacing": [0.75, 0.75, 1.5],
    "size": [32, 32, 16],
    "crop": {"mode": "nodule", "in_plane_mm": 24},
}


@pytest.fixture(scope="module")
def nodule_0001(data_dir: Path):
    folder = data_dir / "lidc-nodules"
    return load_volume(folder / "image" / "LIDC-IDRI-0001_R_1.nii.gz"), load_volume(folder / "nodule_mask" / "LIDC-IDRI-0001_R_1.nii.gz")


@pytest.fixture(scope="module")
def series_0001(data_dir: Path) -> Volume:
    return load_volume(data_dir / "lidc-idri-0001")


def spec(**crop):
    return parse_input_spec({**SPEC, "crop": {**SPEC["crop"], **crop}}, Path("pkg"))


def test_crop_spec_is_validated():
    assert spec().crop == CropSpec("nodule", 24.0, None)
    point = parse_input_spec({**SPEC, "spatial_dims": 2, "spacing": [0.75, 0.75], "size": [40, 40],
                              "crop": {"mode": "point", "in_plane_mm": 30, "through_plane_mm": 40}}, Path("pkg"))
    assert point.crop == CropSpec("point", 30.0, 40.0)
    bad = [
        ({"crop": {"mode": "sphere", "in_plane_mm": 24}}, "mode"),
        ({"crop": {"mode": "nodule", "in_plane_mm": -3}}, "in_plane_mm"),
        ({"crop": {"mode": "nodule", "in_plane_mm": 24, "slices": 3}}, "unknown key"),
        ({"crop": {"mode": "point", "in_plane_mm": 24}}, "through_plane_mm"),
        ({"crop": {"mode": "nodule", "in_plane_mm": 24, "through_plane_mm": 5}}, "own slices"),
        ({"crop": {"mode": "nodule", "in_plane_mm": 24, "outline_channel": "yes"}}, "true or false"),
        ({"crop": {"mode": "point", "in_plane_mm": 24, "through_plane_mm": 5, "outline_channel": True}}, "needs mode 'nodule'"),
        ({"size": None}, "size and spacing"),
        ({"resize": "fit"}, "exclude each other"),
        ({"spatial_dims": 2, "spacing": [1, 1], "size": [32, 32]}, "3D networks"),
    ]
    for change, words in bad:
        with pytest.raises(ModelPackageError, match=words):
            parse_input_spec({**SPEC, **change}, Path("pkg"))


@pytest.mark.slow
def test_full_series_at_the_point_gives_the_training_crop(nodule_0001, series_0001):
    crop, mask = nodule_0001
    from_crop = crop_input(crop, spec(), None, mask)  # training: the crop and its outline
    from_series = crop_input(series_0001, spec(), CENTRE_0001, mask)  # inference: the point of the full CT
    assert from_series.model_input.grid.same_as(from_crop.model_input.grid, 1e-9)
    difference = (from_series.model_input.tensor - from_crop.model_input.tensor).abs().max()
    assert float(difference) < 1e-5
    # The nodule's own slices only (9 of the crop's 11: 22.5 mm), and air beyond them in the
    # model grid (16 slices of 1.5 mm).
    assert from_series.box.size[2] == 9 and crop.grid.size[2] == 11
    slice_max = from_series.model_input.tensor[0].reshape(16, -1).max(dim=1).values
    assert float(slice_max[0]) == 0.0 and float(slice_max[8]) > 0.5
    # The centre is the outline's centroid, within a millimetre of the table's centre.
    assert np.linalg.norm(from_series.centre - np.asarray(CENTRE_0001)) < 1.0


@pytest.mark.slow
def test_planted_geometry_faults_change_the_input(nodule_0001, series_0001):
    crop, mask = nodule_0001
    reference = crop_input(series_0001, spec(), CENTRE_0001, mask).model_input.tensor

    def shifted(volume: Volume, offset) -> Volume:
        grid = volume.grid
        return replace(volume, grid=Grid(grid.size, grid.spacing, tuple(np.add(grid.origin, offset)), grid.direction))

    # Off by one slice: the crop file placed one slice higher than its outline (and than the
    # series it was cut from).
    one_slice = (0.0, 0.0, crop.grid.spacing[2])
    wrong = crop_input(shifted(crop, one_slice), spec(), None, mask).model_input.tensor
    assert float((wrong - reference).abs().max()) > 0.3
    # LPS/RAS mix-up: the outline's geometry read as RAS (x and y negated) lies elsewhere.
    ras = Grid(crop.grid.size, crop.grid.spacing, tuple(LPS_TO_RAS @ np.asarray(crop.grid.origin)), crop.grid.direction)
    mixed = crop_input(series_0001, spec(), LPS_TO_RAS @ np.asarray(CENTRE_0001), replace(mask, grid=ras)).model_input.tensor
    assert float((mixed - reference).abs().mean()) > 0.1
    # ... and a box around the point itself (mode "point") at the RAS numbers is another place.
    around = parse_input_spec({**SPEC, "crop": {"mode": "point", "in_plane_mm": 24, "through_plane_mm": 24}}, Path("pkg"))
    at_lps = crop_input(series_0001, around, CENTRE_0001).model_input.tensor
    at_ras = crop_input(series_0001, around, LPS_TO_RAS @ np.asarray(CENTRE_0001)).model_input.tensor
    assert float((at_lps - at_ras).abs().mean()) > 0.1


def test_nodule_part_is_the_one_at_the_point():
    grid = Grid((20, 20, 5), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    array = np.zeros(grid.shape, dtype=np.uint8)
    array[1:3, 2:5, 2:5] = 1  # small part near the origin
    array[1:4, 10:18, 10:18] = 1  # larger part
    mask = Volume(array, grid)
    assert nodule_part(mask, None).sum() == 3 * 8 * 8  # no point: the largest
    assert nodule_part(mask, (3.0, 3.0, 2.0)).sum() == 2 * 3 * 3  # the part holding the point
    assert nodule_part(mask, (6.5, 3.0, 2.0)).sum() == 2 * 3 * 3  # else the nearest one
    with pytest.raises(PointError, match="empty"):
        nodule_part(Volume(np.zeros(grid.shape, np.uint8), grid), (1.0, 1.0, 1.0))
