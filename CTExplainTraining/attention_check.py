"""Does a classifier's attention fall inside the lesion? Grad-CAM of a 2D (or 3D) classifier
against reference lesion masks, as the core computes it for ``ctexplain explain``.

For each (image, mask) row of a manifest (``--split test`` keeps the held-out rows), the
share of the finding's CAM energy inside the mask's lesion labels is set against the share of
the image those labels cover: attention that ignored the lesion would land inside it about as
often as the lesion's area share (a lift of 1); attention on the lesion gives a lift well
above 1. With ``--segmenter``, the same share is measured inside the U-Net's lesion labels,
i.e. what a user sees without a reference.

    python -m CTExplainTraining.attention_check MODEL build/covid-infection/findings.csv \\
        --finding consolidation --split test --image-spacing 1 1 1 \\
        --segmenter CTExplain/Resources/Models/covid-infection-2d --out build/attention

MODEL is a classifier package; the manifest names its image and mask columns ``image`` and
``mask`` (paths relative to the CSV's folder); mask labels are those of the segmenter
package when given, else ``--lesion-labels`` (default: every non-zero label is lesion).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from CTExplainLib.anatomy import cam_energy_by_segment
from CTExplainLib.classify import classify_and_explain
from CTExplainLib.devices import resolve_device
from CTExplainLib.errors import InputError
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import LoadedModel, load_package
from CTExplainLib.models_catalog import resolve_package
from CTExplainLib.montage import finding_montage
from CTExplainLib.preprocess import preprocess
from CTExplainLib.segment import segment
from CTExplainLib.volume import Volume
from CTExplainLib.writing import write_json, write_png

from .data import read_mask
from .manifest import Example, read_manifest
from .overlays import picture_window

LESION = "lesion"


@dataclass
class CaseAttention:
    image: str
    probability: float
    cam_in_lesion: float  # share of the CAM energy inside the reference lesion labels
    lesion_area: float  # share of the image those labels cover (the chance level)
    cam_in_predicted_lesion: Optional[float] = None  # inside the segmenter's lesion labels

    @property
    def lift(self) -> Optional[float]:
        return self.cam_in_lesion / self.lesion_area if self.lesion_area > 0 else None


def lesion_share(heat: np.ndarray, labels: np.ndarray, lesion_labels: Sequence[int]) -> float:
    """Share of ``heat``'s energy in the voxels whose label is one of ``lesion_labels``."""
    return _share_inside(heat, np.isin(labels, list(lesion_labels)))


def _share_inside(heat: np.ndarray, lesion: np.ndarray) -> float:
    return cam_energy_by_segment(heat, lesion.astype(np.uint8), {1: LESION})[LESION]


def manifest_cases(path: Path, split: Optional[str]) -> List[Example]:
    """The image + mask rows of a manifest (of ``split`` if given), read and checked as for training."""
    examples = read_manifest(path, "segmentation", classes=("background", LESION)).examples
    chosen = [example for example in examples if split is None or example.split == split]
    if not chosen:
        raise InputError(path, f"has no rows{f' in split {split!r}' if split else ''}")
    return chosen


def check_case(
    classifier: LoadedModel, index: int, volume: Volume, reference: np.ndarray, lesion_labels: Sequence[int],
    device: torch.device, segmenter: Optional[LoadedModel] = None, method: str = "gradcam",
) -> "tuple[CaseAttention, np.ndarray, Optional[np.ndarray]]":
    """The attention numbers of one case, its heat map and (with a segmenter) its label map."""
    classification = classify_and_explain(classifier, preprocess(volume, classifier.metadata.input), method, device)
    heat = classification.heat_map(index, volume.grid)
    predicted = None if segmenter is None else segment(segmenter, volume, device).labels.array
    lesion = np.isin(reference, list(lesion_labels))
    return CaseAttention(
        image=str(volume.metadata.get("source", "")),
        probability=float(classification.probabilities[index]),
        cam_in_lesion=_share_inside(heat, lesion),
        lesion_area=float(lesion.mean()),
        cam_in_predicted_lesion=None if predicted is None else lesion_share(heat, predicted, lesion_labels),
    ), heat, predicted


def summarise(cases: Sequence[CaseAttention]) -> Dict[str, Optional[float]]:
    def mean(values: Sequence[Optional[float]]) -> Optional[float]:
        defined = [v for v in values if v is not None]
        return float(np.mean(defined)) if defined else None

    return {
        "cases": len(cases),
        "cam_in_lesion_mean": mean([c.cam_in_lesion for c in cases]),
        "lesion_area_mean": mean([c.lesion_area for c in cases]),
        "lift_median": None if not cases or all(c.lift is None for c in cases) else float(np.median([c.lift for c in cases if c.lift is not None])),
        "cases_with_lift_above_1": sum(1 for c in cases if c.lift is not None and c.lift > 1.0),
        "cam_in_predicted_lesion_mean": mean([c.cam_in_predicted_lesion for c in cases]),
    }


def _save_picture(classifier: LoadedModel, volume: Volume, heat: np.ndarray, reference: np.ndarray, title: str, path: Path) -> None:
    window = picture_window(classifier, volume.metadata.get("intensity"))
    write_png(finding_montage(volume, heat, reference, title, slices=1, window=window, radiological=True), path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CTExplainTraining.attention_check", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="classifier package: a folder or the name of a shipped one")
    parser.add_argument("manifest", type=Path, help="CSV with image and mask columns")
    parser.add_argument("--finding", help="the class whose map is checked (default: the model's first)")
    parser.add_argument("--split", help="only rows of this split (e.g. test)")
    parser.add_argument("--segmenter", help="segmentation package (folder or name): CAM share inside its lesion labels too")
    parser.add_argument("--lesion-labels", type=int, nargs="+", help="mask values that are lesion (default: all non-zero)")
    parser.add_argument("--spacing", "--image-spacing", dest="image_spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="spacing of 2D image files (x y z, mm), as ctexplain's --spacing")
    parser.add_argument("--method", default="gradcam", choices=["cam", "gradcam", "gradcampp"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="folder for attention.json and one picture per case")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    classifier = load_package(resolve_package(args.model), device)
    names = classifier.metadata.class_names
    finding = args.finding or names[0]
    if finding not in names:
        raise SystemExit(f"error: {args.model}: has no class {finding!r} (classes: {', '.join(names)})")
    segmenter = load_package(resolve_package(args.segmenter), device) if args.segmenter else None
    cases: List[CaseAttention] = []
    for example in manifest_cases(args.manifest, args.split):
        volume = load_volume(example.image, image_spacing=tuple(args.image_spacing) if args.image_spacing else None)
        reference = read_mask(example.mask, volume).array
        lesion_labels = args.lesion_labels or [int(v) for v in np.unique(reference) if v != 0]
        case, heat, _ = check_case(classifier, names.index(finding), volume, reference, lesion_labels, device, segmenter, args.method)
        cases.append(case)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            title = f"{example.image.name}: {finding} p={case.probability:.2f}, CAM in lesion {case.cam_in_lesion:.0%} (area {case.lesion_area:.0%})"
            _save_picture(classifier, volume, heat, reference, title, args.out / f"{example.image.stem}.png")
    report = {"model": str(args.model), "finding": finding, "method": args.method, "summary": summarise(cases),
              "cases": [dict(asdict(c), lift=c.lift) for c in cases]}
    if args.out:
        write_json(report, args.out / "attention.json")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
