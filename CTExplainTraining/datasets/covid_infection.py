"""MedSeg COVID-19 CT slices as prepared by Inf-Net (``train/Imgs/N.jpg``, ``train/GT/N.png``
with 0 background, 1 ground-glass opacity, 2 consolidation) → a segmentation manifest.

The set records no patient identity: each slice is its own "patient" here, so slices of one
patient may fall on both sides of a cross-validation split (the scores may be optimistic).

    python -m CTExplainTraining.datasets.covid_infection ../shared/data/covid-infection-2d build/covid-infection
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Optional, Sequence

from CTExplainLib.errors import InputError
from CTExplainLib.loading.image_stack import natural_key

SEGMENTS = ["background", "ground_glass_opacity", "consolidation"]


def prepare(root: Path, out: Path) -> Path:
    images = sorted((root / "train" / "Imgs").glob("*.jpg"), key=natural_key)
    if not images:
        raise InputError(root / "train" / "Imgs", "holds no .jpg slices")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "patient"])
        for image in images:
            mask = root / "train" / "GT" / f"{image.stem}.png"
            writer.writerow([image.resolve(), mask.resolve(), f"slice-{image.stem}"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    print(prepare(args.root, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
