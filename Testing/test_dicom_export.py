"""--dicom-out: the label map as a DICOM SEG and each heat map as a Parametric Map, read back with
highdicom/pydicom: on the source's slices, equal to the NRRD outputs, referencing the source."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.misc import is_dicom

from CTExplainLib.cli import main
from CTExplainLib.demo_models import LUNG, untrained_package
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import InputSpec, load_package
from CTExplainLib.models_catalog import locate_package
from CTExplainLib.outputs.dicom_export import HEAT_STEPS, CaseDicom, cielab_color, heat_values, write_segmentation_dicom
from CTExplainLib.writing import SegmentInfo

SHIPPED_SEGMENTER = "chest-ct-segmenter"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """Untrained small packages (fast on CPU); the segmenter's segments are the shipped chest
    segmenter's, with its names and colours."""
    folder = tmp_path_factory.mktemp("tiny")
    spec = InputSpec(3, [LUNG], spacing=(8.0, 8.0, 8.0), size=(32, 32, 16), orientation="LPS")
    classifier = untrained_package(folder / "cls", "cls", "multilabel", "CompactCNN", ["finding"], spec, {"channels": [4, 8]})
    names = [c.name for c in load_package(locate_package(SHIPPED_SEGMENTER)[0]).metadata.classes]
    segmenter = untrained_package(folder / "seg", "seg", "segmentation", "UNet", names, spec, {"channels": [4, 8], "num_res_units": 0})
    return classifier, segmenter


def _run(inputs: List[Path], out: Path, models: Tuple[Path, Path], *extra: str) -> int:
    return main(["explain", *map(str, inputs), "--out", str(out), "--model", str(models[0]), "--segmenter", str(models[1]),
                 "--device", "cpu", "--dicom-out", "--no-progress", *extra])


def _dicom_files(case: Path) -> List[Path]:
    return sorted(p for p in case.iterdir() if is_dicom(str(p)))


def _source_positions(case: Path) -> Dict[str, Tuple[float, ...]]:
    """SOP Instance UID (from the file meta where the dataset lost it) -> Image Position (Patient)."""
    positions = {}
    for path in _dicom_files(case):
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        uid = header.get("SOPInstanceUID") or header.file_meta.MediaStorageSOPInstanceUID
        positions[str(uid)] = tuple(float(v) for v in header.ImagePositionPatient)
    return positions


def _frame_positions(dataset: pydicom.Dataset) -> List[Tuple[float, ...]]:
    return [tuple(float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient) for frame in dataset.PerFrameFunctionalGroupsSequence]


def _segment_number(seg: pydicom.Dataset, frame: pydicom.Dataset) -> int:
    """The segment of a SEG frame (in the shared functional groups when there is one segment)."""
    item = frame if "SegmentIdentificationSequence" in frame else seg.SharedFunctionalGroupsSequence[0]
    return int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def _slice_of(positions: List[Tuple[float, ...]], volume_positions: List[Tuple[float, ...]]) -> List[int]:
    """The index k of the NRRD slice at each frame's position (exactly one must match)."""
    indices = []
    for position in positions:
        matches = [k for k, p in enumerate(volume_positions) if np.allclose(p, position, atol=1e-4)]
        assert len(matches) == 1, f"frame at {position} matches slices {matches}"
        indices.append(matches[0])
    return indices


def _nrrd(path: Path) -> Tuple[np.ndarray, List[Tuple[float, ...]]]:
    image = sitk.ReadImage(str(path))
    size = image.GetSize()
    positions = [image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(size[2])]
    return sitk.GetArrayFromImage(image), positions


def check_case(case: Path, folder: Path, keep_phi: bool) -> pydicom.Dataset:
    """Every assertion of the acceptance on one case's outputs; returns the SEG."""
    record = json.loads((folder / "result.json").read_text())
    sources = _source_positions(case)
    source_frame = pydicom.dcmread(str(_dicom_files(case)[0]), stop_before_pixels=True)
    labels, label_positions = _nrrd(folder / "labels.nrrd")

    seg = hd.seg.segread(str(folder / record["dicom_segmentation"]))
    # Every frame lies on a source slice, and references that slice.
    positions = _frame_positions(seg)
    assert set(positions) <= set(sources.values())
    for frame, position in zip(seg.PerFrameFunctionalGroupsSequence, positions):
        derived = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert sources[derived] == position
    # Voxels: each segment's frames equal the NRRD label map there; the omitted frames are empty.
    segments = {s["name"]: s for s in record["segments"]}
    numbers = seg.PerFrameFunctionalGroupsSequence
    pixels = seg.pixel_array
    slices = _slice_of(positions, label_positions)
    for description in seg.SegmentSequence:
        segment = segments[description.SegmentLabel]
        expected = labels == segment["label"]
        frames = [f for f, item in enumerate(numbers) if _segment_number(seg, item) == description.SegmentNumber]
        for f in frames:
            assert np.array_equal(pixels[f].astype(bool), expected[slices[f]]), (description.SegmentLabel, slices[f])
        stored = {slices[f] for f in frames}
        assert not any(expected[k].any() for k in range(labels.shape[0]) if k not in stored), "a non-empty slice was left out"
        # Name and colour as in the package (CIELab of its RGB).
        assert tuple(description.RecommendedDisplayCIELabValue) == cielab_color(segment["color"]).value
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(description.RecommendedDisplayCIELabValue)).to_rgb()
        assert np.abs(np.array(rgb) - np.round(np.array(segment["color"]) * 255)).max() <= 1
    assert sorted(d.SegmentLabel for d in seg.SegmentSequence) == sorted(segments)

    # Parametric map: frames on the source slices, values equal to the NRRD heat map.
    for finding in record["findings"]:
        if not finding.get("heat_map"):
            continue
        pmap = pydicom.dcmread(str(folder / finding["dicom_heat_map"]))
        heat, heat_positions = _nrrd(folder / finding["heat_map"])
        frame_positions = _frame_positions(pmap)
        assert sorted(frame_positions) == sorted(sources.values()), "one frame per source slice"
        values = heat_values(pmap)
        for f, k in enumerate(_slice_of(frame_positions, heat_positions)):
            assert np.array_equal(values[f], heat[k]), k
        assert np.array_equal(np.rint(heat * HEAT_STEPS) / HEAT_STEPS, heat), "NRRD maps are in steps of 1/1024"

    # References: the source series, its instances and its frame of reference.
    for dataset in (seg, pmap):
        assert dataset.FrameOfReferenceUID == source_frame.FrameOfReferenceUID
        referenced = dataset.ReferencedSeriesSequence[0]
        assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == set(sources)
        if source_frame.get("SeriesInstanceUID"):
            assert referenced.SeriesInstanceUID == source_frame.SeriesInstanceUID
            assert dataset.StudyInstanceUID == source_frame.StudyInstanceUID
        # Patient module: present as DICOM requires, values only with --keep-phi; nothing else identifying.
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate"):
            assert keyword in dataset
            assert str(dataset.get(keyword) or "") == (str(source_frame.get(keyword) or "") if keep_phi else "")
        for keyword in ("InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber", "ReferringPhysicianName", "OperatorsName"):
            source_value = str(source_frame.get(keyword) or "")
            assert not source_value or str(dataset.get(keyword) or "") != source_value, keyword
    return seg


@pytest.mark.slow
def test_totalsegmentator_dicom_and_a_nifti(data_dir: Path, tiny_models, tmp_path: Path, capsys) -> None:
    """The JPEG 2000 DICOM case, whose dataset lost its Study/Series/SOP UIDs (the file meta
    keeps the instances'), beside a NIfTI that gets a one-line message and no DICOM."""
    case = data_dir / "totalsegmentator" / "example_ct_dicom"
    nifti = data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"
    assert _run([case, nifti], tmp_path, tiny_models) == 0
    captured = capsys.readouterr()
    seg = check_case(case, tmp_path / "example_ct_dicom", keep_phi=False)
    assert seg.NumberOfFrames > 20, "several segments on the 20 slices"
    record = json.loads((tmp_path / "example_ct_dicom" / "result.json").read_text())
    derived = [w for w in record["warnings"] if "derived from its images" in w]
    assert len(derived) == 2 and seg.StudyInstanceUID in derived[0], record["warnings"]
    # The NIfTI: no .dcm, one warning line naming the file, no traceback.
    assert not list((tmp_path / "example_ct_sm").glob("*.dcm"))
    lines = [line for line in captured.err.splitlines() if "--dicom-out" in line]
    assert len(lines) == 1 and str(nifti) in lines[0] and "not DICOM" in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.slow
def test_lidc_threshold_lungs_and_a_cam_with_phi_kept(data_dir: Path, tiny_models, tmp_path: Path) -> None:
    """LIDC-IDRI-0001 (133 slices of 512x512, a real Patient ID): its threshold lungs (the
    training data's) and a classifier's CAM, written as NRRD by the pipeline's writers and as
    DICOM with --keep-phi (the ID is copied); read back as for a real run."""
    from CTExplainLib.pipeline import ExplainOptions, explain_in_memory
    from CTExplainLib.writing import write_image, write_json, write_label_map
    from CTExplainTraining.datasets.lidc_lungs import filled_lungs

    case = data_dir / "lidc-idri-0001"
    volume = load_volume(case)
    labels = filled_lungs(volume).astype(np.uint8)
    segments = [SegmentInfo(1, "lungs", load_package(locate_package(SHIPPED_SEGMENTER)[0]).metadata.classes[1].color)]
    result = explain_in_memory(volume, load_package(tiny_models[0]), None, ExplainOptions(device="cpu"), lambda stage, fraction: None)
    name, heat = next(result.heat_maps())
    dicom = CaseDicom.start(volume, keep_phi=True, method="gradcam")
    assert dicom.warnings == [], "LIDC has all its UIDs"
    write_label_map(volume.with_array(labels), tmp_path / "labels.nrrd")
    write_image(volume.with_array(heat), tmp_path / "heatmap_finding.nrrd")
    record = {
        "segments": [{"label": s.label, "name": s.name, "color": list(s.color)} for s in segments],
        "dicom_segmentation": dicom.write_segmentation(labels, segments, {"name": SHIPPED_SEGMENTER, "version": "1.3.0"}, tmp_path),
        "findings": [{"name": name, "heat_map": "heatmap_finding.nrrd",
                      "dicom_heat_map": dicom.write_heat_map(heat, name, 0, "heatmap_finding", {"name": "cls"}, tmp_path)}],
    }
    write_json(record, tmp_path / "result.json")
    seg = check_case(case, tmp_path, keep_phi=True)
    assert seg.PatientID == "LIDC-IDRI-0001"
    assert seg.NumberOfFrames > 60, "the lungs span most of the chest"


@pytest.mark.slow
def test_segmentation_of_real_anatomy_without_phi(data_dir: Path, tmp_path: Path) -> None:
    """TotalSegmentator's own liver and lungs of the DICOM case, written as a SEG from the volume
    the core loads, with the shipped segmenter's names and colours; no patient data."""
    case = data_dir / "totalsegmentator" / "example_ct_dicom"
    volume = load_volume(case)
    reference = sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_seg_dicom.nii.gz"))
    names = json.loads((data_dir / "totalsegmentator" / "labels_total_v2.json").read_text())
    grid = sitk.Image(*volume.grid.size, sitk.sitkUInt8)
    volume.grid.apply_to(grid)
    resampled = sitk.GetArrayFromImage(sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    shipped = load_package(locate_package(SHIPPED_SEGMENTER)[0]).metadata.classes
    segments = [SegmentInfo(i, c.name, c.color) for i, c in enumerate(shipped) if i > 0]
    labels = np.zeros(resampled.shape, np.uint8)
    for segment in segments:
        values = [int(v) for v, n in names.items() if n == segment.name or n.startswith("lung_") and segment.name == "lungs"]
        labels[np.isin(resampled, values)] = segment.label
    assert (labels > 0).sum() > 100_000, "the liver of this case is in view"
    dicom = CaseDicom.start(volume, keep_phi=False, method="gradcam")
    path = write_segmentation_dicom(volume, labels, segments, dicom.source, {"name": SHIPPED_SEGMENTER, "version": "1.3.0"}, tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(path))
    positions = _frame_positions(seg)
    volume_positions = [tuple(volume.grid.origin + k * volume.grid.spacing[2] * volume.grid.direction[:, 2]) for k in range(volume.grid.size[2])]
    slices = _slice_of(positions, volume_positions)
    sources = _source_positions(case)
    assert set(positions) <= set(sources.values())
    by_number = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    label_of = {s.name: s.label for s in segments}
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        name = by_number[_segment_number(seg, frame)]
        assert np.array_equal(seg.pixel_array[f].astype(bool), labels[slices[f]] == label_of[name])
    liver = next(d for d in seg.SegmentSequence if d.SegmentLabel == "liver")
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    assert seg.PatientID == "" and seg.PatientName == ""


def test_series_without_frame_of_reference_gets_a_message_not_dicom(data_dir: Path) -> None:
    """Slicer's old GE head series has no Frame of Reference UID, so outputs could not be placed
    on it: one message naming the input, no DICOM (the NRRD outputs are written as usual)."""
    case = data_dir / "slicer-cthead"
    assert not any("FrameOfReferenceUID" in pydicom.dcmread(str(p), stop_before_pixels=True) for p in case.iterdir())
    dicom = CaseDicom.start(load_volume(case), keep_phi=False, method="gradcam")
    assert dicom.source is None
    assert len(dicom.warnings) == 1 and str(case) in dicom.warnings[0] and "Frame of Reference" in dicom.warnings[0]
    assert dicom.write_heat_map(np.zeros((1, 1, 1), np.float32), "x", 0, "heatmap_x", {}, Path("/nonexistent")) is None


@pytest.mark.slow
def test_a_series_with_a_missing_slice_is_written_on_the_loaded_grid(data_dir: Path, tmp_path: Path) -> None:
    """One slice deleted: the loader fills it by interpolation, so the map's frames follow the
    loaded grid (the 19 remaining slices' positions and the filled one) and reference the series."""
    from shutil import copytree

    case = Path(copytree(data_dir / "totalsegmentator" / "example_ct_dicom", tmp_path / "gap"))
    files = sorted(_dicom_files(case), key=lambda p: float(pydicom.dcmread(str(p), stop_before_pixels=True).ImagePositionPatient[2]))
    files[10].unlink()
    volume = load_volume(case)
    assert volume.metadata["regularised"] and volume.grid.size[2] == 20
    heat = np.rint(np.clip((volume.array.astype(np.float32) + 1000) / 2000, 0, 1) * HEAT_STEPS) / HEAT_STEPS  # the CT as a map
    dicom = CaseDicom.start(volume, keep_phi=False, method="gradcam")
    pmap = pydicom.dcmread(str(tmp_path / dicom.write_heat_map(heat.astype(np.float32), "ct", 0, "heatmap_ct", {"name": "cls"}, tmp_path)))
    grid_positions = [tuple(volume.grid.origin + k * volume.grid.spacing[2] * volume.grid.direction[:, 2]) for k in range(20)]
    positions = _frame_positions(pmap)
    values = heat_values(pmap)
    for f, k in enumerate(_slice_of(positions, grid_positions)):
        assert np.array_equal(values[f], heat[k])
    sources = _source_positions(case)
    assert len(set(positions) & set(sources.values())) == 19, "the remaining slices keep their positions"
    assert {str(i.ReferencedSOPInstanceUID) for i in pmap.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(sources)
