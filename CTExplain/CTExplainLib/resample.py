"""Resampling between grids in physical (LPS) space, by SimpleITK.

Every move of voxels between two grids in the core goes through here, so that a map
computed on a model's grid lands on the input's grid at the same physical points.
"""
from __future__ import annotations

from typing import Union

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


def resample_array(
    array: np.ndarray,
    source: Grid,
    target: Grid,
    interpolation: str = "linear",
    default_value: float = 0.0,
    output_type: int = sitk.sitkFloat32,
) -> np.ndarray:
    """Resample an array indexed [k, j, i] on ``source`` onto ``target``; returns [k, j, i]."""
    if tuple(array.shape) != source.shape:
        raise ValueError(f"array shape {array.shape} does not match source grid {source.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    source.apply_to(image)
    return sitk.GetArrayFromImage(resample_image(image, target, interpolation, default_value, output_type))


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
