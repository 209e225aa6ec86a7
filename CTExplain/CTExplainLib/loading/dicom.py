"""DICOM series: find the series in a folder, check the slice stack, decode it to HU.

Headers are read with pydicom (no pixels) to group files by SeriesInstanceUID and to
check the geometry before any pixel is decoded; pixels are then decoded by pydicom
(pylibjpeg / GDCM plugins for compressed transfer syntaxes, JPEG 2000 included).

Slices are ordered along the slice normal (cross product of the ImageOrientationPatient
row and column vectors, dotted with ImagePositionPatient), as ITK and Slicer order them,
never by file name or InstanceNumber. Positions "z" in messages are millimetres along
that normal (for an axial series, the LPS z coordinate).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom

from ..errors import InputError
from ..volume import Grid, Volume
from .metadata import volume_metadata

LOG = logging.getLogger(__name__)

PHI_FIELDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyInstanceUID",
)

# Tolerances of the stack checks, in the units the comments give.
DUPLICATE_MM = 0.01  # two slices closer than this along the normal share a position
MISSING_GAP_RATIO = 1.5  # a gap this many times the median gap means slices are missing
UNEVEN_FRACTION = 0.1  # a slice further than this fraction of the spacing from a regular stack
TILT_PIXEL_FRACTION = 0.25  # in-plane drift of the stack beyond this fraction of a pixel is tilt
ORIENTATION_TOLERANCE = 1e-3  # direction cosines that differ less are the same orientation


@dataclass
class DicomSeriesInfo:
    """One series found in a folder, and whether it can be loaded as a CT volume."""

    series_uid: str
    modality: Optional[str]
    description: str
    series_number: Optional[int]
    sop_class: str
    file_count: int
    slice_count: int
    is_localizer: bool
    usable: bool
    reason: str = ""
    files: List[Path] = field(default_factory=list, repr=False)

    def label(self) -> str:
        """A short human description for messages: UID, modality, description, slices."""
        uid = self.series_uid or "(no SeriesInstanceUID)"
        text = f"{uid} ({self.modality or 'no modality'}, {self.slice_count} slices"
        text += f", '{self.description}'" if self.description else ""
        return text + ")" + ("" if self.usable else f" [not loadable: {self.reason}]")


@dataclass
class _Slice:
    """What the stack checks need from one file's header."""

    path: Path
    header: Dataset
    row: np.ndarray
    column: np.ndarray
    position: np.ndarray
    rows: int
    columns: int
    pixel_spacing: Tuple[float, float]  # (between rows, between columns), as DICOM gives it
    slope: float
    intercept: float

    @property
    def instance_uid(self) -> str:
        uid = str(self.header.get("SOPInstanceUID", "") or "")
        if not uid and hasattr(self.header, "file_meta"):
            uid = str(self.header.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        return uid

    def same_geometry(self, other: "_Slice") -> bool:
        return (
            (self.rows, self.columns) == (other.rows, other.columns)
            and np.allclose(self.row, other.row, atol=ORIENTATION_TOLERANCE)
            and np.allclose(self.column, other.column, atol=ORIENTATION_TOLERANCE)
            and np.allclose(self.pixel_spacing, other.pixel_spacing, rtol=1e-3)
        )


# ---------------------------------------------------------------- reading headers


class _Unreadable(Exception):
    """A file that announces itself as DICOM but whose header cannot be parsed."""


def _read_header(path: Path) -> Optional[Dataset]:
    """The header of a DICOM file, or None if the file is not DICOM."""
    has_preamble = is_dicom(str(path))
    if not has_preamble and path.suffix.lower() != ".dcm":
        return None
    try:
        # Files without the 128-byte preamble (old exports) are still DICOM when named .dcm.
        header = pydicom.dcmread(str(path), stop_before_pixels=True, force=not has_preamble)
    except Exception as exc:  # pydicom raises many types on damaged files
        if has_preamble:
            raise _Unreadable(f"has a DICOM preamble but its header cannot be read ({exc})") from exc
        return None
    if not has_preamble and "SOPClassUID" not in header and "Rows" not in header:
        return None  # force=True parses almost any bytes; these are not DICOM
    return header


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM file (with the standard preamble, or a readable .dcm without it)."""
    try:
        return _read_header(path) is not None
    except _Unreadable:
        return True


def _sop_class(header: Dataset) -> str:
    uid = header.get("SOPClassUID", "") or ""
    if not uid and hasattr(header, "file_meta"):
        uid = header.file_meta.get("MediaStorageSOPClassUID", "") or ""
    if not uid:
        return "unknown SOP class"
    return getattr(uid, "name", str(uid)) or str(uid)


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _slice_problem(header: Dataset) -> str:
    """Why a header is not a slice of a volume; empty if it is one."""
    try:
        return _geometry_problem(header)
    except Exception as exc:  # pydicom converts values lazily: a malformed one raises here
        return f"unreadable image tags ({exc})"


def _geometry_problem(header: Dataset) -> str:
    if int(_number(header.get("NumberOfFrames", 1), 1)) > 1:
        return "multi-frame (enhanced) image, not supported yet"
    for keyword in ("Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        value = header.get(keyword)
        if value is None or value == "" or (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 0):
            return f"no {keyword} (not an image slice with a position: {_sop_class(header)})"
    if len(header.ImageOrientationPatient) != 6 or len(header.ImagePositionPatient) != 3 or len(header.PixelSpacing) != 2:
        return "malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing"
    if int(_number(header.get("SamplesPerPixel", 1), 1)) != 1:
        return "colour image (e.g. a screen capture), not a CT slice"
    return ""


def _to_slice(path: Path, header: Dataset) -> _Slice:
    try:
        orientation = np.array([float(v) for v in header.ImageOrientationPatient])
        position = np.array([float(v) for v in header.ImagePositionPatient])
        spacing = tuple(float(v) for v in header.PixelSpacing)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"has unreadable geometry tags ({exc})") from exc
    if not (np.all(np.isfinite(orientation)) and np.all(np.isfinite(position)) and all(s > 0 for s in spacing)):
        raise InputError(path, "has non-finite ImageOrientationPatient/ImagePositionPatient or non-positive PixelSpacing")
    return _Slice(
        path=path,
        header=header,
        row=orientation[:3],
        column=orientation[3:],
        position=position,
        rows=int(header.Rows),
        columns=int(header.Columns),
        pixel_spacing=(spacing[0], spacing[1]),
        slope=_number(header.get("RescaleSlope", 1), 1.0) or 1.0,
        intercept=_number(header.get("RescaleIntercept", 0), 0.0),
    )


def _is_localizer(header: Dataset) -> bool:
    image_type = header.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return any(str(v).upper() == "LOCALIZER" for v in image_type)


@dataclass
class _Scan:
    """The DICOM headers directly in a folder, grouped by SeriesInstanceUID."""

    groups: Dict[str, List[Tuple[Path, Dataset]]]
    unreadable: Dict[Path, str]

    def infos(self) -> List[DicomSeriesInfo]:
        return _ordered([_series_info(uid, items) for uid, items in self.groups.items()])


def _scan(folder: Path) -> _Scan:
    groups: Dict[str, List[Tuple[Path, Dataset]]] = {}
    unreadable: Dict[Path, str] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            header = _read_header(path)
        except _Unreadable as exc:
            unreadable[path] = str(exc)
            continue
        if header is not None:
            groups.setdefault(str(header.get("SeriesInstanceUID", "") or ""), []).append((path, header))
    return _Scan(groups, unreadable)


def _series_info(uid: str, items: List[Tuple[Path, Dataset]]) -> DicomSeriesInfo:
    first = items[0][1]
    problems = [_slice_problem(h) for _, h in items]
    localizers = [_is_localizer(h) for _, h in items]
    slices = sum(1 for p, loc in zip(problems, localizers) if not p and not loc)
    is_localizer = any(localizers) and slices == 0
    if is_localizer:
        reason = "localizer (scout) images"
    elif slices == 0:
        reason = next(p for p in problems if p)
    else:
        reason = ""
    number = _number(first.get("SeriesNumber"), math.nan)
    return DicomSeriesInfo(
        series_uid=uid,
        modality=str(first.get("Modality", "") or "") or None,
        description=str(first.get("SeriesDescription", "") or ""),
        series_number=None if math.isnan(number) else int(number),
        sop_class=_sop_class(first),
        file_count=len(items),
        slice_count=slices,
        is_localizer=is_localizer,
        usable=slices > 0,
        reason=reason,
        files=[p for p, _ in items],
    )


def _ordered(infos: List[DicomSeriesInfo]) -> List[DicomSeriesInfo]:
    """Loadable CT first, then by slice count, series number and UID, so choices are reproducible."""
    return sorted(
        infos,
        key=lambda s: (not s.usable, s.modality != "CT", -s.slice_count, s.series_number if s.series_number is not None else 1 << 30, s.series_uid),
    )


def list_dicom_series(folder: Path) -> List[DicomSeriesInfo]:
    """Every series in ``folder`` (not its subfolders), loadable CT series with the most slices first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    return _scan(folder).infos()


# ---------------------------------------------------------------- choosing a series


def _choose(folder: Path, infos: List[DicomSeriesInfo], series_uid: Optional[str], requested: str) -> Tuple[DicomSeriesInfo, str]:
    """The series to load and why it was chosen; ``requested`` says who named ``series_uid``."""
    if series_uid is not None:
        match = [s for s in infos if s.series_uid == series_uid]
        if not match:
            found = "; ".join(s.label() for s in infos) or "none"
            raise InputError(folder, f"has no series with SeriesInstanceUID {series_uid} (series found: {found})")
        if not match[0].usable:
            raise InputError(folder, f"series {series_uid} cannot be loaded as a volume: {match[0].reason}")
        return match[0], requested
    usable = [s for s in infos if s.usable]
    if not usable:
        found = "; ".join(s.label() for s in infos)
        raise InputError(folder, f"holds no DICOM image series that can be loaded as a volume (found: {found})")
    chosen = usable[0]  # infos are ordered: CT first, then most slices
    if len(infos) == 1:
        return chosen, "the only series in the folder"
    others = "; ".join(s.label() for s in infos if s is not chosen)
    kind = "CT series" if chosen.modality == "CT" else "image series (no CT series found)"
    return chosen, f"the {kind} with the most slices among {len(infos)} series (others: {others})"


# ---------------------------------------------------------------- checking the stack


def _main_geometry(series: DicomSeriesInfo, slices: List[_Slice], warnings: List[str]) -> List[_Slice]:
    """Slices of the series' dominant orientation and size; others are dropped with a warning."""
    groups: List[List[_Slice]] = []
    for item in slices:
        for group in groups:
            if group[0].same_geometry(item):
                group.append(item)
                break
        else:
            groups.append([item])
    if len(groups) == 1:
        return slices
    groups.sort(key=len, reverse=True)
    main = groups[0]
    dropped = sum(len(g) for g in groups[1:])
    kinds = ", ".join(
        f"{len(g)} of {g[0].columns}x{g[0].rows} with row/column cosines {np.round(g[0].row, 3).tolist()}/{np.round(g[0].column, 3).tolist()}"
        for g in groups[1:]
    )
    message = (
        f"series {series.series_uid or '(no UID)'} mixes {len(groups)} orientations or image sizes: "
        f"loaded the {len(main)} slices of size {main[0].columns}x{main[0].rows}, ignored {dropped} others ({kinds})"
    )
    warnings.append(message)
    return main


def _normal(item: _Slice) -> np.ndarray:
    normal = np.cross(item.row, item.column)
    length = float(np.linalg.norm(normal))
    if length < 0.5:
        raise InputError(item.path, "has an ImageOrientationPatient whose row and column vectors are not orthogonal unit vectors")
    return normal / length


def _drop_duplicates(slices: List[_Slice], z: np.ndarray, warnings: List[str]) -> Tuple[List[_Slice], np.ndarray]:
    """Exact copies of a slice are dropped (warned); different images at one position are refused."""
    keep = [0]
    copies: List[float] = []
    clashes: List[Tuple[float, _Slice, _Slice]] = []
    for index in range(1, len(slices)):
        previous = slices[keep[-1]]
        if abs(z[index] - z[keep[-1]]) >= DUPLICATE_MM:
            keep.append(index)
        elif _same_image(previous, slices[index]):
            copies.append(float(z[index]))
        else:
            clashes.append((float(z[index]), previous, slices[index]))
    if clashes:
        where = ", ".join(f"z={at:.2f} ({a.path.name}, {b.path.name})" for at, a, b in clashes[:5])
        raise InputError(
            slices[0].path.parent,
            f"{len(clashes)} slice(s) share their position with another, different slice ({where}{', ...' if len(clashes) > 5 else ''}): "
            "the series seems to mix several acquisitions (phases, time points or reconstructions); "
            "loading it as one volume is not supported",
        )
    if copies:
        warnings.append(f"dropped {len(copies)} duplicate copies of slices at z={', '.join(f'{v:.2f}' for v in copies[:10])} mm")
    return [slices[i] for i in keep], z[keep]


def _same_image(a: _Slice, b: _Slice) -> bool:
    if a.instance_uid and a.instance_uid == b.instance_uid:
        return True
    return a.path.stat().st_size == b.path.stat().st_size and a.path.read_bytes() == b.path.read_bytes()


def _check_tilt(slices: List[_Slice], normal: np.ndarray, z: np.ndarray) -> None:
    """Refuse stacks whose slices drift in-plane: stacking them straight would shear the anatomy."""
    offsets = np.array([s.position - slices[0].position for s in slices])
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(lateral, axis=1)
    if drift.max() <= TILT_PIXEL_FRACTION * min(slices[0].pixel_spacing):
        return
    angle = math.degrees(math.atan2(float(drift[-1]), abs(float(z[-1] - z[0]))))
    tag = slices[0].header.get("GantryDetectorTilt")
    tilt = _number(tag, 0.0)
    tag_text = f", header GantryDetectorTilt {tilt:g} degrees" if tilt else ""
    raise InputError(
        slices[0].path.parent,
        f"slices are stacked along a direction {angle:.2f} degrees off the image-plane normal "
        f"(gantry tilt{tag_text}; in-plane drift up to {drift.max():.2f} mm): tilted series are not supported yet",
    )


@dataclass
class _StackPlan:
    """Where the output slices lie along the normal and how they are made from the input slices."""

    z: np.ndarray  # input slice positions, ascending
    spacing: float
    targets: Optional[np.ndarray] = None  # output positions when the stack must be regularised


def _plan_stack(slices: List[_Slice], z: np.ndarray, warnings: List[str], series_text: str) -> _StackPlan:
    if len(z) == 1:
        header = slices[0].header
        thickness = _number(header.get("SpacingBetweenSlices"), 0.0) or _number(header.get("SliceThickness"), 0.0) or 1.0
        return _StackPlan(z, abs(thickness))
    gaps = np.diff(z)
    median = float(np.median(gaps))
    span = float(z[-1] - z[0])
    regular = span / (len(z) - 1)
    missing_at = np.flatnonzero(gaps > MISSING_GAP_RATIO * median)
    deviation = np.abs(z - (z[0] + regular * np.arange(len(z))))
    if len(missing_at) == 0 and deviation.max() <= UNEVEN_FRACTION * regular:
        return _StackPlan(z, regular)
    count = int(math.floor(span / median + 1e-3)) + 1
    targets = z[0] + median * np.arange(count)
    resampled = f"resampled onto a regular grid of {count} slices {median:.3f} mm apart by linear interpolation along the slice normal"
    if len(missing_at):
        total = int(sum(round(gaps[i] / median) - 1 for i in missing_at))
        where = "; ".join(f"{round(gaps[i] / median) - 1} between z={z[i]:.2f} and z={z[i + 1]:.2f}" for i in missing_at[:10])
        warnings.append(f"{series_text}: {total} slice(s) missing (usual spacing {median:.3f} mm; {where} mm); {resampled}")
    else:
        off = np.flatnonzero(deviation > UNEVEN_FRACTION * regular)
        where = ", ".join(f"{z[i]:.2f}" for i in off[:10]) + (", ..." if len(off) > 10 else "")
        warnings.append(
            f"{series_text}: uneven slice spacing (gaps {gaps.min():.3f} to {gaps.max():.3f} mm, median {median:.3f} mm); "
            f"{len(off)} slice(s) off a regular stack, at z={where} mm; {resampled}"
        )
    return _StackPlan(z, median, targets)


# ---------------------------------------------------------------- pixels


def _decode(item: _Slice) -> np.ndarray:
    try:
        pixels = pydicom.dcmread(str(item.path), force=True).pixel_array
    except Exception as exc:  # decoders raise many types: missing plugin, corrupt stream, ...
        syntax = getattr(item.header, "file_meta", Dataset()).get("TransferSyntaxUID", "unknown transfer syntax")
        name = getattr(syntax, "name", str(syntax))
        raise InputError(item.path, f"pixel data cannot be decoded ({name}): {exc}") from exc
    if pixels.shape != (item.rows, item.columns):
        raise InputError(item.path, f"decoded pixels have shape {pixels.shape}, the header says {item.rows}x{item.columns}")
    return pixels


def _hounsfield(slices: List[_Slice]) -> np.ndarray:
    """Decoded slices in stack order, rescaled per slice; int16 when the values allow it."""
    integral = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in slices)
    shape = (len(slices), slices[0].rows, slices[0].columns)
    out = np.empty(shape, dtype=np.int16 if integral else np.float32)
    for k, item in enumerate(slices):
        pixels = _decode(item)
        if out.dtype == np.int16:
            values = pixels.astype(np.int32) * int(item.slope) + int(item.intercept)
            if values.min() < -32768 or values.max() > 32767:
                out = out.astype(np.float32)  # slices already written convert exactly
            out[k] = values
        else:
            out[k] = pixels.astype(np.float32) * np.float32(item.slope) + np.float32(item.intercept)
    return out


def _interpolate(array: np.ndarray, z: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-D linear interpolation along the slice normal: no library grid holds an irregular stack."""
    out = np.empty((len(targets),) + array.shape[1:], dtype=array.dtype)
    below = np.clip(np.searchsorted(z, targets, side="right") - 1, 0, len(z) - 2)
    for k, (target, index) in enumerate(zip(targets, below)):
        weight = (target - z[index]) / (z[index + 1] - z[index])
        if abs(weight) < 1e-6:
            out[k] = array[index]
        elif abs(weight - 1) < 1e-6:
            out[k] = array[index + 1]
        else:
            mixed = (1 - weight) * array[index].astype(np.float32) + weight * array[index + 1].astype(np.float32)
            out[k] = np.rint(mixed) if np.issubdtype(out.dtype, np.integer) else mixed
    return out


# ---------------------------------------------------------------- loading


def _phi(header: Dataset) -> Dict[str, str]:
    phi: Dict[str, str] = {}
    for keyword in PHI_FIELDS:
        value = header.get(keyword)
        if value not in (None, ""):
            phi[keyword] = str(value)
    return phi


def load_dicom(path: Path, series_uid: Optional[str] = None) -> Volume:
    """Load a DICOM series from a folder, or the series holding the file ``path``, as a Volume in HU."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    scan = _scan(folder)
    if path.is_file() and path in scan.unreadable:
        raise InputError(path, scan.unreadable[path])
    infos = scan.infos()
    if not infos:
        name, problem = next(iter(scan.unreadable.items()), (folder, "no DICOM files"))
        raise InputError(folder, f"holds no readable DICOM file ({len(scan.unreadable)} unreadable, e.g. {Path(name).name}: {problem})")
    requested = "requested by series_uid"
    if path.is_file():
        series_uid, requested = _series_of_file(path, scan.groups, series_uid), f"the series holding {path.name}"
    series, why = _choose(folder, infos, series_uid, requested)
    if len(infos) > 1:
        LOG.info("%s: loading series %s: %s", folder, series.series_uid, why)
    items = scan.groups[series.series_uid]
    slices = [_to_slice(p, h) for p, h in items if not _slice_problem(h) and not _is_localizer(h)]
    warnings: List[str] = []
    skipped = len(items) - len(slices)
    if skipped:
        warnings.append(f"ignored {skipped} file(s) of the series that are not volume slices (localizers or non-image objects)")
    if scan.unreadable:
        names = ", ".join(p.name for p in list(scan.unreadable)[:5])
        warnings.append(f"skipped {len(scan.unreadable)} DICOM file(s) of the folder whose header cannot be read ({names})")
    chose_among_several = series_uid is None and sum(1 for s in infos if s.usable) > 1
    return _build(path, series, why, slices, warnings, chose_among_several)


def _series_of_file(path: Path, groups: Dict[str, List[Tuple[Path, Dataset]]], series_uid: Optional[str]) -> str:
    for uid, items in groups.items():
        for file, header in items:
            if file.name == path.name:
                if series_uid is not None and series_uid != uid:
                    raise InputError(path, f"belongs to series {uid or '(no UID)'}, not to the requested series {series_uid}")
                problem = _slice_problem(header) or ("localizer (scout) image" if _is_localizer(header) else "")
                if problem:
                    raise InputError(path, f"is not a CT slice that can be loaded as a volume: {problem}")
                return uid
    raise InputError(path, "is not a DICOM file (and not a NIfTI, NRRD, MetaImage, PNG or JPEG image)")


def _build(path: Path, series: DicomSeriesInfo, why: str, slices: List[_Slice], warnings: List[str], chose: bool) -> Volume:
    series_text = f"series {series.series_uid or '(no UID)'}"
    slices = _main_geometry(series, slices, warnings)
    normal = _normal(slices[0])
    z = np.array([float(np.dot(s.position, normal)) for s in slices])
    order = np.argsort(z, kind="stable")
    slices, z = [slices[i] for i in order], z[order]
    slices, z = _drop_duplicates(slices, z, warnings)
    if len(slices) > 1:
        _check_tilt(slices, normal, z)
    plan = _plan_stack(slices, z, warnings, series_text)
    array = _hounsfield(slices)
    if plan.targets is not None:
        array = _interpolate(array, plan.z, plan.targets)
    first = slices[0]
    direction = np.column_stack([first.row, first.column, normal])
    grid = Grid(
        size=(array.shape[2], array.shape[1], array.shape[0]),
        spacing=(first.pixel_spacing[1], first.pixel_spacing[0], plan.spacing),
        origin=tuple(first.position),
        direction=direction,
    )
    modality = series.modality
    if modality != "CT":
        warnings.append(f"modality is {modality or 'not given'}, not CT: intensities may not be Hounsfield units")
    if chose:
        warnings.append(f"the folder holds several image series; loaded {series.label()}: {why}; pass series_uid to choose another")
    for message in warnings:
        LOG.warning("%s: %s", path, message)
    header = first.header
    metadata = volume_metadata(
        path,
        "dicom",
        "hu" if modality in ("CT", None) else "native",
        2 if array.shape[0] == 1 else 3,
        modality=modality,
        series_uid=series.series_uid or None,
        series_description=series.description or None,
        warnings=warnings,
        series_number=series.series_number,
        body_part_examined=str(header.get("BodyPartExamined", "") or "").strip() or None,
        series_choice=why,
        slice_files=len(slices),
        slice_paths=[str(s.path) for s in slices],  # in stack order: the DICOM outputs reference them
        regularised=plan.targets is not None,
        transfer_syntax=str(getattr(getattr(header, "file_meta", Dataset()).get("TransferSyntaxUID", ""), "name", "")),
    )
    LOG.info("loaded DICOM %s: %s, %d slices, size %s, spacing %s", path, series_text, len(slices), grid.size, grid.spacing)
    return Volume(array, grid, metadata=metadata, phi=_phi(header))
