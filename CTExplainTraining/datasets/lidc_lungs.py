"""Lungs to learn from: LIDC-IDRI-0001's chest above the lung bases, labelled by the threshold
lung mask of :mod:`CTExplainTraining.lung_check`, added to a segmentation manifest.

TotalSegmentator's fixtures hold lungs in one case only (the lung bases of ``example_ct_sm``),
so a U-Net trained on them cannot learn lungs and be tested on lungs it did not see. LIDC-IDRI
0001 is a whole chest; its lungs are the threshold mask with the vessels inside them filled in. Its slices from where the lungs first reach 95% of their largest
cross-section upwards are kept: there the threshold mask is the lungs (and main airways), and
no liver or other abdominal organ that the mask would call background is in view. Those
slices are added for training under the lungs' label, and the case ``--test`` of the given
manifest becomes the held-out test case (all others train).

    python -m CTExplainTraining.datasets.lidc_lungs ../shared/data/lidc-idri-0001 \\
        build/totalsegmentator-lungs-liver/manifest.csv build/chest-lungs-liver --test example_ct_sm
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from CTExplainLib.errors import InputError
from CTExplainLib.loading import load_volume
from CTExplainLib.volume import Volume
from CTExplainLib.writing import write_image, write_label_map

from ..lung_check import threshold_lungs

FULL_SHARE = 0.95  # slices from the first one whose lung area reaches this share of the largest
LARGEST_VESSEL_MM2 = 400.0  # holes in a slice's lungs up to this area are vessels, filled in


def with_vessels(lungs: np.ndarray, spacing_mm: "tuple[float, float]") -> np.ndarray:
    """The threshold lungs with the enclosed holes of each axial slice filled in (the vessels
    and nodules inside them, which anatomical lung masks include), up to LARGEST_VESSEL_MM2:
    where both lungs meet in front of and behind the heart, the mediastinum is a larger
    hole and stays out."""
    largest = LARGEST_VESSEL_MM2 / (spacing_mm[0] * spacing_mm[1])
    filled = lungs.copy()
    for k, section in enumerate(lungs):
        image = sitk.GetImageFromArray(section.astype(np.uint8))
        holes = sitk.GetArrayFromImage(sitk.BinaryFillhole(image)).astype(bool) & ~section
        labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(holes.astype(np.uint8))))
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes <= largest)
        filled[k] |= np.isin(labels, small[small > 0])
    return filled


def slices_above_the_bases(lungs: np.ndarray, superior_is_up: bool) -> slice:
    """The axial index range from the first slice (coming from the feet) whose lung area is
    FULL_SHARE of the largest, to the head end of the volume."""
    area = lungs.reshape(lungs.shape[0], -1).sum(axis=1)
    if area.max() == 0:
        raise ValueError("no lungs found")
    full = np.flatnonzero(area >= FULL_SHARE * area.max())
    return slice(int(full[0]), lungs.shape[0]) if superior_is_up else slice(0, int(full[-1]) + 1)


def upper_chest(ct: Volume) -> "tuple[Volume, Volume]":
    """The CT and its threshold-lung mask (0/1, uint8), cut to the slices above the lung bases."""
    lungs = with_vessels(threshold_lungs(ct), (ct.grid.spacing[0], ct.grid.spacing[1]))
    superior_is_up = float(np.asarray(ct.grid.direction)[2, 2]) > 0  # LPS: +z is superior
    kept = slices_above_the_bases(lungs, superior_is_up)
    grid = ct.grid.slab(kept.start, kept.stop)
    return Volume(ct.array[kept], grid, metadata=dict(ct.metadata)), Volume(lungs[kept].astype(np.uint8), grid)


def prepare(lidc: Path, manifest: Path, out: Path, test_patient: str, lungs_label: int = 1) -> Path:
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not any(row["patient"] == test_patient for row in rows):
        raise InputError(manifest, f"has no patient {test_patient!r} to hold out")
    for row in rows:
        row["split"] = "test" if row["patient"] == test_patient else "train"
    ct, lungs = upper_chest(load_volume(lidc))
    out.mkdir(parents=True, exist_ok=True)
    write_image(ct, out / "lidc_upper_chest.nrrd")
    write_label_map(lungs.with_array(lungs.array * np.uint8(lungs_label)), out / "lidc_upper_chest_lungs.nrrd")
    rows.append({"image": str((out / "lidc_upper_chest.nrrd").resolve()), "mask": str((out / "lidc_upper_chest_lungs.nrrd").resolve()),
                 "patient": lidc.name, "split": "train"})
    combined = out / "manifest.csv"
    with open(combined, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "mask", "patient", "split"])
        writer.writeheader()
        writer.writerows({key: row[key] for key in writer.fieldnames} for row in rows)
    return combined


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lidc", type=Path, help="the LIDC-IDRI-0001 DICOM folder")
    parser.add_argument("manifest", type=Path, help="segmentation manifest to add it to")
    parser.add_argument("out", type=Path)
    parser.add_argument("--test", required=True, help="patient of the manifest held out as the test case")
    parser.add_argument("--lungs-label", type=int, default=1, help="the lungs' value in the manifest's masks (default 1)")
    args = parser.parse_args(argv)
    print(prepare(args.lidc, args.manifest, args.out, args.test, args.lungs_label))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
