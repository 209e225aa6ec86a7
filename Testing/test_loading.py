"""CT loading on the real data of ../shared/data, and every way an input can be wrong.

Changed DICOM series are copies of real series in tmp_path, edited with pydicom the way a
broken export would be (a file missing, a position moved, a sheared stack, ...).
"""
from __future__ import annotations

import gzip
import math
import random
import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.pixels import apply_rescale

from CTExplainLib.errors import InputError
from CTExplainLib.loading import DicomSeriesInfo, list_dicom_series, load_volume
from CTExplainLib.loading.dicom import PHI_FIELDS

HU_METADATA_KEYS = {"source", "format", "modality", "series_uid", "series_description", "warnings", "dims"}


# ---------------------------------------------------------------- helpers


def dicom_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and pydicom.misc.is_dicom(str(p)))


def along_normal(files: List[Path]) -> List[Path]:
    """Files ordered by IPP . (row x column), computed here independently of the loader."""

    def z(path: Path) -> float:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        iop = np.array(header.ImageOrientationPatient, dtype=float)
        return float(np.dot(np.cross(iop[:3], iop[3:]), np.array(header.ImagePositionPatient, dtype=float)))

    return sorted(files, key=z)


def hounsfield(path: Path) -> np.ndarray:
    dataset = pydicom.dcmread(str(path))
    return apply_rescale(dataset.pixel_array, dataset)


def copy_series(
    source: Path,
    target: Path,
    edit: Optional[Callable[[int, pydicom.Dataset], None]] = None,
    skip: Optional[List[int]] = None,
) -> List[Path]:
    """Copy a series (in slice order along the normal) to ``target``; ``edit(k, ds)`` may change each copy."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for index, path in enumerate(along_normal(dicom_files(source))):
        if skip and index in skip:
            continue
        destination = target / f"slice_{index:03d}.dcm"
        if edit is None:
            shutil.copyfile(path, destination)
        else:
            dataset = pydicom.dcmread(str(path))
            edit(index, dataset)
            dataset.save_as(str(destination))
        written.append(destination)
    return written


def assert_input_error(excinfo: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(excinfo.value)
    assert str(path) in message, message
    assert "\n" not in message, message
    for word in words:
        assert word.lower() in message.lower(), message


@pytest.fixture(scope="module")
def cthead(data_dir: Path) -> Path:
    return data_dir / "slicer-cthead"


@pytest.fixture(scope="module")
def cthead_volume(cthead: Path):
    return load_volume(cthead)


# ---------------------------------------------------------------- volume files


def test_nifti_keeps_file_grid_and_hu(data_dir: Path) -> None:
    path = data_dir / "totalsegmentator" / "example_ct.nii.gz"
    volume = load_volume(path)
    reference = sitk.ReadImage(str(path))
    assert volume.array.shape == (112, 101, 122)
    assert volume.grid.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_array_equal(volume.grid.direction, np.diag([-1.0, -1.0, 1.0]))
    assert volume.grid.origin == reference.GetOrigin()
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))
    assert volume.array.dtype == np.int16  # the file's int32 narrowed: values fit
    assert abs(np.percentile(volume.array, 5) - (-1000)) < 60  # air outside the body
    assert volume.metadata["format"] == "nifti" and volume.metadata["dims"] == 3
    assert volume.metadata["warnings"] == [] and volume.phi == {}
    assert HU_METADATA_KEYS <= set(volume.metadata)


def test_left_handed_nifti_is_not_flipped(data_dir: Path) -> None:
    path = data_dir / "totalsegmentator" / "example_seg_dicom.nii.gz"
    volume = load_volume(path)
    reference = sitk.ReadImage(str(path))
    assert volume.grid.is_left_handed()
    np.testing.assert_array_equal(volume.grid.direction, np.reshape(reference.GetDirection(), (3, 3)))
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))


def test_nrrd_label_map(data_dir: Path) -> None:
    volume = load_volume(data_dir / "dcmqi-ct3slice" / "liver_seg.nrrd")
    assert volume.metadata["format"] == "nrrd"
    assert volume.array.shape[0] == 3 and set(np.unique(volume.array)) <= {0, 1}


def test_mha_round_trip(tmp_path: Path, data_dir: Path) -> None:
    image = sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    volume = load_volume(tmp_path / "ct.mha")
    assert volume.metadata["format"] == "mha"
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))
    assert volume.grid.origin == image.GetOrigin()


# ---------------------------------------------------------------- DICOM on real series


def test_jpeg2000_series_matches_gdcm_decoding(data_dir: Path) -> None:
    folder = data_dir / "totalsegmentator" / "example_ct_dicom"
    volume = load_volume(folder)
    assert volume.array.shape == (20, 512, 512) and volume.array.dtype == np.int16
    assert volume.grid.spacing == (0.9765625, 0.9765625, 2.0)
    assert volume.grid.origin == (-249.51171875, -437.51171875, -804.5)
    assert "JPEG 2000" in volume.metadata["transfer_syntax"]
    # An independent decoder: SimpleITK/GDCM reading the same files in the same order.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in along_normal(dicom_files(folder))])
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reader.Execute()))
    assert volume.array.min() == -1024 and abs(float(np.median(volume.array[:, :40, :40])) + 1000) < 50
    assert volume.metadata["series_uid"] is None  # this export blanked the UIDs
    assert volume.metadata["series_description"] == "CT Body 3.0"
    assert volume.metadata["modality"] == "CT" and volume.metadata["warnings"] == []


@pytest.mark.parametrize("series", ["slicer-cthead", "dcmqi-ct3slice", "lidc-idri-0001"])
def test_series_match_simpleitk_gdcm_reader(data_dir: Path, series: str) -> None:
    """Voxels and grid equal those of ITK's own series reader (GDCM's file order) on real series."""
    folder = data_dir / series
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    volume = load_volume(folder)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))
    assert volume.grid.size == reference.GetSize()
    np.testing.assert_allclose(volume.grid.spacing, reference.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(volume.grid.origin, reference.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(volume.grid.direction.ravel(), reference.GetDirection(), rtol=0, atol=1e-9)


def test_slices_follow_the_normal_not_names(cthead: Path, cthead_volume) -> None:
    ordered = along_normal(dicom_files(cthead))
    # File names sort CTHead1, CTHead10, ...: a loader that sorted by name would differ.
    assert ordered != dicom_files(cthead)
    assert cthead_volume.array.shape == (93, 64, 64)
    for k in (0, 1, 9, 46, 92):
        np.testing.assert_array_equal(cthead_volume.array[k], hounsfield(ordered[k]))


def test_shuffled_file_names_give_the_same_volume(tmp_path: Path, data_dir: Path) -> None:
    source = data_dir / "totalsegmentator" / "example_ct_dicom"
    files = dicom_files(source)
    names = [f"{n:04d}.dcm" for n in random.Random(7).sample(range(len(files)), len(files))]
    for path, name in zip(files, names):
        shutil.copyfile(path, tmp_path / name)
    original, shuffled = load_volume(source), load_volume(tmp_path)
    np.testing.assert_array_equal(shuffled.array, original.array)
    assert shuffled.grid.same_as(original.grid, tolerance=0)


def test_slicer_cthead_geometry_and_phi(cthead_volume) -> None:
    volume = cthead_volume
    assert volume.grid.spacing == (3.2, 3.2, 1.5) and volume.grid.origin == (0.0, 0.0, 0.0)
    assert volume.metadata["dims"] == 3 and volume.metadata["warnings"] == []
    assert volume.phi["PatientName"] == "Austrialian" and volume.phi["PatientID"] == "8775070"
    assert set(volume.phi) <= set(PHI_FIELDS)
    text = repr(volume.metadata)
    for value in volume.phi.values():
        assert len(value) < 4 or value not in text  # short values ("1") occur by chance
    assert not set(PHI_FIELDS) & set(volume.metadata)


def test_single_file_loads_its_series(data_dir: Path) -> None:
    folder = data_dir / "dcmqi-ct3slice"
    from_file, from_folder = load_volume(folder / "02.dcm"), load_volume(folder)
    np.testing.assert_array_equal(from_file.array, from_folder.array)
    assert from_file.grid.same_as(from_folder.grid, tolerance=0)
    assert from_folder.array.shape == (3, 512, 512)
    assert from_folder.grid.spacing[:2] == (0.810547, 0.810547)
    assert abs(from_folder.grid.spacing[2] - 1.0) < 1e-6
    assert from_file.metadata["source"] == str(folder / "02.dcm")
    assert from_file.metadata["series_uid"] == "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"


def test_single_slice_series_is_marked_2d(tmp_path: Path, cthead: Path, cthead_volume) -> None:
    first = along_normal(dicom_files(cthead))[0]
    shutil.copyfile(first, tmp_path / "only.dcm")
    volume = load_volume(tmp_path)
    assert volume.array.shape == (1, 64, 64) and volume.metadata["dims"] == 2
    assert volume.grid.spacing == (3.2, 3.2, 1.5)  # SliceThickness stands in for the slice spacing
    np.testing.assert_array_equal(volume.array[0], cthead_volume.array[0])


def test_lidc_full_series_is_fast_and_in_hu(data_dir: Path) -> None:
    start = time.perf_counter()
    volume = load_volume(data_dir / "lidc-idri-0001")
    seconds = time.perf_counter() - start
    assert seconds < 5, f"LIDC series took {seconds:.1f} s"
    assert volume.array.shape == (133, 512, 512) and volume.array.dtype == np.int16
    assert volume.grid.spacing == (0.703125, 0.703125, 2.5)
    assert volume.array.min() == -2048  # outside the scan field
    lungs = np.count_nonzero((volume.array > -1000) & (volume.array < -700))
    assert lungs > 0.05 * volume.array.size  # aerated lung, as a chest CT must have
    assert volume.metadata["warnings"] == []


# ---------------------------------------------------------------- choosing a series


def test_folder_with_two_series_takes_the_largest_ct(tmp_path: Path, data_dir: Path, cthead: Path) -> None:
    copy_series(cthead, tmp_path)
    copy_series(data_dir / "dcmqi-ct3slice", tmp_path / "ct3")
    for path in (tmp_path / "ct3").iterdir():
        path.rename(tmp_path / f"other_{path.name}")
    series = list_dicom_series(tmp_path)
    assert [s.slice_count for s in series] == [93, 3]
    assert all(isinstance(s, DicomSeriesInfo) and s.usable for s in series)
    volume = load_volume(tmp_path)
    assert volume.array.shape[0] == 93
    assert volume.metadata["series_uid"] == series[0].series_uid
    assert "most slices" in volume.metadata["series_choice"]
    assert any("several image series" in w for w in volume.metadata["warnings"])
    chosen = load_volume(tmp_path, series_uid=series[1].series_uid)
    assert chosen.array.shape[0] == 3 and chosen.metadata["warnings"] == []
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path, series_uid="1.2.3.4")
    assert_input_error(excinfo, tmp_path, "1.2.3.4")


def test_ct_preferred_over_larger_mr_localizer_and_non_image(tmp_path: Path, data_dir: Path, cthead: Path) -> None:
    def to_mr(_: int, ds: pydicom.Dataset) -> None:
        ds.Modality = "MR"
        ds.SeriesInstanceUID = "1.2.3.100"

    def to_localizer(k: int, ds: pydicom.Dataset) -> None:
        ds.SeriesInstanceUID = "1.2.3.200"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    copy_series(cthead, tmp_path / "mr", to_mr)
    copy_series(cthead, tmp_path / "loc", to_localizer)
    copy_series(data_dir / "dcmqi-ct3slice", tmp_path / "ct")
    report = pydicom.Dataset()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    report.SOPInstanceUID = "1.2.3.300.1"
    report.SeriesInstanceUID = "1.2.3.300"
    report.Modality = "SR"
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    report.save_as(str(tmp_path / "report.dcm"), enforce_file_format=True)
    for sub in ("mr", "loc", "ct"):
        for path in (tmp_path / sub).iterdir():
            path.rename(tmp_path / f"{sub}_{path.name}")
    series = {s.series_uid: s for s in list_dicom_series(tmp_path)}
    assert series["1.2.3.200"].is_localizer and not series["1.2.3.200"].usable
    assert not series["1.2.3.300"].usable and "not an image slice" in series["1.2.3.300"].reason
    volume = load_volume(tmp_path)
    assert volume.metadata["modality"] == "CT" and volume.array.shape[0] == 3
    mr = load_volume(tmp_path, series_uid="1.2.3.100")
    assert mr.array.shape[0] == 93 and mr.metadata["intensity"] != "hu"
    assert any("modality is MR" in w for w in mr.metadata["warnings"])


def test_file_and_series_uid_must_agree(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(InputError) as excinfo:
        load_volume(data_dir / "dcmqi-ct3slice" / "01.dcm", series_uid="1.2.3")
    assert_input_error(excinfo, data_dir / "dcmqi-ct3slice" / "01.dcm", "requested series 1.2.3")


# ---------------------------------------------------------------- broken stacks


def test_missing_slice_is_interpolated_on_a_regular_grid(tmp_path: Path, cthead: Path, cthead_volume) -> None:
    copy_series(cthead, tmp_path, skip=[40])
    volume = load_volume(tmp_path)
    original = cthead_volume
    warning = " ".join(volume.metadata["warnings"])
    assert "1 slice(s) missing" in warning and "z=58.50" in warning and "z=61.50" in warning
    assert volume.metadata["regularised"]
    assert volume.array.shape == original.array.shape and volume.grid.same_as(original.grid)
    np.testing.assert_array_equal(np.delete(volume.array, 40, axis=0), np.delete(original.array, 40, axis=0))
    below, above = original.array[39].astype(int), original.array[41].astype(int)
    middle = volume.array[40].astype(int)
    assert np.all(middle >= np.minimum(below, above)) and np.all(middle <= np.maximum(below, above))
    assert np.abs(middle - (below + above) / 2).max() <= 0.5


def test_uneven_spacing_is_resampled_with_a_warning(tmp_path: Path, cthead: Path, cthead_volume) -> None:
    def move(k: int, ds: pydicom.Dataset) -> None:
        if k == 50:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 0.6]

    copy_series(cthead, tmp_path, move)
    volume = load_volume(tmp_path)
    warning = " ".join(volume.metadata["warnings"])
    assert "uneven slice spacing" in warning and "1 slice(s) off a regular stack, at z=75.60" in warning
    assert volume.grid.spacing[2] == 1.5 and volume.array.shape == cthead_volume.array.shape
    np.testing.assert_array_equal(volume.array[:50], cthead_volume.array[:50])


def test_duplicate_copies_dropped_but_clashing_positions_refused(tmp_path: Path, cthead: Path, cthead_volume) -> None:
    files = copy_series(cthead, tmp_path / "copies")
    shutil.copyfile(files[10], tmp_path / "copies" / "again.dcm")
    volume = load_volume(tmp_path / "copies")
    np.testing.assert_array_equal(volume.array, cthead_volume.array)
    assert any("duplicate" in w for w in volume.metadata["warnings"])

    def clash(k: int, ds: pydicom.Dataset) -> None:
        if k == 11:
            ds.ImagePositionPatient = list(pydicom.dcmread(str(files[10])).ImagePositionPatient)

    copy_series(cthead, tmp_path / "clash", clash)
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path / "clash")
    assert_input_error(excinfo, tmp_path / "clash", "share their position", "z=15.00")


def test_gantry_tilt_is_refused_with_its_angle(tmp_path: Path, cthead: Path) -> None:
    def shear(_: int, ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + z * math.tan(math.radians(20)), z]

    copy_series(cthead, tmp_path, shear)
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path)
    assert_input_error(excinfo, tmp_path, "20.00 degrees", "tilt", "not supported")


def test_mixed_orientation_within_a_series_is_reported(tmp_path: Path, cthead: Path) -> None:
    def rotate(k: int, ds: pydicom.Dataset) -> None:
        if k in (3, 4):
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    copy_series(cthead, tmp_path, rotate)
    volume = load_volume(tmp_path)
    warnings = " ".join(volume.metadata["warnings"])
    assert "mixes 2 orientations" in warnings and "ignored 2 others" in warnings
    # The two slices left out leave a gap that is then filled like any missing slices.
    assert "2 slice(s) missing" in warnings and volume.array.shape[0] == 93


def test_modality_mr_warns_but_loads(tmp_path: Path, cthead: Path, cthead_volume) -> None:
    copy_series(cthead, tmp_path, lambda _, ds: setattr(ds, "Modality", "MR"))
    volume = load_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, cthead_volume.array)
    assert volume.metadata["modality"] == "MR"
    assert any("modality is MR" in w for w in volume.metadata["warnings"])


def test_fractional_rescale_gives_float32_per_slice(tmp_path: Path, cthead: Path, cthead_volume) -> None:
    def rescale(k: int, ds: pydicom.Dataset) -> None:
        ds.RescaleSlope = 0.5 if k % 2 else 1
        ds.RescaleIntercept = -1024

    copy_series(cthead, tmp_path, rescale)
    volume = load_volume(tmp_path)
    assert volume.array.dtype == np.float32
    expected = cthead_volume.array.astype(np.float32) * np.where(np.arange(93) % 2, 0.5, 1.0)[:, None, None] - 1024
    np.testing.assert_array_equal(volume.array, expected)


# ---------------------------------------------------------------- 2D images


def test_ct_ich_stack_in_natural_order(data_dir: Path) -> None:
    folder = data_dir / "ct-ich" / "brain" / "049"
    volume = load_volume(folder, image_spacing=(0.4, 0.4, 5.0))
    files = sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem))
    assert volume.array.shape == (len(files), 650, 650) and volume.array.dtype == np.uint8
    assert volume.grid.spacing == (0.4, 0.4, 5.0)
    np.testing.assert_array_equal(volume.grid.direction, np.eye(3))
    for k in (0, len(files) // 2, len(files) - 1):
        np.testing.assert_array_equal(volume.array[k], np.asarray(Image.open(files[k]).convert("L")))
    assert volume.metadata["intensity"] == "display" and volume.metadata["format"] == "image-stack"
    assert volume.metadata["dims"] == 3


def test_numbers_in_names_sort_naturally(tmp_path: Path) -> None:
    for number in (10, 2, 1):
        Image.fromarray(np.full((4, 5), number, np.uint8)).save(tmp_path / f"slice{number}.png")
    volume = load_volume(tmp_path, image_spacing=(1, 1, 2))
    assert volume.array[:, 0, 0].tolist() == [1, 2, 10]
    assert volume.grid.size == (5, 4, 3)


def test_colour_image_becomes_grey_single_slice(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "slice.png")
    volume = load_volume(tmp_path / "slice.png", image_spacing=(0.5, 0.5, 1))
    assert volume.array.shape == (1, 6, 8) and volume.metadata["dims"] == 2
    assert volume.metadata["format"] == "image-2d"
    assert int(volume.array[0, 0, 0]) == int(Image.fromarray(rgb).convert("L").getpixel((0, 0)))


def test_images_need_a_spacing(data_dir: Path) -> None:
    folder = data_dir / "ct-ich" / "brain" / "049"
    with pytest.raises(InputError) as excinfo:
        load_volume(folder)
    assert_input_error(excinfo, folder, "spacing")
    with pytest.raises(InputError) as excinfo:
        load_volume(folder / "010.jpg", image_spacing=(0.4, -1, 5))
    assert_input_error(excinfo, folder / "010.jpg", "positive")


# ---------------------------------------------------------------- bad input


def _write_nifti(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0])), str(path))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path / "nothing_here.nii.gz")
    assert_input_error(excinfo, tmp_path / "nothing_here.nii.gz", "no such file")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path)
    assert_input_error(excinfo, tmp_path, "empty folder")


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    (tmp_path / "scan.dat").write_bytes(b"\x00" * 200)
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path)
    assert_input_error(excinfo, tmp_path, "no readable images")


def test_truncated_nifti_gz(tmp_path: Path, data_dir: Path) -> None:
    data = (data_dir / "totalsegmentator" / "example_ct.nii.gz").read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as excinfo:
        load_volume(path)
    assert_input_error(excinfo, path, "truncated")


def test_truncated_plain_nifti(tmp_path: Path, data_dir: Path) -> None:
    data = gzip.decompress((data_dir / "totalsegmentator" / "example_ct_sm.nii.gz").read_bytes())
    path = tmp_path / "cut.nii"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(InputError) as excinfo:
        load_volume(path)
    assert_input_error(excinfo, path, "truncated")


@pytest.mark.parametrize("name", ["notes.nii.gz", "notes.nrrd", "notes.txt", "notes.png"])
def test_text_file_is_not_an_image(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("this is not an image\n")
    with pytest.raises(InputError) as excinfo:
        load_volume(path, image_spacing=(1, 1, 1))
    assert_input_error(excinfo, path, "not")


def test_4d_nifti(tmp_path: Path) -> None:
    path = tmp_path / "fmri.nii.gz"
    _write_nifti(path, np.zeros((8, 8, 4, 3), np.int16))
    with pytest.raises(InputError) as excinfo:
        load_volume(path)
    assert_input_error(excinfo, path, "4D", "only 3D")


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_nan_voxels(tmp_path: Path, byte_order: str) -> None:
    # ITK's NIfTI reader would silently read the NaN as 0: the loader checks the raw bytes.
    array = np.full((8, 8, 4), -1000, np.float32)
    array[2, 3, 1] = np.nan
    path = tmp_path / "nan.nii.gz"
    header = nib.Nifti1Header().as_byteswapped(byte_order)
    nib.save(nib.Nifti1Image(array, np.eye(4), header=header), str(path))
    assert nib.load(str(path)).header.endianness == byte_order
    with pytest.raises(InputError) as excinfo:
        load_volume(path)
    assert_input_error(excinfo, path, "1 non-finite", "1 NaN")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nan_voxels_in_other_formats(tmp_path: Path, suffix: str) -> None:
    array = np.full((4, 8, 8), -1000, np.float32)
    array[1, 3, 2] = np.inf
    path = tmp_path / f"inf{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError) as excinfo:
        load_volume(path)
    assert_input_error(excinfo, path, "1 non-finite", "1 infinite")


def test_2d_volume_file_is_marked(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii.gz"
    _write_nifti(path, np.full((8, 6), -1000, np.int16))
    volume = load_volume(path)
    assert volume.metadata["dims"] == 2 and volume.array.shape == (1, 6, 8)


def test_corrupt_dicom_pixels(tmp_path: Path, cthead: Path) -> None:
    files = copy_series(cthead, tmp_path)
    data = files[5].read_bytes()
    files[5].write_bytes(data[: len(data) - 3000])
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path)
    assert_input_error(excinfo, files[5], "pixel")


def test_broken_image_in_stack(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "1.png")
    (tmp_path / "2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path, image_spacing=(1, 1, 1))
    assert_input_error(excinfo, tmp_path / "2.png", "not a readable")


def test_stack_with_mixed_sizes(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "1.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "2.png")
    with pytest.raises(InputError) as excinfo:
        load_volume(tmp_path, image_spacing=(1, 1, 1))
    assert_input_error(excinfo, tmp_path, "differ in size")
