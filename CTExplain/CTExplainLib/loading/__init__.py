"""Loading CT into a :class:`~CTExplainLib.volume.Volume`, whatever the user points at.

``load_volume`` accepts
- a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file;
- a DICOM folder (the CT series with the most slices, or ``series_uid``), or any one DICOM
  file, which loads the series holding it from its folder, as Slicer's ``loadVolume`` does;
- a folder of PNG/JPEG slices, or one PNG/JPEG image, given ``image_spacing`` (x, y, z mm).

Every problem with the input raises :class:`~CTExplainLib.errors.InputError` naming the path.
Example::

    from CTExplainLib.loading import load_volume
    volume = load_volume("/data/lidc-idri-0001")
    volume.array.shape, volume.grid.spacing, volume.metadata["warnings"]
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple, Union

from ..errors import InputError
from ..volume import Volume
from .dicom import DicomSeriesInfo, is_dicom_file, list_dicom_series, load_dicom
from .image_file import read_volume_file, volume_file_format
from .image_stack import IMAGE_SUFFIXES, read_image_2d, read_image_stack, slice_images

__all__ = ["DicomSeriesInfo", "list_dicom_series", "load_volume"]

LOG = logging.getLogger(__name__)

PathLike = Union[str, Path]


def load_volume(
    path: PathLike,
    series_uid: Optional[str] = None,
    image_spacing: Optional[Tuple[float, float, float]] = None,
) -> Volume:
    """Load the CT at ``path`` as a Volume; see the module docstring for what ``path`` may be."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return _load_folder(path, series_uid, image_spacing)
    if not path.is_file():
        raise InputError(path, "is neither a regular file nor a folder")
    return _load_file(path, series_uid, image_spacing)


def _load_file(path: Path, series_uid: Optional[str], image_spacing: Optional[Tuple[float, float, float]]) -> Volume:
    if volume_file_format(path) is not None:
        _ignored(path, series_uid=series_uid, image_spacing=image_spacing)
        return read_volume_file(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        _ignored(path, series_uid=series_uid)
        return read_image_2d(path, image_spacing)
    if is_dicom_file(path):
        _ignored(path, image_spacing=image_spacing)
        return load_dicom(path, series_uid)
    if path.stat().st_size == 0:
        raise InputError(path, "is an empty file")
    raise InputError(
        path,
        "is not a supported image: expected DICOM, NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), "
        "MetaImage (.mha, .mhd) or a PNG/JPEG slice",
    )


def _load_folder(folder: Path, series_uid: Optional[str], image_spacing: Optional[Tuple[float, float, float]]) -> Volume:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(folder, "is an empty folder")
    files = [p for p in entries if p.is_file()]
    if any(is_dicom_file(p) for p in files):
        _ignored(folder, image_spacing=image_spacing)
        return load_dicom(folder, series_uid)
    images = slice_images(folder)
    if images:
        _ignored(folder, series_uid=series_uid)
        return read_image_stack(folder, image_spacing, images)
    volumes = [p.name for p in files if volume_file_format(p) is not None]
    if volumes:
        hint = f"it holds volume files ({', '.join(sorted(volumes)[:3])}); give one of them as the input"
    elif len(files) < len(entries):
        hint = f"it holds {len(entries) - len(files)} subfolder(s); give the folder of one series"
    else:
        hint = f"its {len(files)} file(s) are none of these"
    raise InputError(folder, f"holds no readable images (DICOM files or PNG/JPEG slices): {hint}")


def _ignored(path: Path, **options: object) -> None:
    """Options that do not apply to this kind of input are logged, not silently dropped."""
    for name, value in options.items():
        if value is not None:
            LOG.info("%s: option %s=%r does not apply to this input and is ignored", path, name, value)

