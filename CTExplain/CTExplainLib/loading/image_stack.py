"""2D display images (PNG/JPEG) as volumes: a folder of slices, or a single slice.

Such images carry no geometry, so the caller gives the spacing and the grid is assumed:
columns run along +i, rows along +j, the slice order (the number in the file name) along
+k, direction identity and origin (0, 0, 0). Their values are windowed 8-bit display
grey levels, not HU, which ``metadata["intensity"] = "display"`` tells later stages.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from ..volume import Grid, Volume
from .metadata import volume_metadata

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Modes that convert("L") maps to grey levels faithfully; 16-bit and float modes would be clipped.
_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La"}


def is_slice_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def natural_key(path: Path) -> Tuple[Any, ...]:
    """Sort key that puts '2.jpg' before '10.jpg': digit runs compare as numbers."""
    parts = re.split(r"(\d+)", path.name.lower())
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts if part)


def check_spacing(path: Path, image_spacing: Optional[Sequence[float]]) -> Tuple[float, float, float]:
    """The user's (x, y, z) spacing in mm, validated; 2D images carry none of their own."""
    if image_spacing is None:
        raise InputError(
            path,
            "2D images (PNG/JPEG) carry no voxel spacing: give it as x y z in mm, e.g. --spacing 0.5 0.5 5 "
            "(image_spacing in Python and in training recipes)",
        )
    try:
        values = tuple(float(v) for v in image_spacing)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"image_spacing must be three numbers in mm, got {image_spacing!r}") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(path, f"image_spacing must be three positive numbers in mm (x, y, z), got {image_spacing!r}")
    return (values[0], values[1], values[2])


def read_gray8(path: Path) -> np.ndarray:
    """One image as an 8-bit grey (rows, columns) array; camera rotation tags are honoured."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode not in _EIGHT_BIT_MODES:
                raise InputError(path, f"is a {image.mode} image; only 8-bit grey or colour display images are supported as slices")
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        detail = str(exc).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
        raise InputError(path, f"is not a readable PNG/JPEG image ({detail or type(exc).__name__})") from exc


def _volume(path: Path, array: np.ndarray, spacing: Tuple[float, float, float], kind: str, dims: int, files: int) -> Volume:
    grid = Grid(size=(array.shape[2], array.shape[1], array.shape[0]), spacing=spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    geometry = "assumed: columns +i, rows +j, file-name order +k, direction identity, origin 0"
    metadata = volume_metadata(path, kind, "display", dims, slice_files=files, geometry=geometry)
    return Volume(array, grid, metadata=metadata)


def read_image_2d(path: Path, image_spacing: Optional[Sequence[float]]) -> Volume:
    """A single PNG/JPEG slice as a one-slice volume marked dims=2."""
    spacing = check_spacing(path, image_spacing)
    array = read_gray8(path)[np.newaxis]
    LOG.info("loaded 2D image %s: %s, spacing %s", path, array.shape[1:], spacing)
    return _volume(path, array, spacing, "image-2d", 2, 1)


def slice_images(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if is_slice_image(p)), key=natural_key)


def read_image_stack(folder: Path, image_spacing: Optional[Sequence[float]], files: Optional[List[Path]] = None) -> Volume:
    """A folder of PNG/JPEG slices, ordered by the number in their names, as a volume."""
    files = slice_images(folder) if files is None else files
    if not files:
        raise InputError(folder, "holds no PNG/JPEG slice images")
    spacing = check_spacing(folder, image_spacing)
    slices = [read_gray8(f) for f in files]
    rows, columns = slices[0].shape
    for name, image in zip(files, slices):
        if image.shape != (rows, columns):
            raise InputError(
                folder, f"slices differ in size: {files[0].name} is {columns}x{rows} but {name.name} is {image.shape[1]}x{image.shape[0]}"
            )
    array = np.stack(slices)
    dims = 2 if len(files) == 1 else 3
    LOG.info("loaded %d slice images from %s: %s, spacing %s", len(files), folder, array.shape, spacing)
    return _volume(folder, array, spacing, "image-stack", dims, len(files))

