"""CT-ICH JPEG pairs → HU volumes: the two display windows come back from the HU volume."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from CTExplainLib.loading import load_volume
from CTExplainLib.loading.image_stack import slice_images
from CTExplainTraining.datasets.ct_ich import BONE_WINDOW, BRAIN_WINDOW, SPACING, prepare


def windowed(hu: np.ndarray, window) -> np.ndarray:
    level, width = window
    return np.clip((hu - (level - width / 2)) / width * 255.0, 0, 255)


@pytest.fixture(scope="module")
def prepared(data_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ct-ich")
    prepare(data_dir / "ct-ich", out, patients=["050", "051"])
    return out


def test_windows_of_the_hu_volume_reproduce_both_jpegs(prepared: Path, data_dir: Path) -> None:
    volume = load_volume(prepared / "volumes" / "050.nii.gz")
    files = slice_images(data_dir / "ct-ich" / "brain" / "050")
    assert volume.array.shape[0] == len(files)
    for k in (0, len(files) // 2, len(files) - 1):
        brain = np.asarray(Image.open(files[k]).convert("L"), dtype=float)
        bone = np.asarray(Image.open(str(files[k]).replace("/brain/", "/bone/")).convert("L"), dtype=float)
        hu = volume.array[k].astype(float)
        # A few grey levels: JPEG noise, and the bone window's 12.5 HU steps.
        assert np.abs(windowed(hu, BRAIN_WINDOW) - brain).mean() < 5.0
        assert np.abs(windowed(hu, BONE_WINDOW) - bone).mean() < 5.0


def test_geometry_is_the_assumed_one(prepared: Path) -> None:
    volume = load_volume(prepared / "volumes" / "051.nii.gz")
    assert np.allclose(volume.grid.spacing, SPACING)
    assert np.allclose(volume.grid.direction, np.eye(3))
    assert volume.metadata.get("intensity") != "display"  # HU, read through HU windows


def test_manifests_match_the_diagnosis_csv(prepared: Path, data_dir: Path) -> None:
    with open(prepared / "slices.csv") as handle:
        slices = list(csv.DictReader(handle))
    with open(prepared / "patients.csv") as handle:
        patients = {row["patient"]: row for row in csv.DictReader(handle)}
    with open(data_dir / "ct-ich" / "hemorrhage_diagnosis.csv") as handle:
        truth = {(int(r["PatientNumber"]), int(r["SliceNumber"])): r for r in csv.DictReader(handle)}
    files = slice_images(data_dir / "ct-ich" / "brain" / "050")
    rows_050 = [r for r in slices if r["patient"] == "050"]
    assert len(rows_050) == len(files)
    for row in rows_050:
        number = int(files[int(row["slice"])].stem)  # slice k is the k-th file in number order
        assert int(row["any_hemorrhage"]) == 1 - int(truth[(50, number)]["No_Hemorrhage"])
        assert int(row["skull_fracture"]) == int(truth[(50, number)]["Fracture_Yes_No"])
    assert patients["050"]["any_hemorrhage"] == str(max(int(r["any_hemorrhage"]) for r in rows_050))
