"""Agreement of a segmenter's lungs with a threshold lung mask, on a CT that has no reference.

LIDC-IDRI-0001 comes without lung masks. A classical mask — air-density voxels (below
-400 HU) inside the body, its largest 3D component and the second if
it is of similar size (the airways often join both lungs into one) — is a fair yardstick for the lungs
of a chest CT (it also takes the main bronchi and leaves out dense lesions), so the Dice with
it tells whether the U-Net found the lungs, not how well it draws them against an expert.

    python -m CTExplainTraining.lung_check CT LABELS --label 1

CT is anything the core loads; LABELS is the label map ``ctexplain explain`` wrote for it.
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
from CTExplainLib.volume import Grid, Volume

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


def lung_agreement(ct_path: Path, labels_path: Path, lung_label: int) -> Dict[str, object]:
    ct = load_volume(ct_path)
    image = sitk.ReadImage(str(labels_path))
    if not Grid.of_image(image).same_as(ct.grid, tolerance=1e-3):
        raise SystemExit(f"error: {labels_path}: its grid is not the grid of {ct_path}")
    predicted = sitk.GetArrayViewFromImage(image) == lung_label
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
    args = parser.parse_args(argv)
    print(json.dumps(lung_agreement(args.ct, args.labels, args.label), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
