"""Writers: exact geometry on reading back, Slicer segmentation metadata, atomicity, no PHI."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from PIL import Image

from CTExplainLib import writing
from CTExplainLib.volume import Grid, Volume
from CTExplainLib.writing import (
    SegmentInfo,
    atomic_output,
    case_output_directory,
    write_image,
    write_json,
    write_label_map,
    write_png,
    write_segmentation,
)


@pytest.fixture(scope="module")
def real_ct(data_dir: Path) -> Volume:
    return Volume.from_sitk(sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz")))


@pytest.fixture(scope="module")
def real_seg(data_dir: Path) -> Volume:
    return Volume.from_sitk(sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_seg.nii.gz")))


@pytest.fixture(scope="module")
def label_names(data_dir: Path) -> Dict[int, str]:
    raw = json.loads((data_dir / "totalsegmentator" / "labels_total_v2.json").read_text())
    return {int(k): v for k, v in raw.items()}


def oblique_left_handed_grid() -> Grid:
    """Rotated about two axes and mirrored: any axis swap, flip or sign slip shows up."""
    a, b = 0.4, -0.25
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    direction = rz @ rx @ np.diag([1.0, -1.0, 1.0])
    grid = Grid((11, 7, 5), (0.7, 1.3, 2.9), (12.5, -40.25, 73.0), direction)
    assert grid.is_left_handed()
    return grid


def asymmetric_array(grid: Grid, dtype=np.float32) -> np.ndarray:
    # Every voxel different, so a transposed or flipped read cannot match.
    return np.arange(np.prod(grid.shape), dtype=np.float64).reshape(grid.shape).astype(dtype)


def leftovers(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".partial-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz", ".nii"])
def test_real_ct_round_trips_with_grid_and_voxels(real_ct: Volume, tmp_path: Path, extension: str) -> None:
    path = write_image(real_ct, tmp_path / f"ct{extension}")
    back = sitk.ReadImage(str(path))
    assert Grid.of_image(back).same_as(real_ct.grid, tolerance=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(back), real_ct.array)
    assert sitk.GetArrayFromImage(back).dtype == real_ct.array.dtype
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("extension,tolerance", [(".nrrd", 1e-9), (".nii.gz", 1e-4)])
def test_oblique_left_handed_grid_round_trips(tmp_path: Path, extension: str, tolerance: float) -> None:
    grid = oblique_left_handed_grid()
    volume = Volume(asymmetric_array(grid), grid)
    back = sitk.ReadImage(str(write_image(volume, tmp_path / f"heat{extension}")))
    assert Grid.of_image(back).same_as(grid, tolerance=tolerance)
    assert np.array_equal(sitk.GetArrayFromImage(back), volume.array)
    # The physical position of one voxel, as a reader sees it, not only the matrices.
    assert np.allclose(back.TransformIndexToPhysicalPoint((10, 2, 3)), grid.index_to_point((10, 2, 3)), atol=1e-3)


def test_label_map_round_trips_as_uint8_or_uint16(real_seg: Volume, tmp_path: Path) -> None:
    as_float = real_seg.with_array(real_seg.array.astype(np.float32))
    back = sitk.ReadImage(str(write_label_map(as_float, tmp_path / "labels.nrrd")))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert Grid.of_image(back).same_as(real_seg.grid)
    assert np.array_equal(sitk.GetArrayFromImage(back), real_seg.array)

    wide = real_seg.with_array(real_seg.array.astype(np.int32) * 3)  # max 351
    back = sitk.ReadImage(str(write_label_map(wide, tmp_path / "wide.nii.gz")))
    assert back.GetPixelID() == sitk.sitkUInt16
    assert np.array_equal(sitk.GetArrayFromImage(back), wide.array)


@pytest.mark.parametrize("bad", [0.5, -1.0, float("nan"), 70000.0])
def test_label_map_rejects_non_label_values(real_seg: Volume, tmp_path: Path, bad: float) -> None:
    array = real_seg.array.astype(np.float32)
    array[3, 4, 5] = bad
    with pytest.raises(ValueError):
        write_label_map(real_seg.with_array(array), tmp_path / "bad.nrrd")
    assert list(tmp_path.iterdir()) == []


def segment_infos(label_values, names: Dict[int, str]) -> List[SegmentInfo]:
    infos = []
    for index, value in enumerate(label_values):
        color = ((index * 37 % 100) / 100.0, (index * 59 % 100) / 100.0, 0.25)
        infos.append(SegmentInfo(int(value), names.get(int(value), f"segment {value}"), color))
    return infos


def check_segmentation_file(path: Path, labels: Volume, infos: List[SegmentInfo]) -> None:
    # As SimpleITK (and Slicer's ITK-based reader) sees it.
    image = sitk.ReadImage(str(path))
    assert Grid.of_image(image).same_as(labels.grid, tolerance=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(image), labels.array)
    # As slicerio sees it: (i, j, k) voxels, an IJK-to-LPS matrix and the segment list.
    segmentation = slicerio.read_segmentation(str(path))
    assert np.allclose(segmentation["ijkToLPS"], labels.grid.ijk_to_lps(), atol=1e-9)
    assert np.array_equal(segmentation["voxels"], labels.array.transpose(2, 1, 0))
    by_name = {s["name"]: s for s in segmentation["segments"]}
    assert sorted(by_name) == sorted(info.name for info in infos)
    for info in infos:
        segment = by_name[info.name]
        assert segment["labelValue"] == info.label
        assert segment["layer"] == 0
        assert np.allclose(segment["color"], info.color, atol=1e-6)
        mask = slicerio.segment_mask(segmentation, info.name).transpose(2, 1, 0)
        assert np.array_equal(mask, labels.array == info.label)


def test_real_segmentation_reads_back_in_slicerio_and_sitk(real_seg: Volume, label_names: Dict[int, str], tmp_path: Path) -> None:
    labels = real_seg.with_array(real_seg.array)
    present = [v for v in np.unique(labels.array) if v != 0]
    infos = segment_infos(present, label_names)
    path = write_segmentation(labels, infos, tmp_path / "anatomy.seg.nrrd")
    check_segmentation_file(path, labels, infos)
    header = path.read_bytes()[:20000].decode("latin-1")
    assert "space: left-posterior-superior" in header
    assert "Segment0_Name:=spleen" in header and "Segment0_LabelValue:=1" in header
    assert leftovers(tmp_path) == []


def test_segmentation_on_oblique_left_handed_grid(tmp_path: Path) -> None:
    grid = oblique_left_handed_grid()
    array = np.zeros(grid.shape, dtype=np.uint8)
    array[1:3, 2:5, 1:4] = 2  # off-centre blocks, so a flip or transpose moves them
    array[4, 6, 10] = 7
    labels = Volume(array, grid)
    infos = [SegmentInfo(2, "lesion", (1.0, 0.0, 0.0)), SegmentInfo(7, "marker", (0.0, 0.5, 1.0)), SegmentInfo(9, "empty", (0.2, 0.2, 0.2))]
    path = write_segmentation(labels, infos, tmp_path / "finding.seg.nrrd")
    check_segmentation_file(path, labels, infos)
    # The marker voxel (i=10, j=6, k=4) sits at the same LPS point for slicerio as for the grid.
    segmentation = slicerio.read_segmentation(str(path))
    ijk = np.argwhere(segmentation["voxels"] == 7)[0]
    lps = segmentation["ijkToLPS"] @ np.append(ijk, 1.0)
    assert np.allclose(lps[:3], grid.index_to_point((10, 6, 4)))


def test_segmentation_refuses_unnamed_labels_and_bad_segments(tmp_path: Path) -> None:
    grid = oblique_left_handed_grid()
    array = np.zeros(grid.shape, dtype=np.uint8)
    array[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"\[3\]"):
        write_segmentation(Volume(array, grid), [SegmentInfo(1, "a", (1, 0, 0))], tmp_path / "x.seg.nrrd")
    with pytest.raises(ValueError):
        SegmentInfo(1, "bad|name", (1, 0, 0))
    with pytest.raises(ValueError):
        SegmentInfo(1, "red", (255, 0, 0))
    with pytest.raises(ValueError):
        write_segmentation(Volume(array, grid), [SegmentInfo(3, "a", (1, 0, 0))], tmp_path / "x.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_no_patient_data_in_any_header(real_seg: Volume, tmp_path: Path) -> None:
    volume = Volume(
        real_seg.array,
        real_seg.grid,
        metadata={"PatientID": "QX7731", "source": "/data/Doe_Jane/ct.nii"},
        phi={"PatientName": "Doe^Jane", "PatientBirthDate": "19580214"},
    )
    infos = segment_infos([v for v in np.unique(volume.array) if v != 0], {})
    paths = [
        write_image(volume, tmp_path / "a.nrrd"),
        write_image(volume, tmp_path / "a.nii.gz"),
        write_label_map(volume, tmp_path / "l.nrrd"),
        write_segmentation(volume, infos, tmp_path / "s.seg.nrrd"),
    ]
    for path in paths:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        for secret in (b"QX7731", b"Doe", b"19580214"):
            assert secret not in raw, f"{secret!r} found in {path.name}"


@pytest.mark.parametrize("name,extension", [("heat.nii.gz", ".nii.gz"), ("lesion.seg.nrrd", ".seg.nrrd"), ("report.json", ".json")])
def test_atomic_output_temp_name_keeps_extension(tmp_path: Path, name: str, extension: str) -> None:
    with atomic_output(tmp_path / name) as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.endswith(extension) and temporary.name.startswith(".")
        assert temporary.name != name
        temporary.write_text("content")
    assert (tmp_path / name).read_text() == "content"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_output_failure_leaves_previous_file(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "heat.nrrd"
    target.write_text("previous result")
    with pytest.raises(type(error)):
        with atomic_output(target) as temporary:
            temporary.write_text("half of a new res")
            raise error
    assert target.read_text() == "previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.nrrd"]


def test_atomic_output_treats_an_empty_result_as_failure(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="no data"):
        with atomic_output(tmp_path / "x.json"):
            pass  # a writer that silently wrote nothing
    assert list(tmp_path.iterdir()) == []


def test_crash_inside_sitk_writer_leaves_nothing(real_ct: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ct.nrrd"
    write_image(real_ct, target)
    good = target.read_bytes()

    def crashing_write(image: sitk.Image, path: str, *args) -> None:
        Path(path).write_bytes(b"NRRD0004\ntype: short\n")  # a truncated file...
        raise KeyboardInterrupt  # ...then Ctrl-C

    monkeypatch.setattr(writing.sitk, "WriteImage", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        write_image(real_ct, target)
    with pytest.raises(KeyboardInterrupt):
        write_label_map(real_ct.with_array(np.zeros_like(real_ct.array)), tmp_path / "new.nii.gz")
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd"]


def test_crash_inside_segmentation_writer_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crashing_write(file: str, segmentation: dict, *args, **kwargs) -> None:
        Path(file).write_bytes(b"NRRD0005\n")
        raise OSError("No space left on device")

    monkeypatch.setattr(slicerio, "write_segmentation", crashing_write)
    grid = oblique_left_handed_grid()
    with pytest.raises(OSError, match="No space"):
        write_segmentation(Volume(np.ones(grid.shape, np.uint8), grid), [SegmentInfo(1, "a", (1, 0, 0))], tmp_path / "s.seg.nrrd")
    assert list(tmp_path.iterdir()) == []


def fill_case(folder: Path, text: str) -> None:
    (folder / "findings.json").write_text(text)
    (folder / "maps").mkdir()
    (folder / "maps" / "heat.txt").write_text(text)


def test_case_output_directory_publishes_and_replaces(tmp_path: Path) -> None:
    final = tmp_path / "case001"
    with case_output_directory(final) as staging:
        assert staging.parent == tmp_path and staging.name.startswith("case001.partial-")
        assert not final.exists()  # nothing visible before the case is complete
        fill_case(staging, "first")
        (staging / "only_in_first.txt").write_text("x")
    assert (final / "maps" / "heat.txt").read_text() == "first"

    with case_output_directory(final) as staging:
        fill_case(staging, "second")
        assert (final / "findings.json").read_text() == "first"  # old result still there meanwhile
    assert (final / "findings.json").read_text() == "second"
    assert not (final / "only_in_first.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case001"]


@pytest.mark.parametrize("error", [ValueError("model failed"), KeyboardInterrupt()])
def test_failed_rerun_keeps_previous_case_and_cleans_staging(tmp_path: Path, error: BaseException) -> None:
    final = tmp_path / "case001"
    with case_output_directory(final) as staging:
        fill_case(staging, "good")
    with pytest.raises(type(error)):
        with case_output_directory(final) as staging:
            fill_case(staging, "half")
            raise error
    assert (final / "maps" / "heat.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case001"]


def test_failed_first_run_leaves_no_folder(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with case_output_directory(tmp_path / "out" / "case002") as staging:
            write_json({"a": 1}, staging / "partial.json")
            raise RuntimeError("crash")
    assert list((tmp_path / "out").iterdir()) == []


def test_case_output_directory_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "case").write_text("not a folder")
    with pytest.raises(FileExistsError):
        with case_output_directory(tmp_path / "case"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_write_json_converts_numpy(tmp_path: Path) -> None:
    obj = {
        "score": np.float32(0.25),
        "count": np.int64(7),
        "flag": np.bool_(True),
        "map": np.arange(4, dtype=np.uint8).reshape(2, 2),
        "spacing": (0.5, 1.5),
        "missing": float("nan"),
        "path": Path("/tmp/x"),
        3: "int key",
    }
    path = write_json(obj, tmp_path / "report.json")
    text = path.read_text()
    assert text.startswith('{\n  "score": 0.25')  # indent 2
    assert json.loads(text) == {
        "score": 0.25,
        "count": 7,
        "flag": True,
        "map": [[0, 1], [2, 3]],
        "spacing": [0.5, 1.5],
        "missing": None,
        "path": "/tmp/x",
        "3": "int key",
    }
    with pytest.raises(TypeError):
        write_json({"bad": object()}, tmp_path / "bad.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_write_png_round_trips(tmp_path: Path) -> None:
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[5, 7] = (255, 10, 20)
    path = write_png(rgb, tmp_path / "montage.png")
    assert np.array_equal(np.asarray(Image.open(path)), rgb)
    with pytest.raises(ValueError):
        write_png(rgb.astype(np.float32), tmp_path / "bad.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["montage.png"]


def test_image_backed_array_is_written_as_it_is(tmp_path: Path, real_ct: Volume) -> None:
    """A map filled in place in an image-backed array (no copy on writing) reads back exactly
    as the same values written from an ordinary array, with the grid of the CT."""
    from CTExplainLib.volume import backing_image, image_backed_array

    heat = image_backed_array(real_ct.grid, np.float32)
    assert heat.flags.writeable and not heat.any()
    heat[...] = np.linspace(0.0, 1.0, heat.size, dtype=np.float32).reshape(heat.shape)
    assert backing_image(heat) is not None
    assert backing_image(heat[1:]) is None and backing_image(heat.copy()) is None
    writing.write_image(real_ct.with_array(heat), tmp_path / "backed.nrrd")
    writing.write_image(real_ct.with_array(heat.copy()), tmp_path / "copied.nrrd")
    backed, copied = (sitk.ReadImage(str(tmp_path / f"{name}.nrrd")) for name in ("backed", "copied"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(backed), sitk.GetArrayFromImage(copied))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(backed), heat)
    assert Grid.of_image(backed).same_as(real_ct.grid, tolerance=0.0)
