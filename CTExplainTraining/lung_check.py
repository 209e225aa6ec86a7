"""Agreement of a segmenter's lungs with a threshold lung mask, on a CT that has no reference.

LIDC-IDRI-0001 comes without lung masks. A classical mask — air-density voxels (below
-400 HU) inside the body, its largest 3D component and the second if
it is of similar size (the airways often join both lungs into one) — is a fair yardstick for the lungs
of a chest CT (it also takes the main bronchi and leaves out dense lesions), so the Dice with
it tells whether the U-Net found the lungs, not how well it draws them against an expert.

    python -m CTExplainTraining.lung_check CT LABELS --label 1 [--picture overview.png]

CT is anything the core loads; LABELS is the label map ``ctexplain explain`` wrote for it.
``--picture`` draws every label's outline on an upper, a middle and a basal axial slice of the
lungs and on the coronal slice that cuts the most lung.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from CTExplainLib.anatomy import body_mask
from CTExplainLib.loading import load_volume
from CTExplainLib.montage import default_label_color, segmentation_overview
from CTExplainLib.volume import Grid, Volume
from CTExplainLib.writing import write_png

AIR_HU = -400.0
LUNG_COMPONENTS = 2  # left and right, when the airways do not join them into one
SMALLEST_LUNG_SHARE = 0.1  # a second component smaller than this share of the first is gas elsewhere


def threshold_lungs(ct: Volume) -> np.ndarray:
    """Boolean mask of the air-density regions inside the body: the lungs (and main airways)."""
    inside = body_mask(ct) & (ct.array < AIR_HU)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(inside.astype(np.uint8))), sortByObjectSize=True)
    labels = sitk.GetArrayViewFromImage(components)
    sizes = np.bincount(labels.ravel(), minlength=LUNG_COMPONENTS + 1)[1 : LUNG_COMPONENTS + 1]
    kept = [index + 1 for index, size in enumerate(sizes) if size > 0 and size >= SMALLEST_LUNG_SHARE * sizes[0]]
    return np.isin(labels, kept)


def dice(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


LUNG_SLICES_SHOWN = (0.85, 0.5, 0.1)  # positions in the lungs' axial extent, feet = 0
SHOWN_LUNG_AREA = 0.05  # the extent: slices whose lung area is at least this share of the largest
LUNG_OUTLINE = (0.85, 0.33, 0.1)


def overview(ct: Volume, labels: np.ndarray, lungs: np.ndarray, lung_label: int) -> np.ndarray:
    """The label map's outlines on the CT at LUNG_SLICES_SHOWN of the lungs' extent, and on the
    coronal slice where the lungs are widest (lungs in orange, other labels in their default colours)."""
    area = lungs.sum(axis=(1, 2))
    if area.max() == 0:
        raise ValueError("no lungs to show")
    present = np.flatnonzero(area >= SHOWN_LUNG_AREA * area.max())
    feet_first = ct.grid.direction[2, 2] > 0
    low, high = (present[0], present[-1]) if feet_first else (present[-1], present[0])
    axial = [int(round(low + share * (high - low))) for share in LUNG_SLICES_SHOWN]
    coronal = int(np.argmax(lungs.sum(axis=(0, 2))))
    colors = {int(value): default_label_color(int(value)) for value in np.unique(labels) if value != 0}
    colors[lung_label] = LUNG_OUTLINE
    return segmentation_overview(ct, labels, axial, coronal, label_colors=colors)


def lung_agreement(ct_path: Path, labels_path: Path, lung_label: int, picture: Optional[Path] = None) -> Dict[str, object]:
    ct = load_volume(ct_path)
    image = sitk.ReadImage(str(labels_path))
    if not Grid.of_image(image).same_as(ct.grid, tolerance=1e-3):
        raise SystemExit(f"error: {labels_path}: its grid is not the grid of {ct_path}")
    predicted = sitk.GetArrayViewFromImage(image) == lung_label
    if picture is not None:
        write_png(overview(ct, sitk.GetArrayViewFromImage(image), predicted, lung_label), picture)
    reference = threshold_lungs(ct)
    per_slice: List[Optional[float]] = [dice(p, r) for p, r in zip(predicted, reference)]
    defined = [d for d in per_slice if d is not None]
    return {
        "ct": str(ct_path),
        "labels": str(labels_path),
        "dice_vs_threshold_lungs": dice(predicted, reference),
        "predicted_ml": float(predicted.sum() * np.prod(ct.grid.spacing) / 1000.0),
        "threshold_ml": float(reference.sum() * np.prod(ct.grid.spacing) / 1000.0),
        "slice_dice_median": float(np.median(defined)) if defined else None,
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CTExplainTraining.lung_check", description=__doc__.splitlines()[0])
    parser.add_argument("ct", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--label", type=int, default=1, help="the lungs' value in the label map (default 1)")
    parser.add_argument("--picture", type=Path, help="PNG of the labels' outlines on axial and coronal slices")
    args = parser.parse_args(argv)
    print(json.dumps(lung_agreement(args.ct, args.labels, args.label, args.picture), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
