"""Writing results to disk: images, label maps, Slicer segmentations, JSON and PNG.

Every writer here is atomic: it writes to a temporary file in the destination folder and
renames it over the destination only once the file is complete, so a crash, a full disk or
Ctrl-C never leaves a half-written file that a later step (or a user) would take for a
result. A whole case folder can be made atomic in the same way with
:func:`case_output_directory`.

Privacy rule: nothing in this module writes ``Volume.phi`` or ``Volume.metadata`` into a
file header. Images are written from a fresh SimpleITK image built from the array and the
grid only, so a header holds geometry and voxel type and nothing else.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .volume import Grid, Volume, backing_image

# Fast gzip: on a 512x512x133 CT, level 9 (pynrrd's default) took 22 s for a .seg.nrrd
# that level 1 writes in a fraction of that, for a few per cent more bytes.
GZIP_LEVEL = 1

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Extensions made of several suffixes that must stay whole on a temporary file, because
# writers (SimpleITK, pynrrd) choose the format and the compression from them.
_COMPOUND_EXTENSIONS = (".seg.nrrd", ".nii.gz")
IMAGE_EXTENSIONS = (".nrrd", ".nii", ".nii.gz")


def _extension(path: Path) -> str:
    name = path.name.lower()
    for extension in _COMPOUND_EXTENSIONS:
        if name.endswith(extension) and len(name) > len(extension):
            return path.name[-len(extension):]
    return path.suffix


def _fsync_file(path: Path) -> None:
    # Best effort: without it a power cut right after the rename can leave an empty file
    # under the final name on some file systems.
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:  # the original exception matters more than this one
        logger.warning("could not remove temporary file %s: %s", path, error)


def _reserve_temporary_file(path: Path) -> Path:
    """Create an empty, uniquely named file next to ``path`` with the same extension."""
    extension = _extension(path)
    stem = path.name[: len(path.name) - len(extension)] if extension else path.name
    for _ in range(100):
        candidate = path.parent / f".{stem}.tmp{secrets.token_hex(4)}{extension}"
        try:
            # O_EXCL reserves the name; mode 0o666 lets the umask decide the final
            # permissions, as for any file the user creates (mkstemp would force 0600).
            fd = os.open(str(candidate), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"could not create a temporary file next to {path}")


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the extension (``.seg.nrrd``, ``.nii.gz``, ``.nrrd``...) so that
    writers pick the right format, and starts with a dot, e.g. ``.heat.tmp1a2b3c4d.nrrd``.
    On any exception, KeyboardInterrupt included, the temporary file is deleted and an
    existing file at ``path`` is left as it was. An empty temporary file at the end of the
    block counts as a failed write (it was created empty, so the writer wrote nothing).
    The parent folder must exist.
    """
    final = Path(path)
    if not final.parent.is_dir():
        raise FileNotFoundError(f"cannot write {final}: folder {final.parent} does not exist")
    temporary = _reserve_temporary_file(final)
    try:
        yield temporary
        if not temporary.is_file() or temporary.stat().st_size == 0:
            raise OSError(f"writing {final} produced no data")
        _fsync_file(temporary)
        os.replace(str(temporary), str(final))
    except BaseException:
        _remove_quietly(temporary)
        raise


def _staging_directory(final: Path, tag: str) -> Path:
    for _ in range(100):
        candidate = final.parent / f"{final.name}.{tag}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()  # mode 0o777 minus umask, unlike mkdtemp's 0700
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a staging folder next to {final}")


def _unused_sibling(final: Path, tag: str) -> Path:
    while True:
        candidate = final.parent / f"{final.name}.{tag}-{secrets.token_hex(4)}"
        if not os.path.lexists(str(candidate)):
            return candidate


@contextlib.contextmanager
def case_output_directory(final_dir: PathLike) -> Iterator[Path]:
    """Yield a staging folder to fill with a case's outputs; publish it as ``final_dir`` on success.

    The staging folder is ``<final_dir>.partial-<random>`` in the same parent folder (so the
    final move is a rename on one file system, not a copy). When the block succeeds:

    - if ``final_dir`` does not exist, the staging folder is renamed to it;
    - if it exists (a previous run's result), it is first renamed to
      ``<final_dir>.old-<random>``, the staging folder is renamed to ``final_dir``, and only
      then is the old result deleted. If the second rename fails, the old result is put back.

    When the block raises (KeyboardInterrupt included), the staging folder and everything in
    it are deleted and an existing ``final_dir`` is untouched: a failed re-run never destroys
    the previous result. Only a hard kill (SIGKILL, power cut) can leave a ``.partial-`` or
    ``.old-`` folder behind; their names say what they are and they are safe to delete.

    Files inside the staging folder may be written with the writers of this module; they
    need not be atomic themselves, since nothing is visible under ``final_dir`` before the
    whole folder is complete.
    """
    final = Path(final_dir)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"cannot write case folder {final}: a file of that name exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_directory(final, "partial")
    try:
        yield staging
        _publish_directory(staging, final)
    except BaseException:
        shutil.rmtree(str(staging), ignore_errors=True)
        raise


def _publish_directory(staging: Path, final: Path) -> None:
    if not final.exists():
        os.replace(str(staging), str(final))
        return
    # rename(2) cannot replace a non-empty folder, so move the old result aside first.
    previous = _unused_sibling(final, "old")
    os.replace(str(final), str(previous))
    try:
        os.replace(str(staging), str(final))
    except BaseException:
        os.replace(str(previous), str(final))
        raise
    shutil.rmtree(str(previous), ignore_errors=True)


def _check_image_extension(path: Path) -> None:
    if not path.name.lower().endswith(IMAGE_EXTENSIONS):
        raise ValueError(f"{path}: image files must end in one of {', '.join(IMAGE_EXTENSIONS)}")


def _geometry_only_image(array: np.ndarray, volume: Volume) -> sitk.Image:
    # A fresh image carries no metadata dictionary, hence no patient data in the header.
    # An array that is the pixel buffer of such an image (volume.image_backed_array) is
    # written from that image as it is, without a copy.
    image = backing_image(array)
    if image is not None and not image.GetMetaDataKeys() and Grid.of_image(image).same_as(volume.grid, tolerance=0.0):
        return image
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    volume.grid.apply_to(image)
    return image


def _write_sitk(image: sitk.Image, path: Path, compress: bool) -> None:
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), bool(compress), GZIP_LEVEL)
    logger.debug("wrote %s", path)


def write_image(volume: Volume, path: PathLike, compress: bool = True) -> Path:
    """Write ``volume`` as NRRD or NIfTI (.nrrd, .nii, .nii.gz) on exactly its grid.

    The voxel type is kept (booleans become uint8, which no format stores natively).
    ``compress`` applies to NRRD; NIfTI compression follows the extension.
    """
    path = Path(path)
    _check_image_extension(path)
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    _write_sitk(_geometry_only_image(array, volume), path, compress)
    return path


def label_array(array: np.ndarray, what: str = "label map") -> np.ndarray:
    """``array`` as uint8 (max < 256) or uint16; ValueError if it holds non-integer values."""
    values = np.asarray(array)
    if values.dtype == np.bool_:
        return values.astype(np.uint8)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(f"{what} must hold integers, got dtype {values.dtype}")
    if values.size == 0:
        return values.astype(np.uint8)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{what} holds NaN or infinite values")
        if not np.array_equal(values, np.round(values)):
            raise ValueError(f"{what} holds non-integer values (e.g. {_first_fraction(values)})")
    low, high = values.min(), values.max()
    if low < 0:
        raise ValueError(f"{what} holds negative labels (min {low})")
    if high > np.iinfo(np.uint16).max:
        raise ValueError(f"{what} holds labels above 65535 (max {high})")
    return values.astype(np.uint8 if high < 256 else np.uint16, copy=False)


FEW_LABELS = 8  # label maps with at most this many values (0 included) are counted value by value


def label_counts(labels: np.ndarray, slab: int = 16) -> np.ndarray:
    """Voxels of each value 0..max of a non-negative integer label map, counted slab by slab
    through one reused 64-bit buffer (``np.bincount`` of the whole map would first copy it to
    64-bit integers: 8 bytes a voxel)."""
    labels = np.asarray(labels)
    counts = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int64)
    if labels.ndim == 0:
        counts[int(labels)] += 1
        return counts
    if counts.size <= FEW_LABELS:
        # A few values are counted faster one by one (a comparison and a count in the labels'
        # own type) than by widening every voxel to 64 bits for bincount.
        equal = np.empty(min(slab, labels.shape[0]) * int(np.prod(labels.shape[1:], dtype=np.int64)), dtype=bool)
        for start in range(0, labels.shape[0], slab):
            piece = labels[start : start + slab].ravel()
            for value in range(counts.size):
                counts[value] += np.count_nonzero(np.equal(piece, value, out=equal[: piece.size]))
        return counts
    buffer = np.empty(min(slab, labels.shape[0]) * int(np.prod(labels.shape[1:], dtype=np.int64)), dtype=np.intp)
    for start in range(0, labels.shape[0], slab):
        piece = labels[start : start + slab]
        np.copyto(buffer[: piece.size], piece.ravel(), casting="unsafe")
        counts += np.bincount(buffer[: piece.size], minlength=counts.size)
    return counts


def _first_fraction(values: np.ndarray) -> float:
    flat = values.ravel()
    return float(flat[np.argmax(flat != np.round(flat))])


def write_label_map(volume: Volume, path: PathLike) -> Path:
    """Write an integer label map (uint8 if its max is below 256, else uint16), compressed."""
    path = Path(path)
    _check_image_extension(path)
    labels = label_array(volume.array)
    _write_sitk(_geometry_only_image(labels, volume), path, True)
    return path


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a segmentation: its label value in the label map, name and RGB color (0-1)."""

    label: int
    name: str
    color: Tuple[float, float, float]

    def __post_init__(self) -> None:
        if int(self.label) != self.label or not 0 < int(self.label) <= 65535:
            raise ValueError(f"segment {self.name!r}: label must be an integer in 1..65535, got {self.label}")
        if not self.name or any(c in self.name for c in "|\n\r"):
            # "|" separates header items and a newline would end the NRRD field.
            raise ValueError(f"segment name {self.name!r} is empty or contains '|' or a line break")
        color = tuple(float(c) for c in self.color)
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"segment {self.name!r}: color must be three floats in 0..1, got {self.color}")
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "color", color)


def _segmentation_dict(labels: np.ndarray, volume: Volume, segments: Sequence[SegmentInfo]) -> dict:
    """The dict that ``slicerio.write_segmentation`` writes, for a single-layer label map.

    slicerio's conventions: ``voxels`` is indexed (i, j, k), i.e. the transpose of our
    (k, j, i) arrays (it writes with pynrrd's default Fortran index order); ``ijkToLPS`` is
    the 4x4 IJK-to-LPS matrix and the header is written with ``space: left-posterior-superior``.
    """
    size = volume.grid.size
    # Slicer reads one extent per layer from the first segment, so give every segment the
    # full extent (slicerio.extract_segments does the same for the same reason).
    full_extent = [0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1]
    records = [
        {
            "id": f"Segment_{segment.label}",
            "name": segment.name,
            "nameAutoGenerated": False,
            "color": [round(c, 6) for c in segment.color],
            "colorAutoGenerated": False,
            "labelValue": segment.label,
            "layer": 0,
            "extent": full_extent,
        }
        for segment in segments
    ]
    return {
        # A view, not a copy: pynrrd writes it in Fortran order, i.e. the bytes of ``labels``.
        "voxels": labels.transpose(2, 1, 0),
        "ijkToLPS": volume.grid.ijk_to_lps(),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": records,
    }


def write_segmentation(labels: Volume, segments: Sequence[SegmentInfo], path: PathLike) -> Path:
    """Write a label map as a 3D Slicer segmentation (``.seg.nrrd``) with segment names and colors.

    Every nonzero label value in ``labels`` must be described in ``segments`` (voxels of an
    unnamed label would be silently dropped by Slicer); segments whose label does not occur
    are written as empty segments.
    """
    import slicerio  # imported here: only this writer needs it

    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise ValueError(f"{path}: a segmentation file must end in .seg.nrrd")
    values = label_array(labels.array, "segmentation label map")
    _check_segments(values, segments)
    segmentation = _segmentation_dict(values, labels, segments)
    with atomic_output(path) as temporary:
        slicerio.write_segmentation(str(temporary), segmentation, compression_level=GZIP_LEVEL)
    logger.debug("wrote segmentation %s with %d segments", path, len(segments))
    return path


def _check_segments(values: np.ndarray, segments: Sequence[SegmentInfo]) -> None:
    label_values = [s.label for s in segments]
    if len(set(label_values)) != len(label_values):
        raise ValueError(f"two segments share a label value: {sorted(label_values)}")
    names = [s.name for s in segments]
    if len(set(names)) != len(names):
        raise ValueError(f"two segments share a name: {sorted(names)}")
    present = set(int(v) for v in np.flatnonzero(label_counts(values))) - {0}
    unnamed = sorted(present - set(label_values))
    if unnamed:
        raise ValueError(f"label values {unnamed} occur in the label map but have no SegmentInfo")


def to_jsonable(value: Any) -> Any:
    """``value`` made of plain JSON types: numpy scalars/arrays, paths, tuples and dataclasses converted.

    Non-finite floats become None, since JSON has no NaN.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v) for v in items]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"cannot write a {type(value).__name__} to JSON")


def write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as UTF-8 JSON, indented by 2, converting numpy values (see :func:`to_jsonable`)."""
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def record_in_metadata(package: PathLike, keys: Sequence[str], value: Any) -> Path:
    """Set ``value`` at the nested ``keys`` of a model package's metadata file (creating the
    dictionaries on the way), rewritten whole and atomically; every other entry is kept."""
    from .package_files import METADATA_FILE

    path = Path(package) / METADATA_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return write_json(data, path)


def write_png(rgb: np.ndarray, path: PathLike) -> Path:
    """Write an (H, W, 3) or (H, W, 4) uint8 array, or an (H, W) grayscale one, as PNG."""
    from PIL import Image

    path = Path(path)
    array = np.asarray(rgb)
    if array.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"PNG pixels must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    image = Image.fromarray(np.ascontiguousarray(array))
    with atomic_output(path) as temporary:
        image.save(str(temporary), format="PNG")
    return path


__all__: List[str] = [
    "IMAGE_EXTENSIONS",
    "SegmentInfo",
    "atomic_output",
    "case_output_directory",
    "label_array",
    "to_jsonable",
    "write_image",
    "write_json",
    "write_label_map",
    "write_png",
    "write_segmentation",
]
