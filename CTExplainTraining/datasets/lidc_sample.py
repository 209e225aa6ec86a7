"""The shipped point-mode sample: a crop of LIDC-IDRI-0001's full series around its nodule.

    python -m CTExplainTraining.datasets.lidc_sample ../shared/data/lidc-idri-0001 \\
        ../shared/data/lidc-nodules/nodules.csv CTExplain/Resources/Samples/lung_nodule_lidc_0001.nii.gz

The crop is the series' own voxels (int16 HU, its LPS grid unchanged): ``SLICES`` axial slices
centred on the slice of the nodule's centre (``nodules.csv``, coordX/Y/Z), and in-plane the
``COLUMNS`` x ``ROWS`` pixels around it, chosen to hold the patient's left chest from the
mediastinum to the skin, so that the body outline (and the lung inside it) is whole.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from CTExplainLib.loading import load_volume
from CTExplainLib.volume import Volume

PATIENT = "LIDC-IDRI-0001"
SLICES = 24  # 60 mm at 2.5 mm: the nodule's 11 slices and the segmenter's 60 mm around the point
COLUMNS, ROWS = 288, 368  # i from the mediastinum to the skin; j from the sternum to behind the back


def nodule_centre(nodules_csv: Path, patient: str = PATIENT) -> Tuple[float, float, float]:
    """The LPS centre (mm) of ``patient``'s first nodule in ``nodules.csv``."""
    with open(nodules_csv, newline="") as stream:
        for row in csv.DictReader(stream):
            if row["patient_id"] == patient:
                return float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])
    raise ValueError(f"{nodules_csv}: no row for {patient}")


def sample_crop(volume: Volume, centre: Sequence[float], columns: int = COLUMNS, rows: int = ROWS, slices: int = SLICES) -> sitk.Image:
    """The int16 crop of ``volume``: in-plane ``columns`` x ``rows`` from the body's left
    half around the centre, ``slices`` slices centred on the centre's."""
    grid = volume.grid
    i, j, k = (int(round(v)) for v in grid.point_to_index(centre))
    start = np.array([min(max(i - columns // 2 + 24, 0), grid.size[0] - columns),
                      min(max(j - rows // 2 - 80, 0), grid.size[1] - rows),
                      min(max(k - slices // 2, 0), grid.size[2] - slices)])
    stop = start + np.array([columns, rows, slices])
    array = volume.array[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]].astype(np.int16)
    image = sitk.GetImageFromArray(array)
    grid.box(tuple(start), tuple(stop)).apply_to(image)
    return image


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series", type=Path, help="the LIDC-IDRI-0001 DICOM folder")
    parser.add_argument("nodules_csv", type=Path)
    parser.add_argument("out", type=Path, help=".nii.gz to write")
    args = parser.parse_args(argv)
    centre = nodule_centre(args.nodules_csv)
    image = sample_crop(load_volume(args.series), centre)
    sitk.WriteImage(image, str(args.out), True)
    print(f"{args.out}: {image.GetSize()} voxels, nodule centre LPS {centre}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
