"""The loaded grid's IJK-to-RAS equals slicer-api.md section 3, computed here from the raw headers.

NIfTI: nibabel's affine is already voxel (i, j, k) to RAS, so ITK's LPS reading, converted
by negating rows 0 and 1, must reproduce it. DICOM: the matrix is built from pydicom's
ImageOrientationPatient, PixelSpacing and ImagePositionPatient, independently of the loader.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from CTExplainLib.loading import load_volume
from CTExplainLib.volume import Grid

NIFTI_FILES = ["example_ct.nii.gz", "example_ct_sm.nii.gz", "example_seg.nii.gz", "example_seg_dicom.nii.gz"]
DICOM_SERIES = ["totalsegmentator/example_ct_dicom", "slicer-cthead"]
F = np.diag([-1.0, -1.0, 1.0])


def dicom_ijk_to_ras(folder: Path) -> np.ndarray:
    """slicer-api.md section 3 from the DICOM headers: [F.D.diag(s), F.o] with D = [row, column, normal]."""
    headers: List[pydicom.Dataset] = [
        pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(folder.iterdir()) if pydicom.misc.is_dicom(str(p))
    ]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    row, column = iop[:3], iop[3:]
    normal = np.cross(row, column)
    positions = np.array([np.array(h.ImagePositionPatient, dtype=float) for h in headers])
    z = positions @ normal
    order = np.argsort(z)
    slice_spacing = (z[order[-1]] - z[order[0]]) / (len(z) - 1)
    row_spacing, column_spacing = (float(v) for v in headers[0].PixelSpacing)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = row * column_spacing  # i runs along a row: columns are column_spacing apart
    ijk_to_lps[:3, 1] = column * row_spacing
    ijk_to_lps[:3, 2] = normal * slice_spacing
    ijk_to_lps[:3, 3] = positions[order[0]]
    ras = ijk_to_lps.copy()
    ras[:3, :] = F @ ijk_to_lps[:3, :]
    return ras


@pytest.mark.parametrize("name", NIFTI_FILES)
def test_nifti_matches_nibabel_affine(data_dir: Path, name: str) -> None:
    path = data_dir / "totalsegmentator" / name
    volume = load_volume(path)
    reference = nib.load(str(path))
    np.testing.assert_allclose(volume.ijk_to_ras(), reference.affine, atol=1e-4)
    # nibabel indexes (i, j, k): the same voxels, transposed.
    np.testing.assert_array_equal(volume.array, np.asanyarray(reference.dataobj).transpose(2, 1, 0))


@pytest.mark.parametrize("series", DICOM_SERIES)
def test_dicom_matches_header_formula(data_dir: Path, series: str) -> None:
    folder = data_dir / series
    np.testing.assert_allclose(load_volume(folder).ijk_to_ras(), dicom_ijk_to_ras(folder), atol=1e-9)


def test_literal_numbers(data_dir: Path) -> None:
    dicom = load_volume(data_dir / "totalsegmentator" / "example_ct_dicom").ijk_to_ras()
    expected = np.array(
        [
            [-0.9765625, 0.0, 0.0, 249.51171875],
            [0.0, -0.9765625, 0.0, 437.51171875],
            [0.0, 0.0, 2.0, -804.5],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_array_equal(dicom, expected)
    head = load_volume(data_dir / "slicer-cthead").ijk_to_ras()
    np.testing.assert_array_equal(head, np.array([[-3.2, 0, 0, 0], [0, -3.2, 0, 0], [0, 0, 1.5, 0], [0, 0, 0, 1.0]]))
    nifti = load_volume(data_dir / "totalsegmentator" / "example_ct.nii.gz").ijk_to_ras()
    np.testing.assert_allclose(nifti[:3, 3], [-177.95632934570312, 11.319000244140625, 94.3017578125])
    np.testing.assert_array_equal(nifti[:3, :3], np.diag([3.0, 3.0, 3.0]))
    # The DICOM-derived mask is stored left-handed (j runs posterior to anterior): kept as is.
    mask = load_volume(data_dir / "totalsegmentator" / "example_seg_dicom.nii.gz").ijk_to_ras()
    np.testing.assert_allclose(mask[:3, :3], np.diag([-0.9765625, 0.9765625, 2.0]), atol=1e-7)
    assert np.linalg.det(mask[:3, :3]) < 0


def _assert_round_trip(grid: Grid, atol: float = 1e-12) -> None:
    """Oblique axes lose at most a rounding error in the column norms; aligned ones nothing."""
    again = Grid.from_ijk_to_ras(grid.size, grid.ijk_to_ras())
    assert again.size == grid.size
    np.testing.assert_allclose(again.spacing, grid.spacing, rtol=0, atol=atol)
    np.testing.assert_allclose(again.origin, grid.origin, rtol=0, atol=atol)
    np.testing.assert_allclose(again.direction, grid.direction, rtol=0, atol=atol)
    np.testing.assert_allclose(again.ijk_to_ras(), grid.ijk_to_ras(), rtol=0, atol=atol)


@pytest.mark.parametrize(
    "source",
    ["totalsegmentator/example_ct_dicom", "slicer-cthead", "totalsegmentator/example_ct.nii.gz", "totalsegmentator/example_seg_dicom.nii.gz"],
)
def test_loaded_grids_round_trip(data_dir: Path, source: str) -> None:
    grid = load_volume(data_dir / source).grid
    aligned = np.count_nonzero(np.round(grid.direction, 12)) == 3
    _assert_round_trip(grid, atol=0.0 if aligned else 1e-12)


@pytest.mark.parametrize("left_handed", [False, True])
def test_oblique_grid_round_trips(left_handed: bool) -> None:
    direction = np.reshape(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.5, 0.8).GetMatrix(), (3, 3))
    if left_handed:
        direction[:, 2] *= -1
    grid = Grid((40, 30, 20), (0.7, 0.8, 2.5), (-120.5, 33.25, 410.0), direction)
    assert grid.is_left_handed() == left_handed
    _assert_round_trip(grid)
    # A voxel's RAS position is the LPS position with x and y negated.
    ijk = np.array([3.0, 7.0, 11.0, 1.0])
    lps = grid.ijk_to_lps() @ ijk
    np.testing.assert_allclose(grid.ijk_to_ras() @ ijk, [-lps[0], -lps[1], lps[2], 1.0], atol=1e-12)
