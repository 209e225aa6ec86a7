"""Volume files read by SimpleITK: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd).

The file's own grid is kept exactly as ITK reads it (LPS): a left-handed grid stays
left-handed, because every output must land on the input's grid voxel for voxel.
"""
from __future__ import annotations

import gzip
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..volume import Grid, Volume
from .metadata import volume_metadata

LOG = logging.getLogger(__name__)

FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}
_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


def volume_file_format(path: Path) -> Optional[str]:
    """``nifti``, ``nrrd`` or ``mha`` from the file name, or None for anything else."""
    name = path.name.lower()
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    return None


def itk_message(exc: BaseException) -> str:
    """ITK's multi-line exception text reduced to its last informative line."""
    lines = [line.strip(" |") for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Exception thrown in SimpleITK", "/"))]
    text = lines[-1] if lines else str(exc).strip()
    text = re.sub(r"^(sitk::ERROR|ITK ERROR):\s*", "", text)
    return re.sub(r"\s+", " ", text)[:300]


@dataclass(frozen=True)
class _NiftiLayout:
    """Where a NIfTI file's voxels lie, from the header fields ITK reports."""

    offset: int
    count: int
    itemsize: int
    datatype: int

    @property
    def end(self) -> int:
        return self.offset + self.count * self.itemsize


def _nifti_layout(path: Path, reader: sitk.ImageFileReader) -> Optional[_NiftiLayout]:
    keys = set(reader.GetMetaDataKeys())
    if not {"vox_offset", "bitpix", "datatype", "dim[0]"} <= keys:
        LOG.debug("%s: ITK reports no NIfTI header fields; length and NaN checks skipped", path)
        return None
    try:
        rank = int(reader.GetMetaData("dim[0]"))
        count = int(np.prod([int(reader.GetMetaData(f"dim[{axis}]")) for axis in range(1, rank + 1)], dtype=np.int64))
        return _NiftiLayout(
            offset=int(float(reader.GetMetaData("vox_offset"))),
            count=count,
            itemsize=int(reader.GetMetaData("bitpix")) // 8,
            datatype=int(reader.GetMetaData("datatype")),
        )
    except (ValueError, RuntimeError) as exc:
        raise InputError(path, f"has a malformed NIfTI header ({exc})") from exc


def _open_nifti(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _gzip_uncompressed_size(path: Path) -> int:
    """Decompressed length of a gzip file; raises InputError if the stream is cut short."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    return total
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(path, f"is truncated or corrupt: its gzip stream ends early, after {total} bytes ({exc})") from exc


def check_nifti_complete(path: Path, layout: _NiftiLayout) -> None:
    """ITK zero-fills a NIfTI file that is cut short instead of failing, so check the length first."""
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, 2)
            (isize,) = struct.unpack("<I", handle.read(4))
        # The gzip trailer holds the uncompressed size mod 2**32: a match proves the stream is
        # whole at no cost; a mismatch (a cut file, or a multi-member gzip) needs the full check.
        if isize == layout.end % (1 << 32):
            return
        available = _gzip_uncompressed_size(path)
    else:
        available = path.stat().st_size
    if available < layout.end:
        raise InputError(path, f"is truncated: its header needs {layout.end} bytes, the file holds {available}")


def check_nifti_finite(path: Path, layout: _NiftiLayout) -> None:
    """ITK's NIfTI reader silently turns NaN and infinite voxels into 0 (fixed only in ITK 6,
    InsightSoftwareConsortium/ITK#6683), so float NIfTI voxels are checked on the file's bytes."""
    code = _NIFTI_FLOATS.get(layout.datatype)
    if code is None:
        return  # integer voxels cannot hold NaN
    with _open_nifti(path) as stream:
        # sizeof_hdr is 348 (NIfTI-1) or 540 (NIfTI-2) in the file's byte order.
        byte_order = "<" if struct.unpack("<i", stream.read(4))[0] in (348, 540) else ">"
        stream.seek(layout.offset)
        dtype = np.dtype(byte_order + code)
        bad = nan = 0
        remaining = layout.count
        while remaining:
            items = min(remaining, (1 << 24) // dtype.itemsize)
            values = np.frombuffer(stream.read(items * dtype.itemsize), dtype=dtype)
            finite = np.isfinite(values)
            bad += int(values.size - np.count_nonzero(finite))
            nan += int(np.count_nonzero(np.isnan(values)))
            remaining -= items
    if bad:
        raise InputError(path, f"has {bad} non-finite voxels ({nan} NaN, {bad - nan} infinite) of {layout.count}")


def _is_nifti2(path: Path) -> bool:
    if volume_file_format(path) != "nifti":
        return False
    try:
        with _open_nifti(path) as stream:
            head = stream.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and 540 in (struct.unpack("<i", head)[0], struct.unpack(">i", head)[0])


def _reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        message = itk_message(exc)
        if "Unable to determine ImageIO reader" in message and _is_nifti2(path):
            message = "is a NIfTI-2 file, which this SimpleITK cannot read; save it as NIfTI-1"
        elif "Unable to determine ImageIO reader" in message:
            message = "is not a readable image file (no NIfTI/NRRD/MetaImage reader accepts it)"
        else:
            message = f"cannot be read: {message}"
        raise InputError(path, message) from exc
    return reader


def _squeeze_to_3d(path: Path, image: sitk.Image) -> sitk.Image:
    """3D as is; 2D becomes one slice; 4D only when the extra axis has length 1."""
    dimension = image.GetDimension()
    if dimension == 3:
        return image
    if dimension == 2:
        return sitk.JoinSeries([image])
    if dimension == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize()[:3]) + [0]
        return sitk.Extract(image, size, [0, 0, 0, 0])
    raise InputError(path, f"is a {dimension}D image of size {image.GetSize()}; only 2D or 3D images are supported")


def read_volume_file(path: Path) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file into a Volume on the file's own grid."""
    kind = volume_file_format(path)
    if kind is None:
        raise InputError(path, "is not a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file")
    reader = _reader(path)
    dimension, size = reader.GetDimension(), reader.GetSize()
    # Refuse before reading the voxels: a 4D series may be large and is unusable anyway.
    if dimension > 4 or (dimension == 4 and size[3] != 1):
        raise InputError(path, f"is a {dimension}D image of size {size} (e.g. a time series); only 3D volumes are supported")
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"has {reader.GetNumberOfComponents()} components per voxel (e.g. RGB or vector); a scalar CT volume is needed")
    layout = _nifti_layout(path, reader) if kind == "nifti" else None
    if layout is not None:
        check_nifti_complete(path, layout)
        check_nifti_finite(path, layout)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"cannot be read: {itk_message(exc)}") from exc
    dims = 2 if dimension == 2 or (dimension >= 3 and size[2] == 1) else 3
    image = _squeeze_to_3d(path, image)
    array = sitk.GetArrayFromImage(image)
    check_finite(path, array)
    file_type = str(array.dtype)
    array = compact(array)
    metadata = volume_metadata(path, kind, "hu", dims, file_voxel_type=file_type)
    LOG.info("loaded %s: %s, size %s, spacing %s", path, kind, image.GetSize(), image.GetSpacing())
    return Volume(array, Grid.of_image(image), metadata=metadata)


def compact(array: np.ndarray) -> np.ndarray:
    """Wide voxel types narrowed: int16 for integer data whose values fit, float32 for float64 (ample for CT)."""
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize > 2 and array.size:
        low, high = array.min(), array.max()
        if low >= np.iinfo(np.int16).min and high <= np.iinfo(np.int16).max:
            return array.astype(np.int16)
    return array


def check_finite(path: Path, array: np.ndarray) -> None:
    """NaN or infinite voxels would poison every later stage; name how many there are."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        nan = int(np.count_nonzero(np.isnan(array)))
        raise InputError(path, f"has {bad} non-finite voxels ({nan} NaN, {bad - nan} infinite) of {array.size}")
