"""MedSeg COVID-19 CT slices as prepared by Inf-Net (``train/Imgs/N.jpg``, ``train/GT/N.png``
with 0 background, 1 ground-glass opacity, 2 consolidation) → two manifests:

- ``manifest.csv``: image + mask pairs for the infection segmenter;
- ``findings.csv``: per slice, whether its mask holds consolidation (the label of a 2D
  classifier whose Grad-CAM is checked against the lesion), with a held-out test split of a
  fifth of the slices of each class, drawn with a fixed seed.

The set records no patient identity: each slice is its own "patient" here, so slices of one
patient may fall on both sides of a cross-validation split (the scores may be optimistic).

    python -m CTExplainTraining.datasets.covid_infection ../shared/data/covid-infection-2d build/covid-infection
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from CTExplainLib.errors import InputError
from CTExplainLib.loading.image_stack import natural_key

SEGMENTS = ["background", "ground_glass_opacity", "consolidation"]
FINDING = "consolidation"
TEST_SHARE = 0.2
SEED = 0


def _pairs(root: Path) -> List["tuple[Path, Path]"]:
    images = sorted((root / "train" / "Imgs").glob("*.jpg"), key=natural_key)
    if not images:
        raise InputError(root / "train" / "Imgs", "holds no .jpg slices")
    pairs = []
    for image in images:
        mask = root / "train" / "GT" / f"{image.stem}.png"
        if not mask.is_file():
            raise InputError(mask, f"is missing: every slice needs its mask ({image})")
        pairs.append((image.resolve(), mask.resolve()))
    return pairs


def holds_label(mask: Path, label: int) -> bool:
    """Whether a palette/grey label PNG holds ``label`` (palette indices, never colours)."""
    with Image.open(mask) as image:
        return bool(np.any(np.asarray(image) == label))


def held_out_slices(labels: Sequence[int], share: float = TEST_SHARE, seed: int = SEED) -> List[bool]:
    """A held-out ``share`` of the slices of each label value (at least one of each), seeded."""
    rng = np.random.default_rng(seed)
    held_out = [False] * len(labels)
    by_label: Dict[int, List[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    for label in sorted(by_label):
        members = by_label[label]
        for index in rng.choice(members, size=max(1, round(share * len(members))), replace=False):
            held_out[int(index)] = True
    return held_out


def prepare(root: Path, out: Path) -> Path:
    pairs = _pairs(root)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "patient"])
        for image, mask in pairs:
            writer.writerow([image, mask, f"slice-{image.stem}"])
    labels = [int(holds_label(mask, SEGMENTS.index(FINDING))) for _, mask in pairs]
    held_out = held_out_slices(labels)
    with open(out / "findings.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", FINDING, "patient", "split"])
        for (image, mask), label, test in zip(pairs, labels, held_out):
            writer.writerow([image, mask, label, f"slice-{image.stem}", "test" if test else "train"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    manifest = prepare(args.root, args.out)
    print(manifest)
    print(manifest.parent / "findings.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
