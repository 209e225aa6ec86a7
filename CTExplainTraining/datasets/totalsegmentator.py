"""TotalSegmentator's test fixtures → a segmentation manifest with grouped structures.

Two CTs come with TotalSegmentator label maps (``labels_total_v2.json`` names the labels):
``example_ct_sm.nii.gz`` (chest-abdomen, 3 mm, 41 structures, the lung bases among them) and
the JPEG2000 DICOM series ``example_ct_dicom`` (upper abdomen, another patient, 31
structures, no lung). Their masks are that tool's own output, not manual ground truth. The
groups below merge TotalSegmentator's parts (lobes, left/right, vertebral levels) into the
structures CTExplain shows. The first CT is for training, the second is held out ("test").

    python -m CTExplainTraining.datasets.totalsegmentator ../shared/data/totalsegmentator build/totalsegmentator [--groups lungs liver]
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

GROUPS: Dict[str, str] = {
    "lungs": r"lung_.*",
    "liver": r"liver",
    "spleen": r"spleen",
    "kidneys": r"kidney_(left|right)",
    "stomach": r"stomach",
    "aorta": r"aorta",
    "vertebrae": r"vertebrae_.*",
}
SEGMENTS = ["background", *GROUPS]
CASES = [("example_ct_sm.nii.gz", "example_seg.nii.gz", "train"), ("example_ct_dicom", "example_seg_dicom.nii.gz", "test")]


def group_lookup(label_names: Dict[str, str], groups: Sequence[str] = tuple(GROUPS)) -> np.ndarray:
    """TotalSegmentator label value → index of its group in ``groups`` + 1 (0: in none of them)."""
    unknown = [name for name in groups if name not in GROUPS]
    if unknown:
        raise ValueError(f"unknown structure group(s) {', '.join(unknown)}; known: {', '.join(GROUPS)}")
    lookup = np.zeros(max(int(k) for k in label_names) + 1, dtype=np.uint8)
    for value, name in label_names.items():
        for index, pattern in enumerate((GROUPS[group] for group in groups), start=1):
            if re.fullmatch(pattern, name):
                lookup[int(value)] = index
    return lookup


def regroup(mask_path: Path, lookup: np.ndarray, out: Path) -> Path:
    image = sitk.ReadImage(str(mask_path))
    grouped = sitk.GetImageFromArray(lookup[sitk.GetArrayFromImage(image).astype(np.int64)])
    grouped.CopyInformation(image)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(grouped, str(out), useCompression=True)
    return out


def prepare(root: Path, out: Path, groups: Sequence[str] = tuple(GROUPS)) -> Path:
    """Grouped masks and ``manifest.csv`` in ``out``; the masks number ``groups`` from 1 in order."""
    lookup = group_lookup(json.loads((root / "labels_total_v2.json").read_text()), groups)
    rows: List[List[str]] = []
    for image, mask, split in CASES:
        grouped = regroup(root / mask, lookup, out / "masks" / mask)
        rows.append([str((root / image).resolve()), str(grouped.resolve()), image.split(".")[0], split])
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "patient", "split"])
        writer.writerows(rows)
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS),
                        help="structures to keep, numbered from 1 in this order (default: all)")
    args = parser.parse_args(argv)
    print(prepare(args.root, args.out, args.groups))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
