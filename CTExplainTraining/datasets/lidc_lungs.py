"""Lungs to learn from: LIDC-IDRI-0001's chest, labelled by the threshold lung mask of
:mod:`CTExplainTraining.lung_check`, added to a segmentation manifest.

TotalSegmentator's fixtures hold lungs in one case only (the lung bases of ``example_ct_sm``),
so a U-Net trained on them cannot learn lungs and be tested on lungs it did not see. LIDC-IDRI
0001 is a whole chest; its lungs are the threshold mask with the vessels inside them filled in.
The case ``--test`` of the given manifest becomes the held-out test case (all others train).

The threshold mask knows the lungs but no other organ, so which slices are kept depends on the
manifest's other labels:

* by default, only the slices from where the lungs first reach 95% of their largest
  cross-section upwards: there no liver or other abdominal organ that the mask would call
  background is in view. The lung bases, where the lungs meet the diaphragm and the liver,
  are then never seen in training.
* with ``--liver-from PACKAGE``, the whole series, bases included, with the liver labelled by
  that segmenter (its largest connected liver, outside the lungs): pseudo-labels, one round
  of self-training, so say so wherever a Dice is quoted.

LIDC-IDRI-0001 is a sharp 0.7 x 0.7 x 2.5 mm scan. ``--coarse-mm 3`` adds a copy of it as a
3 mm scanner would have taken it (blurred to that resolution, then resampled; labels by local
majority), and ``--coarse-mm 2 3 4`` one copy for each, so the U-Net also learns where the
lungs end in thick, blurred CT, whose edge voxels mix lung with diaphragm and liver.
``--crop-copies`` adds each copy with its field of view cut at the lungs, ``--slab-copies`` as
scans of part of the chest (a random run of slices holding lung) cut at that part's lungs.

    python -m CTExplainTraining.datasets.lidc_lungs ../shared/data/lidc-idri-0001 \\
        build/totalsegmentator-lungs-liver/manifest.csv build/chest-lungs-liver --test example_ct_sm \\
        [--liver-from CTExplain/Resources/Models/chest-ct-segmenter] [--coarse-mm 3]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from CTExplainLib.devices import resolve_device
from CTExplainLib.errors import InputError
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import load_package
from CTExplainLib.resample import resample_image
from CTExplainLib.segment import segment
from CTExplainLib.volume import Grid, Volume
from CTExplainLib.writing import write_image, write_label_map

from ..lung_check import threshold_lungs

FULL_SHARE = 0.95  # slices from the first one whose lung area reaches this share of the largest
LARGEST_VESSEL_MM2 = 400.0  # holes in a slice's lungs up to this area are vessels, filled in
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


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


def filled_lungs(ct: Volume) -> np.ndarray:
    return with_vessels(threshold_lungs(ct), (ct.grid.spacing[0], ct.grid.spacing[1]))


def upper_chest(ct: Volume, lungs_label: int) -> "tuple[Volume, Volume]":
    """The CT and its threshold-lung mask (uint8), cut to the slices above the lung bases."""
    lungs = filled_lungs(ct)
    superior_is_up = float(np.asarray(ct.grid.direction)[2, 2]) > 0  # LPS: +z is superior
    kept = slices_above_the_bases(lungs, superior_is_up)
    grid = ct.grid.slab(kept.start, kept.stop)
    return Volume(ct.array[kept], grid, metadata=dict(ct.metadata)), Volume(lungs[kept].astype(np.uint8) * np.uint8(lungs_label), grid)


def largest_component(mask: np.ndarray) -> np.ndarray:
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))), sortByObjectSize=True)
    return sitk.GetArrayViewFromImage(components) == 1


def whole_chest(ct: Volume, liver_segmenter: Path, lungs_label: int, liver_label: int) -> "tuple[Volume, Volume]":
    """The whole CT and its labels: the threshold lungs, and the liver as ``liver_segmenter``
    draws it (its largest connected part, where the lungs are not)."""
    model = load_package(liver_segmenter)
    names = [c.name for c in model.metadata.classes]
    if "liver" not in names:
        raise InputError(liver_segmenter, f"has no 'liver' segment (it has {', '.join(names)})")
    predicted = segment(model, ct, resolve_device("auto")).labels.array == names.index("liver")
    lungs = filled_lungs(ct)
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[largest_component(predicted) & ~lungs] = liver_label
    labels[lungs] = lungs_label
    return ct, ct.with_array(labels)


def coarser(ct: Volume, labels: Volume, spacing_mm: Union[float, Sequence[float]]) -> "tuple[Volume, Volume]":
    """``ct`` and ``labels`` on a ``spacing_mm`` grid (one value: isotropic; or per axis i, j, k) over the same extent: the CT
    blurred first to that resolution (a Gaussian whose FWHM makes up the difference to the
    spacing along each axis), the labels by SimpleITK's label-Gaussian (local majority)."""
    spacing = np.asarray(ct.grid.spacing, dtype=float)
    target = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    sigma = np.sqrt(np.maximum(target**2 - spacing**2, 0.0)) / FWHM_PER_SIGMA
    blurred = sitk.Cast(ct.to_sitk(), sitk.sitkFloat32)
    for axis, axis_sigma in enumerate(sigma):
        # An axis already as coarse as the target (2.5 mm slices for 2 mm) is left as it is; so is one of
        # fewer than four voxels (a three-slice series), which SimpleITK's recursive Gaussian cannot filter.
        if axis_sigma > 0.0 and ct.grid.size[axis] >= 4:
            blurred = sitk.RecursiveGaussian(blurred, float(axis_sigma), False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis)
    size = np.floor((np.asarray(ct.grid.size) - 1) * spacing / target).astype(int) + 1
    grid = Grid(tuple(int(n) for n in size), tuple(float(t) for t in target), ct.grid.origin, ct.grid.direction)
    image = resample_image(blurred, grid, "linear", float(ct.array.min()), sitk.sitkInt16)
    mask = sitk.Resample(labels.to_sitk(), grid.reference_image(), sitk.Transform(), sitk.sitkLabelGaussian, 0, sitk.sitkUInt8)
    return (Volume(sitk.GetArrayFromImage(image), grid, metadata=dict(ct.metadata)),
            Volume(sitk.GetArrayFromImage(mask), grid))


def cropped_to_lungs(ct: Volume, labels: Volume, lungs_label: int, margins_mm: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> "tuple[Volume, Volume]":
    """Both cut in-plane to the box of the lungs over all slices, grown by ``margins_mm`` (i low,
    i high, j low, j high; 0: the lungs touch that side of the image), as scanners cut the field
    of view close around the chest."""
    lungs = labels.array == lungs_label
    j = np.flatnonzero(lungs.any(axis=(0, 2)))
    i = np.flatnonzero(lungs.any(axis=(0, 1)))
    if i.size == 0:
        raise ValueError("no lungs to crop to")
    grow = [int(round(m / ct.grid.spacing[axis])) for m, axis in zip(margins_mm, (0, 0, 1, 1))]
    start = (max(int(i[0]) - grow[0], 0), max(int(j[0]) - grow[2], 0), 0)
    stop = (min(int(i[-1]) + 1 + grow[1], ct.grid.size[0]), min(int(j[-1]) + 1 + grow[3], ct.grid.size[1]), ct.grid.size[2])
    grid = ct.grid.box(start, stop)
    region = (slice(None), slice(start[1], stop[1]), slice(start[0], stop[0]))
    return (Volume(np.ascontiguousarray(ct.array[region]), grid, metadata=dict(ct.metadata)),
            Volume(np.ascontiguousarray(labels.array[region]), grid))


def slab(ct: Volume, labels: Volume, start: int, stop: int) -> "tuple[Volume, Volume]":
    """Both limited to slices k in [start, stop), as a scan of part of the chest would hold them."""
    grid = ct.grid.slab(start, stop)
    return (Volume(np.ascontiguousarray(ct.array[start:stop]), grid, metadata=dict(ct.metadata)),
            Volume(np.ascontiguousarray(labels.array[start:stop]), grid))


def random_slab(labels: Volume, lungs_label: int, length_mm: "tuple[float, float]", random: np.random.Generator) -> "tuple[int, int]":
    """Slices [start, stop) of a random run ``length_mm`` long (uniform between the two) that holds lung:
    its centre is a random lung slice, so a run may start above the apex or end below the bases."""
    lung_slices = np.flatnonzero((labels.array == lungs_label).any(axis=(1, 2)))
    if lung_slices.size == 0:
        raise ValueError("no lungs to cut a slab around")
    length = max(int(round(random.uniform(*length_mm) / labels.grid.spacing[2])), 1)
    centre = int(random.choice(lung_slices))
    start = min(max(centre - length // 2, 0), max(labels.grid.size[2] - length, 0))
    return start, min(start + length, labels.grid.size[2])


def spacing_argument(text: str) -> "tuple[float, ...]":
    """``3`` (isotropic) or ``3x3x5`` (i, j, k) millimetres."""
    values = tuple(float(v) for v in text.lower().split("x"))
    if len(values) not in (1, 3) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give one spacing in mm or three as IxJxK, e.g. 3x3x5")
    return values


def _spacing_name(spacing_mm: Union[float, Sequence[float]]) -> str:
    return "x".join(f"{v:g}" for v in np.atleast_1d(spacing_mm))


def _write_case(ct: Volume, labels: Volume, out: Path, stem: str, patient: str) -> Dict[str, str]:
    image, mask = out / f"{stem}.nrrd", out / f"{stem}_labels.nrrd"
    write_image(ct, image)
    write_label_map(labels, mask)
    return {"image": str(image.resolve()), "mask": str(mask.resolve()), "patient": patient, "split": "train"}


def prepare(lidc: Path, manifest: Path, out: Path, test_patient: str, lungs_label: int = 1,
            liver_from: Optional[Path] = None, liver_label: int = 2, coarse_mm: Sequence[Sequence[float]] = (),
            crop_copies: int = 0, crop_margin_mm: float = 30.0, slab_copies: int = 0,
            slab_mm: "tuple[float, float]" = (45.0, 150.0), seed: int = 0) -> Path:
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not any(row["patient"] == test_patient for row in rows):
        raise InputError(manifest, f"has no patient {test_patient!r} to hold out")
    for row in rows:
        row["split"] = "test" if row["patient"] == test_patient else "train"
    ct = load_volume(lidc)
    if liver_from is None:
        ct, labels = upper_chest(ct, lungs_label)
        stem = "lidc_upper_chest"
    else:
        ct, labels = whole_chest(ct, liver_from, lungs_label, liver_label)
        stem = "lidc_chest"
    out.mkdir(parents=True, exist_ok=True)
    copies = [(ct, labels, stem)]
    copies += [(*coarser(ct, labels, spacing_mm), f"{stem}_{_spacing_name(spacing_mm)}mm") for spacing_mm in coarse_mm]
    random = np.random.default_rng(seed)
    for copy_ct, copy_labels, copy_stem in copies:
        rows.append(_write_case(copy_ct, copy_labels, out, copy_stem, lidc.name))
        for index in range(crop_copies):  # the first copy cut at the lungs, the others with random margins
            margins = random.uniform(0.0, crop_margin_mm, 4) if index else np.zeros(4)
            cut = cropped_to_lungs(copy_ct, copy_labels, lungs_label, margins)
            rows.append(_write_case(*cut, out, f"{copy_stem}_fov{index}", lidc.name))
        for index in range(slab_copies):  # part of the chest (the bases of an abdominal scan, say), cut at its lungs
            start, stop = random_slab(copy_labels, lungs_label, slab_mm, random)
            part = slab(copy_ct, copy_labels, start, stop)
            cut = cropped_to_lungs(*part, lungs_label, random.uniform(0.0, crop_margin_mm, 4) * (index % 2))
            rows.append(_write_case(*cut, out, f"{copy_stem}_slab{index}", lidc.name))
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
    parser.add_argument("--liver-from", type=Path, help="segmenter package whose liver labels the whole series (default: upper chest only)")
    parser.add_argument("--liver-label", type=int, default=2, help="the liver's value in the manifest's masks (default 2)")
    parser.add_argument("--coarse-mm", type=spacing_argument, nargs="+", default=[],
                        help="also add the series as scanners with these resolutions would have taken it: 3 (isotropic) or 3x3x5 (i, j, k mm)")
    parser.add_argument("--crop-copies", type=int, default=0,
                        help="also add each copy this many times with the field of view cut close around the lungs: "
                             "the first at the lungs' box, the others with random margins up to --crop-margin-mm (default 0)")
    parser.add_argument("--crop-margin-mm", type=float, default=30.0, help="largest margin of a cut field of view (default 30)")
    parser.add_argument("--slab-copies", type=int, default=0,
                        help="also add each copy this many times as a scan of part of the chest (a random run of slices that "
                             "holds lung, --slab-mm long), its field of view cut at that part's lungs: every other one at "
                             "their box, the others with random margins (default 0)")
    parser.add_argument("--slab-mm", type=float, nargs=2, default=(45.0, 150.0), metavar=("SHORTEST", "LONGEST"),
                        help="length of those runs, uniform between the two (default 45 150)")
    args = parser.parse_args(argv)
    print(prepare(args.lidc, args.manifest, args.out, args.test, args.lungs_label, args.liver_from, args.liver_label, args.coarse_mm,
                  args.crop_copies, args.crop_margin_mm, args.slab_copies, tuple(args.slab_mm)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
