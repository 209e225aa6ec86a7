"""Resampling between grids in physical (LPS) space.

Every move of voxels between two grids in the core goes through here, so that a map
computed on a model's grid lands on the input's grid at the same physical points.

SimpleITK's ``Resample`` defines the result. When the two grids' axes are parallel (each
target axis runs along one source axis: the usual case of an axial CT and a model grid in
LPS or RAS order), the same linear or nearest-neighbour interpolation is computed axis by
axis, which is several times faster on full-size CT grids: :class:`SeparablePlan` does it with
ITK's arithmetic (in double, along i, then j, then k, each step ``a + (b - a) * t``; the same
clamping at the border and the same outside test), so the results are ITK's, voxel for
voxel. Any other pair of grids goes to SimpleITK.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .volume import Grid, Volume

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}

_NUMPY_TYPES = {
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt8: np.int8,
    sitk.sitkUInt16: np.uint16,
    sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32,
    sitk.sitkInt32: np.int32,
    sitk.sitkFloat32: np.float32,
    sitk.sitkFloat64: np.float64,
}

# Largest cross-axis coupling (in voxels, over the whole target grid) for which two grids
# count as axis-parallel: far below any rounding that could change a float32 result.
AXIS_PARALLEL_TOLERANCE = 1e-9


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


# ---------------------------------------------------------------- axis-parallel grids


def _geometry_only(grid: Grid) -> sitk.Image:
    """A one-voxel image with ``grid``'s origin, spacing and direction: ITK's index/point
    mappings depend on nothing else."""
    image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    grid.apply_to(image)
    return image


def _signed_diagonal(direction: np.ndarray) -> bool:
    return bool(np.all((direction == 0.0) | np.eye(3, dtype=bool)) and np.all(np.diag(direction) != 0.0))


@dataclass(frozen=True)
class _Axis:
    """Where the target points of one axis fall along the parallel source axis (ITK's rules)."""

    lower: np.ndarray  # LinearInterpolateImageFunction: max(floor(c), 0) (any valid index outside)
    upper: np.ndarray  # lower + 1, or lower itself at the end of the axis
    weight: np.ndarray  # c - lower, float64; 0 where it is <= 0 (ITK takes no step there)
    nearest: np.ndarray  # NearestNeighborInterpolateImageFunction: c rounded half up
    inside: np.ndarray  # ImageFunction::IsInsideBuffer: c in [-0.5, size - 0.5)

    @classmethod
    def of(cls, position: np.ndarray, size: int) -> "_Axis":
        lower = np.maximum(np.floor(position), 0.0)
        weight = position - lower
        weight[weight <= 0.0] = 0.0
        lower = np.minimum(lower, size - 1).astype(np.intp)
        upper = np.minimum(lower + 1, size - 1)
        nearest = np.clip(np.floor(position + 0.5), 0, size - 1).astype(np.intp)
        inside = (position >= -0.5) & (position < size - 0.5)
        return cls(lower, upper, weight, nearest, inside)


class SeparablePlan:
    """Resampling from ``source`` to ``target`` one axis at a time, for axis-parallel grids.

    :meth:`of` returns None unless both grids' directions are exactly diagonal (axis-aligned,
    possibly flipped), so that no coordinate mixes into another. The continuous source
    indices are ITK's own: ``ResampleImageFilter`` maps the two ends of each target row through
    ``TransformIndexToPhysicalPoint`` and ``TransformPhysicalPointToContinuousIndex`` (asked of
    SimpleITK here, so the same arithmetic) and places point i at
    ``start + (end - start) * (i / size)``. :meth:`slices` yields the result one target slice k
    at a time, so that callers bound their memory.
    """

    def __init__(self, source: Grid, target: Grid, i: _Axis, j: _Axis, k: _Axis) -> None:
        self.source, self.target = source, target
        self.i, self.j, self.k = i, j, k

    @classmethod
    def of(cls, source: Grid, target: Grid) -> Optional["SeparablePlan"]:
        if not (_signed_diagonal(source.direction) and _signed_diagonal(target.direction)):
            return None
        reference, image = _geometry_only(target), _geometry_only(source)
        size = target.size

        def index(i: int, j: int, k: int) -> Tuple[float, float, float]:
            return image.TransformPhysicalPointToContinuousIndex(reference.TransformIndexToPhysicalPoint((i, j, k)))

        start, end = index(0, 0, 0), index(size[0], 0, 0)
        far = index(0, size[1] - 1, size[2] - 1)
        if far[0] != start[0] or end[1:] != start[1:]:
            return None  # a coordinate mixes into another after all: leave it to SimpleITK
        alpha = np.arange(size[0], dtype=np.float64) / float(size[0])
        x = start[0] + (end[0] - start[0]) * alpha
        y = np.array([index(0, j, 0)[1] for j in range(size[1])], dtype=np.float64)
        z = np.array([index(0, 0, k)[2] for k in range(size[2])], dtype=np.float64)
        return cls(source, target, _Axis.of(x, source.size[0]), _Axis.of(y, source.size[1]), _Axis.of(z, source.size[2]))

    def slices(
        self, array: np.ndarray, interpolation: str, default_value: float, dtype: np.dtype, out: Optional[np.ndarray] = None
    ) -> Iterator[Tuple[int, np.ndarray]]:
        """(k, target slice k as ``dtype``) for every k in order, each written into the same
        (j, i) array: ``out`` if given, else a new one."""
        if tuple(array.shape) != self.source.shape:
            raise ValueError(f"array shape {array.shape} does not match grid shape {self.source.shape}")
        if out is None:
            out = np.empty(self.target.shape[1:], dtype=dtype)
        elif tuple(out.shape) != self.target.shape[1:] or out.dtype != np.dtype(dtype):
            raise ValueError(f"out must be a {np.dtype(dtype)} array of shape {self.target.shape[1:]}")
        if interpolation == "linear":
            return self._linear(array, float(default_value), out)
        if interpolation == "nearest":
            return self._nearest(array, default_value, out)
        raise ValueError(f"no separable {interpolation!r} interpolation")

    def _plane(self, array: np.ndarray, k: int, default_value: float) -> np.ndarray:
        """Source slice k interpolated along i, then j, onto the target's rows and columns
        (float64); points outside the source along i or j hold the default value."""
        section = array[k].astype(np.float64)
        i, j = self.i, self.j
        low = section[:, i.lower]
        rows = low + (section[:, i.upper] - low) * i.weight
        # Each row's step to the next one (0 for the last row, where j.upper == j.lower).
        steps = np.zeros_like(rows)
        np.subtract(rows[1:], rows[:-1], out=steps[:-1])
        plane = rows[j.lower]
        change = steps[j.lower]
        change *= j.weight[:, None]
        plane += change
        plane[~j.inside, :] = default_value
        plane[:, ~i.inside] = default_value
        return plane

    def _linear(self, array: np.ndarray, default_value: float, out: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
        # ITK's LinearInterpolateImageFunction: along i, then j, then k, each step
        # a + (b - a) * t in double, and one cast to the output type at the end.
        planes: Dict[int, np.ndarray] = {}
        step: Optional[Tuple[int, np.ndarray]] = None
        work = np.empty(self.target.shape[1:], dtype=np.float64)
        for k in range(self.target.size[2]):
            if not self.k.inside[k]:
                out.fill(default_value)
                yield k, out
                continue
            lower, upper, weight = int(self.k.lower[k]), int(self.k.upper[k]), float(self.k.weight[k])
            needed = (lower, upper) if weight > 0.0 and upper != lower else (lower,)
            for index in [n for n in planes if n not in needed]:
                del planes[index]  # target slices move monotonically: a dropped plane is not needed again
            for index in needed:
                if index not in planes:
                    planes[index] = self._plane(array, index, default_value)
            if len(needed) == 1:
                out[...] = planes[lower]
            else:
                if step is None or step[0] != lower:
                    step = (lower, planes[upper] - planes[lower])
                np.multiply(step[1], weight, out=work)
                np.add(planes[lower], work, out=out, casting="same_kind")  # summed in double, then cast
            yield k, out

    def linear_values_at(self, array: np.ndarray, k: int, rows: np.ndarray, columns: np.ndarray, default_value: float) -> np.ndarray:
        """The float32 values :meth:`slices` ("linear") gives at target voxels (k, rows[n],
        columns[n]), to the last bit: the same operations in the same order, for these voxels only."""
        if not self.k.inside[k]:
            return np.full(rows.shape, default_value, dtype=np.float32)
        i, j = self.i, self.j
        outside = ~(j.inside[rows] & i.inside[columns])
        i_lower, i_upper, i_weight = i.lower[columns], i.upper[columns], i.weight[columns]

        def along_i(plane: int, row: np.ndarray) -> np.ndarray:
            low = array[plane, row, i_lower].astype(np.float64)
            return low + (array[plane, row, i_upper].astype(np.float64) - low) * i_weight

        def along_j(plane: int) -> np.ndarray:
            low = along_i(plane, j.lower[rows])
            step = along_i(plane, j.upper[rows]) - low  # 0 on the last row, where upper is lower
            value = low + step * j.weight[rows]
            value[outside] = default_value
            return value

        lower, upper, weight = int(self.k.lower[k]), int(self.k.upper[k]), float(self.k.weight[k])
        value = along_j(lower)
        if weight > 0.0 and upper != lower:
            value = value + (along_j(upper) - value) * weight
        return value.astype(np.float32)

    def nearest_slice(self, array: np.ndarray, k: int, default_value: float, out: np.ndarray) -> np.ndarray:
        """Target slice k by nearest-neighbour interpolation, into ``out`` (the target's (j, i))."""
        i, j = self.i, self.j
        if not self.k.inside[k]:
            out.fill(default_value)
            return out
        # Rows, then columns, each by np.take: several times faster than one np.ix_ gather.
        # The indices are in range by construction, so "clip" changes none and spares a copy.
        rows = np.take(array[self.k.nearest[k]], j.nearest, axis=0, mode="clip")
        if out.dtype == rows.dtype:
            np.take(rows, i.nearest, axis=1, out=out, mode="clip")
        else:
            out[...] = np.take(rows, i.nearest, axis=1, mode="clip")
        if not (j.inside.all() and i.inside.all()):
            out[~np.logical_and.outer(j.inside, i.inside)] = default_value
        return out

    def _nearest(self, array: np.ndarray, default_value: float, out: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
        for k in range(self.target.size[2]):
            yield k, self.nearest_slice(array, k, default_value, out)


def _separable(
    array: np.ndarray, source: Grid, target: Grid, interpolation: str, output_type: int
) -> Optional[Tuple[SeparablePlan, np.dtype]]:
    """The plan and output dtype when the fast path gives exactly SimpleITK's result."""
    dtype = _NUMPY_TYPES.get(output_type)
    if dtype is None or array.dtype.kind not in "biuf" or array.dtype == np.float16:
        return None
    if interpolation == "linear" and dtype != np.float32:
        return None  # ITK's casts to integer outputs (clamp and truncate) are not reproduced
    if interpolation == "nearest" and not np.can_cast(array.dtype, dtype, "safe"):
        return None
    if interpolation not in ("linear", "nearest"):
        return None
    plan = SeparablePlan.of(source, target)
    return None if plan is None else (plan, np.dtype(dtype))


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
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Resample an array indexed [k, j, i] on ``source`` onto ``target``; returns [k, j, i].

    ``out``, if given, receives the result (it must have the target's shape and the output
    type); otherwise a new array is returned.
    """
    if tuple(array.shape) != source.shape:
        raise ValueError(f"array shape {array.shape} does not match grid shape {source.shape}")
    fast = _separable(array, source, target, interpolation, output_type)
    if fast is None:
        result = resample_image_to_array(image_on_grid(array, source), target, interpolation, default_value, output_type)
        if out is None:
            return result
        _check_out(out, target, result.dtype)
        out[...] = result
        return out
    plan, dtype = fast
    if out is None:
        out = np.empty(target.shape, dtype=dtype)
    _check_out(out, target, dtype)
    for k, section in plan.slices(array, interpolation, default_value, dtype):
        out[k] = section
    return out


def _check_out(out: np.ndarray, target: Grid, dtype: np.dtype) -> None:
    if tuple(out.shape) != target.shape or out.dtype != dtype:
        raise ValueError(f"out must be a {np.dtype(dtype)} array of shape {target.shape}, got {out.dtype} {out.shape}")


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
