"""PhysioNet CT-ICH (Hssayeni et al. 2020, doi:10.13026/w8q8-ky94, CC BY 4.0) → HU volumes
and manifests for ``ctexplain-train``.

The dataset holds each slice twice as 8-bit JPEG, in a brain window (level 40, width 120) and
a bone window (level 700, width 3200). Fitting bone grey level against brain grey level over
the pixels both windows resolve gives, on 11 patients, a width ratio of 0.0375 and an offset of
70 grey levels: width 3196, level 699, i.e. the stated windows. So the HU each voxel had is
recovered where the brain window resolves it (-20..100 HU, 0.47 HU per grey level), and from
the bone window elsewhere (12.5 HU per grey level). The model then reads these volumes through
the same HU windows it applies to any head CT, so training and inference share one path.

Geometry, assumed (the JPEGs carry none): the 650×650 images were resized from ~512×512 scans
with ~0.45 mm pixels, so 0.35 mm pixels; 5 mm slices; rows run anterior→posterior, columns
patient right→left (radiological display), file numbers inferior→superior: LPS, identity.

    python -m CTExplainTraining.datasets.ct_ich ../shared/data/ct-ich build/ct-ich
"""
from __future__ import annotations

import argparse
import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from CTExplainLib.errors import InputError
from CTExplainLib.loading.image_stack import read_gray8, slice_images

LOG = logging.getLogger(__name__)

BRAIN_WINDOW = (40.0, 120.0)
BONE_WINDOW = (700.0, 3200.0)
SPACING = (0.35, 0.35, 5.0)
# Grey levels this close to 0 or 255 are treated as clipped by the window (JPEG ringing).
CLIP_MARGIN = 2
# JPEG noise puts clipped pixels (air, bone) a few grey levels inside the brain window, so the
# brain value is trusted only where the bone image agrees that the HU lies near that window.
# The bone image itself is only good to ~10 grey levels (~120 HU) in flat soft tissue, hence
# the wide margin: it separates air and bone from soft tissue, nothing finer.
BONE_AGREEMENT_HU = 300.0
LABELS = {
    "any_hemorrhage": lambda row: row["No_Hemorrhage"] == "0",
    "intraparenchymal": lambda row: row["Intraparenchymal"] == "1",
    "epidural": lambda row: row["Epidural"] == "1",
    "skull_fracture": lambda row: row["Fracture_Yes_No"] == "1",
}
CITATION = (
    "Hssayeni, M. D., et al. (2020). Computed Tomography Images for Intracranial Hemorrhage Detection and "
    "Segmentation (version 1.3.1). PhysioNet. doi:10.13026/w8q8-ky94"
)


def window_to_hu(grey: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    level, width = window
    return (level - width / 2.0) + grey.astype(np.float32) * (width / 255.0)


def reconstruct_hu(brain: np.ndarray, bone: np.ndarray) -> np.ndarray:
    """HU from the two windowed images of the same slices (see the module docstring)."""
    from_bone = window_to_hu(bone, BONE_WINDOW)
    low, high = BRAIN_WINDOW[0] - BRAIN_WINDOW[1] / 2.0, BRAIN_WINDOW[0] + BRAIN_WINDOW[1] / 2.0
    agrees = (from_bone >= low - BONE_AGREEMENT_HU) & (from_bone <= high + BONE_AGREEMENT_HU)
    resolved = (brain >= CLIP_MARGIN) & (brain <= 255 - CLIP_MARGIN) & agrees
    hu = np.where(resolved, window_to_hu(brain, BRAIN_WINDOW), from_bone)
    return np.rint(hu).astype(np.int16)


def slice_number(path: Path) -> int:
    return int(path.stem)


def read_patient(root: Path, patient: str) -> Tuple[np.ndarray, List[int]]:
    """The patient's HU volume (k, j, i) and the file number of each slice k."""
    brain_files = slice_images(root / "brain" / patient)
    bone_files = slice_images(root / "bone" / patient)
    if [f.name for f in brain_files] != [f.name for f in bone_files]:
        raise InputError(root / "bone" / patient, "does not hold the same slice files as the brain folder")
    brain = np.stack([read_gray8(f) for f in brain_files])
    bone = np.stack([read_gray8(f) for f in bone_files])
    return reconstruct_hu(brain, bone), [slice_number(f) for f in brain_files]


def write_volume(hu: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(SPACING)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def read_slice_rows(csv_path: Path) -> Dict[str, Dict[int, Dict[str, str]]]:
    rows: Dict[str, Dict[int, Dict[str, str]]] = defaultdict(dict)
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            rows[f"{int(row['PatientNumber']):03d}"][int(row["SliceNumber"])] = row
    return rows


def prepare(root: Path, out: Path, patients: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """Write ``volumes/<patient>.nii.gz``, ``patients.csv`` (one row per patient, labels any
    over its slices) and ``slices.csv`` (one row per slice with that slice's labels)."""
    rows = read_slice_rows(root / "hemorrhage_diagnosis.csv")
    chosen = sorted(rows) if patients is None else list(patients)
    patient_rows, slice_rows = [], []
    unlabeled_rows = 0
    for patient in chosen:
        hu, numbers = read_patient(root, patient)
        volume_path = out / "volumes" / f"{patient}.nii.gz"
        write_volume(hu, volume_path)
        labeled = rows[patient]
        unlabeled_rows += len(set(labeled) - set(numbers))
        for k, number in enumerate(numbers):
            if number not in labeled:
                raise InputError(root / "brain" / patient / f"{number:03d}.jpg", "has no row in hemorrhage_diagnosis.csv")
            labels = {name: int(rule(labeled[number])) for name, rule in LABELS.items()}
            slice_rows.append({"image": volume_path.relative_to(out).as_posix(), "patient": patient, "slice": k, **labels})
        patient_labels = {name: max(r[name] for r in slice_rows if r["patient"] == patient) for name in LABELS}
        patient_rows.append({"image": volume_path.relative_to(out).as_posix(), "patient": patient, **patient_labels})
    LOG.info("%d CSV rows name slices with no image file (skipped)", unlabeled_rows)
    paths = {"patients": out / "patients.csv", "slices": out / "slices.csv"}
    for key, table in (("patients", patient_rows), ("slices", slice_rows)):
        with open(paths[key], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="CT-ICH JPEG stacks → HU NIfTI volumes + manifests")
    parser.add_argument("root", type=Path, help="the ct-ich folder (brain/, bone/, hemorrhage_diagnosis.csv)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--patients", nargs="+", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, path in prepare(args.root, args.out, args.patients).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
