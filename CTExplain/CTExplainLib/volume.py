"""One image type for the whole core: a voxel array that carries its physical grid.

Conventions (those of ITK/SimpleITK and DICOM):
- the array is indexed ``array[k, j, i]`` (slice, row, column), exactly as
  ``sitk.GetArrayFromImage`` and Slicer's ``arrayFromVolume`` return it;
- ``spacing``, ``origin`` and ``size`` are given in (i, j, k) order;
- ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the i, j, k
  axes in patient LPS coordinates, and ``origin`` is the LPS position of voxel (0, 0, 0).

Slicer works in RAS; the conversion is the one of Slicer's own readers
(``vtkITKArchetypeImageSeriesReader``): negate rows 0 and 1 of the IJK-to-LPS matrix.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

Vector3 = Tuple[float, float, float]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _vector3(values: Sequence[float]) -> Vector3:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid placed in LPS space."""

    size: Tuple[int, int, int]
    spacing: Vector3
    origin: Vector3
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", _vector3(self.spacing))
        object.__setattr__(self, "origin", _vector3(self.origin))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))

    @property
    def shape(self) -> Tuple[int, int, int]:
        """The numpy shape (k, j, i) of an array on this grid."""
        i, j, k = self.size
        return (k, j, i)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """Slicer's IJK-to-RAS matrix (slicer-api.md section 3): rows 0 and 1 negated."""
        matrix = self.ijk_to_lps()
        matrix[:3, :] = LPS_TO_RAS @ matrix[:3, :]
        return matrix

    @classmethod
    def from_ijk_to_ras(cls, size: Sequence[int], ijk_to_ras: np.ndarray) -> "Grid":
        """Inverse of :meth:`ijk_to_ras`, split as Slicer splits it: column norms are spacing."""
        matrix = np.asarray(ijk_to_ras, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f"IJK-to-RAS must be 4x4, got {matrix.shape}")
        ras_axes = matrix[:3, :3]
        spacing = np.linalg.norm(ras_axes, axis=0)
        if np.any(spacing <= 0):
            raise ValueError("IJK-to-RAS has a zero-length axis")
        direction = LPS_TO_RAS @ (ras_axes / spacing)
        origin = LPS_TO_RAS @ matrix[:3, 3]
        return cls(tuple(size), tuple(spacing), tuple(origin), direction)

    def index_to_point(self, ijk: Sequence[float]) -> np.ndarray:
        """LPS position of a (continuous) voxel index given as (i, j, k)."""
        return self.ijk_to_lps()[:3, :3] @ np.asarray(ijk, dtype=np.float64) + np.asarray(self.origin)

    def point_to_index(self, lps: Sequence[float]) -> np.ndarray:
        """Continuous (i, j, k) index of an LPS point."""
        matrix = self.ijk_to_lps()
        return np.linalg.solve(matrix[:3, :3], np.asarray(lps, dtype=np.float64) - matrix[:3, 3])

    def slab(self, start: int, stop: int) -> "Grid":
        """The part of this grid made of slices k in [start, stop)."""
        return self.box((0, 0, start), (self.size[0], self.size[1], stop))

    def box(self, start: Sequence[int], stop: Sequence[int]) -> "Grid":
        """The part of this grid made of voxels (i, j, k) with start <= (i, j, k) < stop."""
        size = tuple(int(b) - int(a) for a, b in zip(start, stop))
        return Grid(size, self.spacing, tuple(self.index_to_point(start)), self.direction)

    def is_left_handed(self) -> bool:
        return bool(np.linalg.det(self.direction) < 0)

    def same_as(self, other: "Grid", tolerance: float = 1e-5) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def reference_image(self) -> sitk.Image:
        """An empty SimpleITK image with this grid, for use as a resampling reference."""
        image = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> None:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))

    @classmethod
    def of_image(cls, image: sitk.Image) -> "Grid":
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
        }


@dataclass
class Volume:
    """A voxel array (indexed [k, j, i]) with its grid and what is known of where it came from.

    ``metadata`` holds non-identifying facts (modality, series UID, source path, warnings);
    ``phi`` holds patient-identifying fields, which writers drop unless asked to keep them.
    """

    array: np.ndarray
    grid: Grid
    metadata: Dict[str, Any] = field(default_factory=dict)
    phi: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume array must be 3D (k, j, i), got shape {self.array.shape}")
        if tuple(self.array.shape) != self.grid.shape:
            raise ValueError(f"array shape {self.array.shape} does not match grid shape {self.grid.shape}")

    @classmethod
    def from_sitk(cls, image: sitk.Image, **extra: Any) -> "Volume":
        return cls(sitk.GetArrayFromImage(image), Grid.of_image(image), **extra)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array, isVector=False)
        self.grid.apply_to(image)
        return image

    @classmethod
    def from_ijk_to_ras(cls, array: np.ndarray, ijk_to_ras: np.ndarray, **extra: Any) -> "Volume":
        """Build from a Slicer node's (K, J, I) array and IJK-to-RAS matrix."""
        k, j, i = array.shape
        return cls(np.asarray(array), Grid.from_ijk_to_ras((i, j, k), ijk_to_ras), **extra)

    def ijk_to_ras(self) -> np.ndarray:
        return self.grid.ijk_to_ras()

    def with_array(self, array: np.ndarray, **metadata: Any) -> "Volume":
        """A volume on the same grid holding another array (e.g. a heat map)."""
        return replace(self, array=array, metadata={**metadata}, phi={})


_PIXEL_TYPES = {
    np.dtype(np.uint8): sitk.sitkUInt8,
    np.dtype(np.uint16): sitk.sitkUInt16,
    np.dtype(np.int16): sitk.sitkInt16,
    np.dtype(np.float32): sitk.sitkFloat32,
}


def image_backed_array(grid: Grid, dtype: Any) -> np.ndarray:
    """A new, zero-filled, writable array [k, j, i] on ``grid`` whose memory is the pixel buffer
    of a SimpleITK image placed on ``grid``; :func:`backing_image` returns that image.

    SimpleITK always copies an array into a new image, so a full-size map written to a file
    would briefly exist twice (hundreds of MB on a 512x512x300 CT); an array made here is
    written without that copy. The image lives as long as the array (or any view of it).
    """
    kind = _PIXEL_TYPES.get(np.dtype(dtype))
    if kind is None:
        raise ValueError(f"no image-backed arrays of {np.dtype(dtype)}")
    image = sitk.Image([int(s) for s in grid.size], kind)
    grid.apply_to(image)
    view = sitk.GetArrayViewFromImage(image)  # read-only, but it tells where the pixels are
    memory = (ctypes.c_char * view.nbytes).from_address(view.ctypes.data)
    del view
    memory.ctexplain_image = image  # type: ignore[attr-defined]  # keeps the image alive
    return np.frombuffer(memory, dtype=dtype).reshape(grid.shape)


def backing_image(array: np.ndarray) -> Optional[sitk.Image]:
    """The SimpleITK image whose whole pixel buffer ``array`` is (see :func:`image_backed_array`),
    or None for any other array (including a part of such an array)."""
    owner: Any = array
    while owner is not None and not hasattr(owner, "ctexplain_image"):
        owner = getattr(owner, "base", None)
    if owner is None:
        return None
    image: sitk.Image = owner.ctexplain_image
    whole = (
        array.flags.c_contiguous
        and array.ctypes.data == ctypes.addressof(owner)
        and array.nbytes == ctypes.sizeof(owner)
        and tuple(array.shape) == tuple(reversed(image.GetSize()))
        and _PIXEL_TYPES.get(array.dtype) == image.GetPixelID()
    )
    return image if whole else None
