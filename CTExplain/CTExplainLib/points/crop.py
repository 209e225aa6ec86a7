"""The box a point model sees: one rule for the training crops and for a point of a full CT.

LIDC's nodule crops span about 30 mm in-plane and only the slices the nodule itself spans,
with nothing above or below it. A network trained on them must be shown the same kind of
box at a point of a full CT, so training and inference both build their input here
(:func:`crop_input`), from the model package's ``input.crop``:

1. Mode "nodule": the nodule is the connected part of its mask nearest the point (in
   training the radiologists' outline, at inference the segmenter's), and the box is
   centred on its centroid (the mean LPS position of its voxels). Mode "point": the box is
   centred on the point itself.
2. The box is made of the source's own voxels: in-plane (its i and j axes) those whose centres
   lie within ``in_plane_mm / 2`` of the centre; through-plane (k) the slices the nodule
   spans (mode "nodule") or the slices within ``through_plane_mm / 2`` of the point.
3. That box alone is resampled (linear) onto the model grid: the package's size, spacing and
   orientation, centred on the centre. Model voxels beyond the box are air.
4. With ``outline_channel``, the nodule's outline resampled (linear) onto the same grid is
   one more channel.

Because the box is the source's own voxels, a crop file that holds the whole box (a crop
of the same series, as LIDC's are) yields the same network input as the full CT it was cut
from, to rounding. A crop narrower than the box in-plane yields air where the full CT has
tissue: 8% of the LIDC crops are narrower than 24 mm around their nodule's centroid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import CTExplainError
from ..model_package import CropSpec, InputSpec
from ..preprocess import AIR_HU, ModelInput, channel_arrays, normalise_images, orientation_direction
from ..resample import resample_array
from ..volume import Grid, Volume

# Voxel centres this close (in voxels) to the box's edge count as inside: rounding noise
# between a crop's and its full series' positions never moves a voxel in or out.
EDGE_TOLERANCE = 1e-6


class PointError(CTExplainError):
    """A point cannot be used: the message names the point (LPS mm) and the problem."""

    def __init__(self, point: Optional[Sequence[float]], problem: str) -> None:
        where = "point" if point is None else "point ({:.1f}, {:.1f}, {:.1f}) LPS".format(*[float(v) for v in point])
        self.problem = problem
        super().__init__(f"{where}: {problem}")


@dataclass
class PointInput:
    """A network input cut around a point, with what it was cut from."""

    model_input: ModelInput
    centre: np.ndarray  # LPS mm: the nodule's centroid (mode "nodule") or the point
    box: Grid  # the source's voxels that were kept
    nodule: Optional[np.ndarray] = None  # the nodule's voxels on the mask's grid (mode "nodule")


def mask_parts(mask: Volume) -> np.ndarray:
    """Connected parts (26-neighbourhood) of a mask's nonzero voxels, labelled 1, 2, … (k, j, i)."""
    image = sitk.GetImageFromArray((np.asarray(mask.array) > 0).astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True))


def nodule_part(mask: Volume, point: Optional[Sequence[float]]) -> np.ndarray:
    """The connected part of ``mask`` that holds ``point`` or, if none does, the one with the
    voxel nearest to it; with no point, the largest part. Boolean, on the mask's grid."""
    labels = mask_parts(mask)
    if not labels.any():
        raise PointError(point, "no nodule outlined there (the mask is empty)")
    if point is None:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        return labels == int(np.argmax(sizes))
    index = np.rint(mask.grid.point_to_index(point)).astype(int)
    inside = all(0 <= index[a] < mask.grid.size[a] for a in range(3))
    chosen = int(labels[index[2], index[1], index[0]]) if inside else 0
    if chosen == 0:
        voxels = np.argwhere(labels > 0)  # (k, j, i)
        positions = mask.grid.ijk_to_lps()[:3, :3] @ voxels[:, ::-1].T.astype(float)
        positions += np.asarray(mask.grid.origin)[:, None]
        nearest = int(np.argmin(np.linalg.norm(positions - np.asarray(point, dtype=float)[:, None], axis=0)))
        chosen = int(labels[tuple(voxels[nearest])])
    return labels == chosen


def voxel_positions(grid: Grid, voxels: np.ndarray) -> np.ndarray:
    """LPS positions (n, 3) of boolean ``voxels`` (k, j, i) on ``grid``."""
    ijk = np.argwhere(voxels)[:, ::-1].astype(float)
    return ijk @ grid.ijk_to_lps()[:3, :3].T + np.asarray(grid.origin)


def _axis_range(centre: float, half: float, size: int) -> Tuple[int, int]:
    """[start, stop) of the voxel indices within ``half`` (voxels) of ``centre``, clipped to the axis."""
    start = max(0, math.ceil(centre - half - EDGE_TOLERANCE))
    stop = min(size, math.floor(centre + half + EDGE_TOLERANCE) + 1)
    return start, stop


def _slices_of(grid: Grid, positions: np.ndarray) -> Tuple[int, int]:
    """[start, stop) of the slices k of ``grid`` nearest to any of the LPS ``positions``."""
    k = (positions - np.asarray(grid.origin)) @ np.linalg.inv(grid.ijk_to_lps()[:3, :3]).T
    k = np.floor(k[:, 2] + 0.5 + EDGE_TOLERANCE)
    return int(k.min()), int(k.max()) + 1


def crop_box(grid: Grid, centre: Sequence[float], in_plane_mm: float, slices: Tuple[int, int]) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(start, stop) voxel indices (i, j, k) of the box: in-plane within ``in_plane_mm / 2`` of
    ``centre``, through-plane the slices [start, stop), each clipped to the grid."""
    index = grid.point_to_index(centre)
    i = _axis_range(index[0], in_plane_mm / 2.0 / grid.spacing[0], grid.size[0])
    j = _axis_range(index[1], in_plane_mm / 2.0 / grid.spacing[1], grid.size[1])
    k = (max(0, slices[0]), min(grid.size[2], slices[1]))
    if i[1] <= i[0] or j[1] <= j[0] or k[1] <= k[0]:
        raise PointError(centre, "lies outside the image")
    return (i[0], j[0], k[0]), (i[1], j[1], k[1])


def crop_model_grid(spec: InputSpec, centre: np.ndarray, box: Grid) -> Grid:
    """The model grid centred on ``centre``; a 2D model's slices are the box's own slices."""
    direction = orientation_direction(spec.orientation)
    assert spec.size is not None and spec.spacing is not None  # parse_crop_spec requires them
    if spec.spatial_dims == 3:
        size = np.asarray(spec.size, dtype=int)
        spacing = np.asarray(spec.spacing, dtype=float)
    else:
        size = np.array([spec.size[0], spec.size[1], box.size[2]])
        spacing = np.array([spec.spacing[0], spec.spacing[1], box.spacing[2]])
        middle = box.index_to_point(((box.size[0] - 1) / 2.0, (box.size[1] - 1) / 2.0, (box.size[2] - 1) / 2.0))
        normal = direction[:, 2]
        centre = centre + normal * float(np.dot(middle - centre, normal))
    origin = centre - direction @ (spacing * (size - 1) / 2.0)
    return Grid(tuple(int(s) for s in size), tuple(spacing), tuple(origin), direction)


def crop_input(volume: Volume, spec: InputSpec, point: Optional[Sequence[float]] = None, mask: Optional[Volume] = None) -> PointInput:
    """The network input of a point model (``spec.crop``) at ``point`` (LPS mm) of ``volume``.

    Mode "nodule" needs ``mask``, the nodule's outline on any grid (the segmenter's or the
    radiologists'); with no point, its largest part is the nodule. Mode "point" needs a
    point, or else a mask whose centroid stands for it (training crops).
    """
    crop = spec.crop
    if crop is None:
        raise ValueError("the input spec has no crop")
    nodule = None
    if crop.mode == "nodule":
        if mask is None:
            raise PointError(point, "the model needs the nodule's outline to cut its box, and none was given")
        nodule = nodule_part(mask, point)
        positions = voxel_positions(mask.grid, nodule)
        centre = positions.mean(axis=0)
        slices = _slices_of(volume.grid, positions)
    else:
        if point is not None:
            centre = np.asarray(point, dtype=float)
        elif mask is not None:
            centre = voxel_positions(mask.grid, np.asarray(mask.array) > 0).mean(axis=0)
        else:
            raise PointError(None, "a box around a point needs the point")
        slices = _point_slices(volume.grid, centre, crop)
    start, stop = crop_box(volume.grid, centre, crop.in_plane_mm, slices)
    box = volume.grid.box(start, stop)
    array = volume.array[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]]
    grid = crop_model_grid(spec, centre, box)
    resampled = resample_array(array, box, grid, "linear", AIR_HU)
    channels = channel_arrays(resampled, spec, display_input=False)
    if spec.normalise != "none":
        normalise_images(channels, spec.spatial_dims, spec.normalise)
    if crop.outline_channel:
        assert nodule is not None and mask is not None  # mode "nodule"
        outline = resample_array(nodule.astype(np.float32), mask.grid, grid, "linear", 0.0)
        channels = np.concatenate([channels, outline[None]])
    warnings: List[str] = []
    return PointInput(ModelInput(torch.from_numpy(channels), grid, warnings), centre, box, nodule)


def _point_slices(grid: Grid, centre: np.ndarray, crop: CropSpec) -> Tuple[int, int]:
    assert crop.through_plane_mm is not None
    index = grid.point_to_index(centre)
    return _axis_range(index[2], crop.through_plane_mm / 2.0 / grid.spacing[2], grid.size[2])
