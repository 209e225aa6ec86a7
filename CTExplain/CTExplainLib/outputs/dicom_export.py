"""DICOM outputs for PACS (``--dicom-out``): the label map as a DICOM Segmentation (SEG) and each
heat map as a DICOM Parametric Map, made with highdicom, in the study of the source CT series.

Both reference the source series (its instances, in the Referenced Series Sequence and, when
the CT's slices are the source files one to one, per frame in the Derivation Image Sequence)
and carry the source's Frame of Reference UID and each frame's Image Position (Patient), so a
PACS viewer lays them on the CT they came from.

What is copied from the source, and why (``patient_fields``):

- Always: the identifiers the references need (Study, Series, SOP Instance and SOP Class UIDs,
  Frame of Reference UID), the slice geometry (rows, columns, pixel spacing, slice thickness,
  orientation, positions) and the modality. Nothing else of the source header is given to
  highdicom: it works from a minimal copy built here, so it cannot copy what that copy lacks.
- Patient and study attributes that DICOM requires to be present (type 2 in the Patient and
  General Study modules: Patient's Name, Patient ID, Patient's Birth Date, Patient's Sex,
  Study Date, Study Time, Study ID, Accession Number, Referring Physician's Name) are written
  EMPTY unless ``keep_phi`` (``--keep-phi``), which copies their values from the source.

A de-identified source may have lost its UIDs (TotalSegmentator's DICOM fixture has empty
Study, Series and SOP Instance UIDs in the dataset; its file meta keeps the instance UIDs).
SOP Instance and Class UIDs then come from the file meta; a missing Study or Series UID is
replaced by one derived from the Frame of Reference and instance UIDs (the same for every
output of the case and every run), and a warning says that a PACS will not file the outputs
with the source study.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless, generate_uid

from ..errors import InputError
from ..volume import Volume
from ..writing import SegmentInfo, atomic_output, label_array

LOG = logging.getLogger(__name__)

# Heat maps are computed in steps of 1/HEAT_STEPS (classify.HEAT_MAP_STEPS; not imported, since
# classify needs torch): a Parametric Map stores each as the integer count of steps (uint16),
# with a real-world value mapping of slope 1/HEAT_STEPS, so the values are kept exactly.
HEAT_STEPS = 1024

MANUFACTURER = "CTExplain"
SEG_SERIES_NUMBER = 9001
MAP_SERIES_NUMBER = 9101  # + the finding's index

# Patient and General Study attributes of type 2 (present, possibly empty) that highdicom copies
# from the first source image; empty unless keep_phi.
PATIENT_FIELDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
GEOMETRY_FIELDS = ("Rows", "Columns", "PixelSpacing", "SliceThickness", "ImageOrientationPatient", "ImagePositionPatient")


@dataclass
class DicomSource:
    """The source CT series as highdicom needs it: minimal copies of its slice headers in stack
    order (``headers``), whether the volume's slices are those files one to one, and warnings."""

    headers: List[Dataset]
    one_to_one: bool
    warnings: List[str]


def is_dicom_volume(volume: Volume) -> bool:
    return volume.metadata.get("format") == "dicom" and bool(volume.metadata.get("slice_paths"))


def _uid(header: Dataset, keyword: str, meta_keyword: str = "") -> str:
    value = str(header.get(keyword, "") or "")
    if not value and meta_keyword and hasattr(header, "file_meta"):
        value = str(header.file_meta.get(meta_keyword, "") or "")
    return value


def _minimal_header(header: Dataset, keep_phi: bool) -> Dataset:
    """The attributes of ``header`` the outputs need (see the module docstring), nothing else."""
    minimal = Dataset()
    minimal.SOPClassUID = _uid(header, "SOPClassUID", "MediaStorageSOPClassUID")
    minimal.SOPInstanceUID = _uid(header, "SOPInstanceUID", "MediaStorageSOPInstanceUID")
    minimal.StudyInstanceUID = _uid(header, "StudyInstanceUID")
    minimal.SeriesInstanceUID = _uid(header, "SeriesInstanceUID")
    minimal.FrameOfReferenceUID = _uid(header, "FrameOfReferenceUID")
    minimal.Modality = header.get("Modality", "") or "CT"
    for keyword in GEOMETRY_FIELDS:
        if keyword in header:
            setattr(minimal, keyword, header.data_element(keyword).value)
    for keyword in PATIENT_FIELDS:
        setattr(minimal, keyword, header.get(keyword, "") if keep_phi else "")
    if keep_phi and "SpecificCharacterSet" in header:
        minimal.SpecificCharacterSet = header.SpecificCharacterSet
    return minimal


def _fill_missing_uids(headers: List[Dataset], source: str) -> List[str]:
    """Give headers that lost their UIDs derived ones (see the module docstring); the warnings."""
    warnings: List[str] = []
    frame = headers[0].FrameOfReferenceUID
    if not frame:
        raise InputError(source, "has no Frame of Reference UID: --dicom-out needs one to place its outputs")
    for header in headers:
        if not header.SOPInstanceUID:
            header.SOPInstanceUID = generate_uid(entropy_srcs=[frame, "instance", str(header.ImagePositionPatient)])
    instances = [h.SOPInstanceUID for h in headers]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {h.get(keyword, "") for h in headers}
        if values == {""}:
            derived = generate_uid(entropy_srcs=[frame, keyword, *instances])
            for header in headers:
                setattr(header, keyword, derived)
            warnings.append(
                f"the source series has no {keyword}; the DICOM outputs use {derived}, derived from its images, "
                "so a PACS will not file them with the source study"
            )
    return warnings


def dicom_source(volume: Volume, keep_phi: bool) -> DicomSource:
    """The source headers of a volume loaded from DICOM (see :func:`is_dicom_volume`)."""
    paths = [Path(p) for p in volume.metadata["slice_paths"]]
    headers = [_minimal_header(pydicom.dcmread(str(p), stop_before_pixels=True, force=True), keep_phi) for p in paths]
    warnings = _fill_missing_uids(headers, str(volume.metadata.get("source", paths[0].parent)))
    one_to_one = len(headers) == volume.grid.size[2] and not volume.metadata.get("regularised", False)
    return DicomSource(headers, one_to_one, warnings)


def _plane_positions(volume: Volume):
    """Each slice's Image Position (Patient) from the volume's grid, for stacks that are not the
    source files one to one (resampled across missing slices)."""
    import highdicom as hd

    grid = volume.grid
    origin, step = np.asarray(grid.origin, float), np.asarray(grid.direction, float)[:, 2] * grid.spacing[2]
    return [hd.PlanePositionSequence("PATIENT", [float(v) for v in origin + k * step]) for k in range(grid.size[2])]


def _geometry(volume: Volume, source: DicomSource) -> Dict[str, object]:
    """highdicom's geometry arguments: derived from the source images when they are the slices."""
    if source.one_to_one:
        return {}
    import highdicom as hd

    grid = volume.grid
    direction = np.asarray(grid.direction, float)
    return {
        "plane_positions": _plane_positions(volume),
        "plane_orientation": hd.PlaneOrientationSequence("PATIENT", [float(v) for v in (*direction[:, 0], *direction[:, 1])]),
        "pixel_measures": hd.PixelMeasuresSequence((float(grid.spacing[1]), float(grid.spacing[0])), float(grid.spacing[2])),
    }


def _segment_codes(name: str):
    """(category, type) codes of a segment: SNOMED CT's anatomical structure named like it when
    pydicom knows one (lungs -> Lung, liver -> Liver), else the generic "Tissue"; the segment's
    own name is always its Segment Label."""
    from pydicom.sr.codedict import codes

    singular = name[:-1] if name.endswith("s") and not name.endswith("ss") else name
    key = "".join(part.capitalize() for part in singular.replace("-", " ").replace("_", " ").split())
    try:
        return codes.SCT.AnatomicalStructure, getattr(codes.SCT, key)
    except AttributeError:
        return codes.SCT.Tissue, codes.SCT.Tissue


def cielab_color(rgb: Sequence[float]):
    """A segment's colour (RGB in 0..1, as in the package) as the CIELab colour DICOM stores."""
    import highdicom as hd

    r, g, b = (int(round(float(c) * 255)) for c in rgb)
    return hd.color.CIELabColor.from_rgb(r, g, b)


def _algorithm(identity: Dict[str, object]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=str(identity.get("name", "CTExplain")),
        family=codes.DCM.ArtificialIntelligence,
        version=str(identity.get("version", "")) or "unknown",
    )


def _common(identity: Dict[str, object]) -> Dict[str, object]:
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": str(identity.get("name", "CTExplain")),
        "software_versions": str(identity.get("version", "")) or "unknown",
        "device_serial_number": "none",
    }


def write_segmentation_dicom(
    volume: Volume,
    labels: np.ndarray,
    segments: Sequence[SegmentInfo],
    source: DicomSource,
    segmenter: Dict[str, object],
    path: Path,
) -> Path:
    """The label map (on ``volume``'s grid) as a binary DICOM SEG of one segment per package
    segment (name and colour kept), referencing the source series; written atomically."""
    import highdicom as hd

    values = label_array(labels)
    ordered = sorted(segments, key=lambda s: s.label)
    # DICOM numbers segments 1..N; the package's labels are its class indices, 1..N as well,
    # but the map is renumbered through a lookup so that any labels would do.
    lookup = np.zeros(int(max([s.label for s in ordered] + [int(values.max()) if values.size else 0])) + 1, dtype=np.uint8)
    for number, segment in enumerate(ordered, start=1):
        lookup[segment.label] = number
    descriptions = []
    for number, segment in enumerate(ordered, start=1):
        category, kind = _segment_codes(segment.name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment.name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=_algorithm(segmenter),
                display_color=cielab_color(segment.color),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=source.headers,
        pixel_array=lookup[values],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        series_description=f"CTExplain segmentation ({segmenter.get('name', '')})"[:64],
        content_label="SEGMENTS",
        content_description="research use only, not for clinical use"[:64],
        **_common(segmenter),
        **_geometry(volume, source),
    )
    return _save(seg, path)


def write_parametric_map_dicom(
    volume: Volume,
    heat: np.ndarray,
    finding: str,
    index: int,
    method: str,
    source: DicomSource,
    classifier: Dict[str, object],
    path: Path,
) -> Path:
    """A heat map in [0, 1] (steps of 1/1024, on ``volume``'s grid) as a DICOM Parametric Map
    storing the step counts (uint16) with a real-world value mapping back to [0, 1]."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    steps = np.rint(np.clip(heat, 0.0, 1.0) * HEAT_STEPS).astype(np.uint16)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CAM",
        lut_explanation=f"{method} of {finding}"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0, HEAT_STEPS),
        slope=1.0 / HEAT_STEPS,
        intercept=0.0,
    )
    pmap = hd.pm.ParametricMap(
        source_images=source.headers,
        pixel_array=steps,
        series_instance_uid=hd.UID(),
        series_number=MAP_SERIES_NUMBER + index,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=HEAT_STEPS / 2, window_width=HEAT_STEPS)],
        # Lossless JPEG-LS (pyjpegls comes with highdicom): on LIDC-IDRI-0001 1.0 MB in 5.7 s
        # instead of 70 MB in 9.7 s uncompressed. A binary SEG allows only JPEG 2000 and stays
        # uncompressed (bit-packed, empty frames left out).
        transfer_syntax_uid=JPEGLSLossless,
        series_description=f"CTExplain {method} {finding}"[:64],
        content_label="HEATMAP",
        content_description="research use only, not for clinical use"[:64],
        **_common(classifier),
        **_geometry(volume, source),
    )
    return _save(pmap, path)


def _save(dataset: Dataset, path: Path) -> Path:
    path = Path(path)
    with atomic_output(path) as temporary:
        dataset.save_as(str(temporary), enforce_file_format=True)
    return path


SEGMENTATION_FILE = "segmentation.dcm"


class CaseDicom:
    """``--dicom-out`` for one case: :meth:`start` reads the source headers once, then the SEG
    and each finding's Parametric Map are written into the case folder. For an input that is not
    DICOM it writes nothing and ``warnings`` holds the one line that says so."""

    def __init__(self, volume: Volume, source: Optional[DicomSource], method: str, warnings: List[str]) -> None:
        self.volume, self.source, self.method, self.warnings = volume, source, method, warnings

    @classmethod
    def start(cls, volume: Volume, keep_phi: bool, method: str) -> "CaseDicom":
        if not is_dicom_volume(volume):
            kind = volume.metadata.get("format") or "not DICOM"
            message = f"--dicom-out: {volume.metadata.get('source', 'the input')} is {kind}, not DICOM: no DICOM outputs written"
            return cls(volume, None, method, [message])
        try:
            source = dicom_source(volume, keep_phi)
        except InputError as exc:  # a series the outputs cannot reference: the NRRD outputs still come
            return cls(volume, None, method, [f"--dicom-out: {exc}: no DICOM outputs written"])
        return cls(volume, source, method, list(source.warnings))

    def write_segmentation(self, labels: np.ndarray, segments: Sequence[SegmentInfo], segmenter: Dict[str, object], folder: Path) -> Optional[str]:
        """The SEG as ``folder/segmentation.dcm``; its file name, or None without a DICOM source."""
        if self.source is None:
            return None
        write_segmentation_dicom(self.volume, labels, segments, self.source, segmenter, Path(folder) / SEGMENTATION_FILE)
        return SEGMENTATION_FILE

    def write_heat_map(self, heat: np.ndarray, finding: str, index: int, file_stem: str, classifier: Dict[str, object], folder: Path) -> Optional[str]:
        """The finding's Parametric Map as ``folder/<file_stem>.dcm``; its file name, or None."""
        if self.source is None:
            return None
        name = f"{file_stem}.dcm"
        write_parametric_map_dicom(self.volume, heat, finding, index, self.method, self.source, classifier, Path(folder) / name)
        return name


def heat_values(dataset: Dataset) -> np.ndarray:
    """The frames of a Parametric Map written here as heat values in [0, 1] (float32), in the
    order they are stored (highdicom sorts frames by position: each frame's Plane Position
    Sequence says which slice it is)."""
    mapping = dataset.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    stored = dataset.pixel_array.astype(np.float32)
    if stored.ndim == 2:
        stored = stored[None]
    return stored * np.float32(mapping.RealWorldValueSlope) + np.float32(mapping.RealWorldValueIntercept)


__all__ = [
    "CaseDicom",
    "DicomSource",
    "cielab_color",
    "dicom_source",
    "is_dicom_volume",
    "heat_values",
    "write_parametric_map_dicom",
    "write_segmentation_dicom",
]
