"""Resampling between grids in physical (LPS) space, by SimpleITK.

Every move of voxels between two grids in the core goes through here, so that a map
computed on a model's grid lands on the input's grid at the same physical points.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .volume import Grid, Volume

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def resample_image(
    image: sitk.Image,
    target: Grid,
    interpolation: str = "linear",
    default_value: float = 0.0,
    output_type: int = sitk.sitkFloat32,
) -> sitk.Image:
    """Resample ``image`` onto ``target``; points outside ``image`` get ``default_value``."""
    return sitk.Resample(
        image,
        target.reference_image(),
        sitk.Transform(),
        INTERPOLATORS[interpolation],
        float(default_value),
        output_type,
    )


SLAB_VOXELS = 1 << 24  # output voxels resampled at once: bounds memory on large grids


def image_on_grid(array: np.ndarray, grid: Grid) -> sitk.Image:
    """A SimpleITK image of an array indexed [k, j, i] placed on ``grid``."""
    if tuple(array.shape) != grid.shape:
        raise ValueError(f"array shape {array.shape} does not match grid shape {grid.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    grid.apply_to(image)
    return image


def slabs(grid: Grid) -> Iterator[Tuple[int, int]]:
    """(start, stop) ranges of slices k covering ``grid`` in pieces of about SLAB_VOXELS."""
    step = max(1, SLAB_VOXELS // (grid.size[0] * grid.size[1]))
    for start in range(0, grid.size[2], step):
        yield start, min(start + step, grid.size[2])


def resample_image_to_array(
    image: sitk.Image,
    target: Grid,
    interpolation: str = "linear",
    default_value: float = 0.0,
    output_type: int = sitk.sitkFloat32,
) -> np.ndarray:
    """``image`` resampled onto ``target``, returned as [k, j, i], computed slab by slab so that
    the only full-size allocation is the result itself."""
    result: Optional[np.ndarray] = None
    for start, stop in slabs(target):
        piece = resample_image(image, target.slab(start, stop), interpolation, default_value, output_type)
        view = sitk.GetArrayViewFromImage(piece)
        if result is None:
            result = np.empty(target.shape, dtype=view.dtype)
        result[start:stop] = view
        del view, piece  # the view must not outlive its image
    assert result is not None  # a grid has at least one slice
    return result


def resample_array(
    array: np.ndarray,
    source: Grid,
    target: Grid,
    interpolation: str = "linear",
    default_value: float = 0.0,
    output_type: int = sitk.sitkFloat32,
) -> np.ndarray:
    """Resample an array indexed [k, j, i] on ``source`` onto ``target``; returns [k, j, i]."""
    return resample_image_to_array(image_on_grid(array, source), target, interpolation, default_value, output_type)


def resample_volume(
    volume: Volume,
    target: Grid,
    interpolation: str = "linear",
    default_value: Union[float, None] = None,
    output_type: int = sitk.sitkFloat32,
) -> Volume:
    """``volume`` resampled onto ``target``; by default, outside points get the volume's minimum."""
    fill = float(volume.array.min()) if default_value is None else default_value
    array = resample_array(volume.array, volume.grid, target, interpolation, fill, output_type)
    return Volume(array, target, metadata=dict(volume.metadata), phi=dict(volume.phi))
