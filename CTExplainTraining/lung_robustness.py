"""A lung segmenter on chests scanned the way chests really are: its lung Dice on each reference
case as it is, with the field of view cut to the lungs (they touch the image border on every
side), resampled to thick, coarse 3 x 3 x 5 mm voxels, and with the noise of a low-dose scan;
and the voxels it calls lung outside the body or in slices that hold no lung.

    python -m CTExplainTraining.lung_robustness PACKAGE [--data ../shared/data] [--json OUT]

The cases and their references (neither is manual):

* ``example_ct_sm`` (TotalSegmentator's fixture, 3 mm, lung bases only): TotalSegmentator's own
  lung lobes, grouped;
* ``example_ct`` (the demo chest, ``CTExplain/Resources/Samples/chest_ct.nii.gz``): ``example_ct_sm``
  with 82 slices of abdomen and pelvis below it (its top slices are ``example_ct_sm`` voxel for
  voxel; only the headers' origins differ), so the same lobes, and no lung below them: lung
  called there is bowel gas taken for lung;
* ``lidc-idri-0001`` (0.7 x 0.7 x 2.5 mm): ``lung_check``'s threshold lungs with the enclosed
  vessels filled (``lidc_lungs.filled_lungs``), the rule its training labels follow;
* ``dcmqi-ct3slice`` (QIICR/dcmqi's three-slice GE CT at the lung bases, 0.81 x 0.81 x 1 mm,
  another patient and scanner, never trained on): the same threshold lungs.

Each variant is made from the case as scanned, and the reference and the body mask undergo the
same operation as the CT: cropping cuts all three alike; resampling blurs the CT to the coarser
resolution first (``lidc_lungs.coarser``) and moves the masks by local majority. "Outside the
body" is the body mask of the case as scanned (``anatomy.body_mask``), so a cut field of view
does not move it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from CTExplainLib.anatomy import body_mask
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import LoadedModel, load_package
from CTExplainLib.segment import segment
from CTExplainLib.volume import Volume
from CTExplainLib.writing import record_in_metadata

from .datasets.lidc_lungs import coarser, cropped_to_lungs, filled_lungs
from .lung_check import dice

THICK_MM = (3.0, 3.0, 5.0)
NOISE_HU = 50.0  # standard deviation of the added noise: several times a routine-dose scan's in soft tissue
PROTOCOL = (
    "python -m CTExplainTraining.lung_robustness PACKAGE: lung Dice as scanned, with the field of view cut in-plane at the "
    "lungs' box (lungs touching every side), blurred and resampled to 3 x 3 x 5 mm, and with white Gaussian noise of 50 HU "
    "(a low-dose scan's grain, fixed seed); references: TotalSegmentator's lobes "
    "on example_ct_sm (held out: never trained on, but its Dice was seen when versions, their training copies and max_parts "
    "were chosen, so not an untouched estimate) and on example_ct (the demo chest: example_ct_sm with 82 slices of abdomen "
    "and pelvis below, where no lung is), and the threshold lungs on LIDC-IDRI-0001 (a training case) and on dcmqi-ct3slice "
    "(three slices of another patient's lung bases, never trained on; untouched until versions 1.5 and 1.6 were compared on it)"
)
TOTALSEGMENTATOR_LUNG_LABELS = (10, 11, 12, 13, 14)  # labels_total_v2.json: the five lobes
BODY, LUNGS = 1, 2  # the reference masks travel together as one label map


def reference_cases(data: Path) -> Iterator[Tuple[str, Volume, np.ndarray]]:
    """(name, CT, lung reference) of each case with a lung reference in ``data``."""
    folder = data / "totalsegmentator"
    ct = load_volume(folder / "example_ct_sm.nii.gz")
    lobes = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg.nii.gz")))
    lungs = np.isin(lobes, TOTALSEGMENTATOR_LUNG_LABELS)
    yield "example_ct_sm", ct, lungs
    whole = load_volume(folder / "example_ct.nii.gz")
    below = whole.array.shape[0] - ct.array.shape[0]
    if below < 0 or not np.array_equal(whole.array[below:], ct.array):
        raise ValueError(f"{folder / 'example_ct.nii.gz'}: its top slices are not example_ct_sm's")
    yield "example_ct", whole, np.concatenate([np.zeros((below,) + lungs.shape[1:], dtype=bool), lungs])
    for name in ("lidc-idri-0001", "dcmqi-ct3slice"):
        ct = load_volume(data / name)
        yield name, ct, filled_lungs(ct)


def _masks(ct: Volume, lungs: np.ndarray) -> Volume:
    labels = np.where(body_mask(ct), BODY, 0).astype(np.uint8)
    labels[lungs] = LUNGS
    return ct.with_array(labels)


def with_noise(ct: Volume, sigma_hu: float = NOISE_HU, seed: int = 0) -> Volume:
    """``ct`` with white Gaussian noise of ``sigma_hu`` added (a fixed seed): the grain of a
    low-dose scan, whose noise grows as the dose falls (roughly as one over its square root)."""
    noise = np.random.default_rng(seed).normal(0.0, sigma_hu, ct.array.shape)
    return ct.with_array(np.clip(np.rint(ct.array + noise), -1024, 3071).astype(ct.array.dtype))


def variants(ct: Volume, lungs: np.ndarray) -> Iterator[Tuple[str, Volume, Volume]]:
    """(variant, CT, masks) for the case as scanned, cropped to the lungs, 3 x 3 x 5 mm, and with low-dose noise."""
    masks = _masks(ct, lungs)
    yield "as_is", ct, masks
    yield "cropped", *cropped_to_lungs(ct, masks, LUNGS)
    yield "thick_3x3x5mm", *coarser(ct, masks, THICK_MM)
    yield "low_dose_noise", with_noise(ct), masks


def lung_label(model: LoadedModel) -> int:
    names = [c.name for c in model.metadata.classes]
    if "lungs" not in names:
        raise SystemExit(f"error: {model.path}: has no 'lungs' segment (it has {', '.join(names)})")
    return names.index("lungs")


def score(predicted: np.ndarray, masks: Volume) -> Dict[str, Any]:
    """Lung Dice of ``predicted`` (boolean, on ``masks``' grid) and its lung voxels outside the body."""
    reference = masks.array == LUNGS
    voxel_ml = float(np.prod(masks.grid.spacing)) / 1000.0
    return {
        "dice": float(dice(predicted, reference) or 0.0),
        "predicted_ml": float(predicted.sum()) * voxel_ml,
        "reference_ml": float(reference.sum()) * voxel_ml,
        "lung_voxels_outside_body": int((predicted & (masks.array == 0)).sum()),
        "predicted_ml_in_slices_without_lung": float(predicted[~reference.any(axis=(1, 2))].sum()) * voxel_ml,
        "shape": list(masks.grid.size),
        "spacing_mm": [round(s, 3) for s in masks.grid.spacing],
    }


def evaluate(model: LoadedModel, ct: Volume, masks: Volume) -> Dict[str, Any]:
    return score(segment(model, ct, torch.device("cpu")).labels.array == lung_label(model), masks)


def robustness(package: Path, data: Path, cases: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Dict[str, Any]]]:
    model = load_package(package)
    results: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for name, ct, lungs in reference_cases(data):
        if cases and name not in cases:
            continue
        results[name] = {variant: evaluate(model, v_ct, v_masks) for variant, v_ct, v_masks in variants(ct, lungs)}
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CTExplainTraining.lung_robustness", description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="segmenter package with a 'lungs' segment")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder (default ../shared/data)")
    parser.add_argument("--case", action="append", help="only this case (example_ct_sm, example_ct, lidc-idri-0001, dcmqi-ct3slice); repeatable")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--record", action="store_true", help="write the numbers and their protocol into the package's metadata "
                        "(provenance.metrics.robustness), where Testing/test_shipped_models.py reproduces them")
    args = parser.parse_args(argv)
    if args.record and args.case:
        parser.error("--record writes every case's numbers: drop --case")
    results = robustness(args.package, args.data, args.case)
    for name, per_variant in results.items():
        for variant, numbers in per_variant.items():
            print(f"{name} {variant}: dice={numbers['dice']:.3f} outside_body_voxels={numbers['lung_voxels_outside_body']} "
                  f"predicted_ml={numbers['predicted_ml']:.0f} reference_ml={numbers['reference_ml']:.0f} "
                  f"ml_in_slices_without_lung={numbers['predicted_ml_in_slices_without_lung']:.0f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    if args.record:
        print(f"recorded in {record_in_metadata(args.package, ['provenance', 'metrics', 'robustness'], {'protocol': PROTOCOL, 'cases': results})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
