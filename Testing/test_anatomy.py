"""Explanation vs anatomy: body mask on real CT, energy shares on maps built to known answers."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib.anatomy import (
    OUTSIDE_BODY,
    AnatomyStats,
    anatomy_stats,
    body_mask,
    cam_energy_by_segment,
    cam_energy_in_positive_slices,
)
from CTExplainLib.volume import Grid, Volume

LUNG_LABELS = (10, 11, 12, 13, 14)  # TotalSegmentator v2 lung lobes


@pytest.fixture(scope="module")
def real_names(data_dir: Path) -> Dict[int, str]:
    raw = json.loads((data_dir / "totalsegmentator" / "labels_total_v2.json").read_text())
    return {int(k): v for k, v in raw.items()}


@pytest.fixture(scope="module")
def real_body(real_ct: Volume) -> np.ndarray:
    return body_mask(real_ct)


def test_body_mask_on_real_ct(real_ct: Volume, real_seg: np.ndarray, real_body: np.ndarray) -> None:
    assert real_body.shape == real_ct.array.shape and real_body.dtype == bool
    # Air around the patient: the corners of every slice.
    for j, i in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert not real_body[:, j, i].any()
    outside_air = (real_ct.array < -900) & ~real_body
    assert outside_air.sum() > 0.2 * real_body.size
    # The centre of the body: the vertebral bodies and the aorta.
    for label in (30, 31, 52):
        centre = np.round(np.argwhere(real_seg == label).mean(axis=0)).astype(int)
        assert real_body[tuple(centre)]
    # Air inside the body (lungs) must be filled in: it is below the threshold, so only
    # hole filling can put it in the mask.
    lung_air = np.isin(real_seg, LUNG_LABELS) & (real_ct.array < -500)
    assert lung_air.sum() > 1000
    assert real_body[lung_air].all()
    # Every organ TotalSegmentator found lies in the body.
    assert real_body[real_seg > 0].mean() > 0.999


def test_body_mask_warns_on_non_hu_input(real_ct: Volume, caplog: pytest.LogCaptureFixture) -> None:
    windowed = real_ct.with_array(np.clip((real_ct.array + 1000) / 8, 0, 255).astype(np.uint8))
    with caplog.at_level(logging.WARNING, logger="CTExplainLib.anatomy"):
        body_mask(windowed)
    assert "Hounsfield" in caplog.text


def small_labels() -> np.ndarray:
    labels = np.zeros((10, 20, 20), dtype=np.uint8)
    labels[2:8, 2:9, 2:9] = 3
    labels[2:8, 11:18, 11:18] = 5
    return labels


NAMES = {3: "liver", 5: "spleen", 7: "kidney"}


def test_blob_inside_one_segment_gives_it_everything() -> None:
    labels = small_labels()
    heat = np.zeros(labels.shape, np.float32)
    heat[3:6, 4:7, 4:7] = np.linspace(0.1, 1.0, 27).reshape(3, 3, 3)
    shares = cam_energy_by_segment(heat, labels, NAMES)
    assert shares == pytest.approx({"liver": 1.0, "spleen": 0.0, "kidney": 0.0, "background": 0.0})


def test_half_outside_the_body() -> None:
    labels = small_labels()
    body = np.zeros(labels.shape, dtype=bool)
    body[:, :, :10] = True
    heat = np.zeros(labels.shape, np.float32)
    heat[5, 10, 8:12] = 0.5  # columns 8, 9 in the body, 10, 11 outside; label 0 along row 10
    shares = cam_energy_by_segment(heat, labels, NAMES, body)
    assert shares["outside_body"] == pytest.approx(0.5)
    assert shares["background"] == pytest.approx(0.5)
    assert shares["liver"] == 0.0 and shares["spleen"] == 0.0


def test_segment_voxels_count_for_the_segment_even_outside_the_body_mask() -> None:
    labels = small_labels()
    body = np.zeros(labels.shape, dtype=bool)  # a body mask that missed everything
    heat = (labels == 5).astype(np.float32)
    shares = cam_energy_by_segment(heat, labels, NAMES, body)
    assert shares["spleen"] == pytest.approx(1.0) and shares["outside_body"] == 0.0


def test_fractions_sum_to_one_on_real_labels(real_seg: np.ndarray, real_names: Dict[int, str], real_body: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    heat = rng.random(real_seg.shape).astype(np.float32)
    present = {v: real_names[v] for v in np.unique(real_seg) if v != 0}
    with_body = cam_energy_by_segment(heat, real_seg, present, real_body)
    assert sum(with_body.values()) == pytest.approx(1.0)
    assert set(with_body) == set(present.values()) | {"background", "outside_body"}
    # The liver's share equals its share of the (uniform-on-average) map.
    assert with_body["liver"] == pytest.approx(heat[real_seg == 5].sum() / heat.sum())
    without_body = cam_energy_by_segment(heat, real_seg, present)
    assert sum(without_body.values()) == pytest.approx(1.0)
    assert without_body["background"] == pytest.approx(with_body["background"] + with_body["outside_body"])
    # Labels without a name are pooled rather than lost.
    partial = cam_energy_by_segment(heat, real_seg, {5: "liver"}, real_body)
    assert sum(partial.values()) == pytest.approx(1.0)
    assert partial["unlisted_labels"] > 0


def test_all_zero_map_gives_zeros_not_nan() -> None:
    labels = small_labels()
    shares = cam_energy_by_segment(np.zeros(labels.shape), labels, NAMES, np.ones(labels.shape, bool))
    assert all(value == 0.0 for value in shares.values())
    assert cam_energy_in_positive_slices(np.zeros(labels.shape), [True] * 10) == 0.0


def test_bad_inputs_are_refused() -> None:
    labels = small_labels()
    heat = np.ones(labels.shape)
    with pytest.raises(ValueError, match="reserved"):
        cam_energy_by_segment(heat, labels, {3: "background"})
    with pytest.raises(ValueError, match="shape"):
        cam_energy_by_segment(heat[:5], labels, NAMES)
    bad = heat.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cam_energy_by_segment(bad, labels, NAMES)
    with pytest.raises(ValueError, match="slice labels"):
        cam_energy_in_positive_slices(heat, [True] * 9)


def test_energy_in_positive_slices() -> None:
    heat = np.zeros((10, 4, 4), np.float32)
    heat[2] = 1.0
    heat[3] = 3.0
    positive = [k == 3 for k in range(10)]
    assert cam_energy_in_positive_slices(heat, positive) == pytest.approx(0.75)
    assert cam_energy_in_positive_slices(np.ones((10, 4, 4)), [k < 5 for k in range(10)]) == pytest.approx(0.5)


def test_anatomy_stats_collects_and_serialises() -> None:
    labels = small_labels()
    grid = Grid((20, 20, 10), (0.5, 0.5, 2.0), (-5.0, 10.0, 100.0))
    heat = np.zeros(labels.shape, np.float32)
    heat[4, 14, 13] = 1.0  # in the spleen
    heat[4, 14, 12] = 0.5
    stats = anatomy_stats("Splenic laceration", Volume(heat, grid), labels, NAMES, np.ones(labels.shape, bool), [k == 4 for k in range(10)])
    assert isinstance(stats, AnatomyStats)
    assert stats.peak_index_kji == (4, 14, 13)
    assert stats.peak_lps == pytest.approx((-5.0 + 13 * 0.5, 10.0 + 14 * 0.5, 100.0 + 4 * 2.0))
    assert stats.peak_segment == "spleen" and stats.dominant_segment() == "spleen"
    assert stats.energy_in_positive_slices == pytest.approx(1.0)
    assert 4 in stats.key_slices
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["finding"] == "Splenic laceration"
    assert data["energy_by_segment"]["spleen"] == pytest.approx(1.0)
    assert data["peak_index_kji"] == [4, 14, 13] and data["dominant_segment"] == "spleen"

    empty = anatomy_stats("nothing", Volume(np.zeros(labels.shape, np.float32), grid), labels, NAMES)
    assert empty.peak_index_kji is None and empty.dominant_segment() is None
    json.dumps(empty.to_dict())


@pytest.mark.slow
def test_body_mask_on_shrunk_grid_matches_full_resolution(data_dir, monkeypatch) -> None:
    """LIDC's 0.7 mm pixels are shrunk 2x in-plane for the mask; the outline must not move."""
    from CTExplainLib import anatomy
    from CTExplainLib.loading import load_volume

    ct = load_volume(data_dir / "lidc-idri-0001")
    shrunk = anatomy.body_mask(ct)
    monkeypatch.setattr(anatomy, "BODY_MASK_SPACING_MM", 0.0)
    full = anatomy.body_mask(ct)
    assert shrunk.shape == full.shape == ct.array.shape
    disagreement = np.count_nonzero(shrunk != full) / full.sum()
    assert disagreement < 0.01, f"{disagreement:.2%} of the body differs"
    # Lung air in the middle slice (well inside the body, below -900 HU) is in the mask.
    middle = ct.array.shape[0] // 2
    lung = (ct.array[middle] < -900) & full[middle]
    assert lung.sum() > 1000 and shrunk[middle][lung].mean() > 0.99


def test_regions_from_the_coarse_body_mask_give_the_full_mask_statistics(real_ct: Volume, real_seg: np.ndarray, real_names: Dict[int, str]) -> None:
    """Regions.for_ct keeps the body mask on its shrunk grid and expands it slab by slab; the
    statistics must be those of the full-size mask (here on a CT resampled to 0.7 mm pixels,
    so that the mask is shrunk 2x in-plane)."""
    from CTExplainLib.anatomy import Regions
    from CTExplainLib.resample import resample_array

    fine = Grid((522, 432, 30), (0.7, 0.7, 3.0), real_ct.grid.origin, real_ct.grid.direction)
    ct = Volume(resample_array(real_ct.array, real_ct.grid, fine, "linear", -1024.0), fine)
    labels = resample_array(real_seg.astype(np.uint8), real_ct.grid, fine, "nearest", 0, sitk.sitkUInt8)
    rng = np.random.default_rng(1)
    heat = np.clip(rng.normal(size=fine.shape), 0, None).astype(np.float32)
    heat[:, :40, :] = 2.0  # a band in front of the body: energy outside it
    heat[12, 200, 300] = 9.0
    expected = anatomy_stats("finding", ct.with_array(heat), labels, real_names, body_mask(ct))
    regions = Regions.for_ct(ct, labels)
    got = anatomy_stats("finding", ct.with_array(heat), names=real_names, regions=regions)
    assert got.energy_by_segment.keys() == expected.energy_by_segment.keys()
    for name, share in expected.energy_by_segment.items():
        assert got.energy_by_segment[name] == pytest.approx(share, abs=1e-12), name
    assert expected.energy_by_segment[OUTSIDE_BODY] > 0.05
    assert (got.peak_index_kji, got.peak_segment, got.key_slices) == (expected.peak_index_kji, expected.peak_segment, expected.key_slices)
