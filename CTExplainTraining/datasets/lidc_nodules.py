"""LIDC-IDRI nodule crops (``../shared/data/lidc-nodules``) → manifests for ``ctexplain-train``.

Derived from LIDC-IDRI (TCIA, CC BY 3.0; Armato et al., Med. Phys. 2011,
doi:10.1118/1.3528204). Each crop is real HU on its series' own LPS grid; its mask is the
readers' outline (max voting), sometimes in several parts (a second nodule, fragments).

What it writes into ``OUT``:

- ``masks/<key>.nii.gz``: the nodule alone, i.e. the connected part of the crop's mask
  nearest the ``coordX/Y/Z`` centre of ``nodules.csv`` (the core's ``nodule_part``, which
  picks the part at a user's point the same way). Rows whose centre lies more than
  ``MAX_CENTRE_DISTANCE_MM`` from any outlined voxel are left out and listed.
- ``nodules.csv``: every nodule kept, with its patient, split, malignancy rating, diameter.
- ``malignancy.csv``: the binary manifest, benign (rating ≤ 2) vs malignant (≥ 4); rating 3
  is left out of training and scoring (``nodules.csv`` still lists it, for prediction).
- ``segmentation.csv``: the segmentation manifest (segments background, nodule).
- ``characteristics.csv``: the multilabel manifest of radiological characteristics, every
  nodule (rating 3 included), each label 0/1 by the readers' max-voting rating and the rule of
  ``CHARACTERISTICS`` (LIDC's scales: calcification 6 = absent; spiculation and lobulation
  1 = none .. 5 = marked; texture 1 = non-solid (ground glass), 3 = part solid, 5 = solid).

The split: a fixed test set of ``TEST_FRACTION`` of the patients, drawn once with a seed and
stratified on each patient's most suspicious rating group (≥ 4, 3, ≤ 2), marked ``test`` in
every manifest and never used for any choice; the others carry no split, so ``--cv 5`` folds
them by patient (``CTExplainTraining.splits``).

    python -m CTExplainTraining.datasets.lidc_nodules ../shared/data/lidc-nodules build/lidc-nodules
"""
from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from sklearn.model_selection import train_test_split

from CTExplainLib.errors import InputError
from CTExplainLib.loading import load_volume
from CTExplainLib.points.crop import nodule_part, voxel_positions

LOG = logging.getLogger(__name__)

TEST_FRACTION = 0.2
SEED = 0
MAX_CENTRE_DISTANCE_MM = 5.0
BENIGN_AT_MOST = 2
MALIGNANT_AT_LEAST = 4
CITATION = (
    "Armato SG III, McLennan G, Bidaut L, et al. The Lung Image Database Consortium (LIDC) and Image Database "
    "Resource Initiative (IDRI): a completed reference database of lung nodules on CT scans. Med. Phys. 38(2):915-931, "
    "2011. doi:10.1118/1.3528204"
)
DATA_LICENCE = "CC BY 3.0 (LIDC-IDRI, The Cancer Imaging Archive)"
# Each characteristic's label: its column of nodules.csv and the rule on the max-voting rating.
CHARACTERISTICS: Dict[str, Tuple[str, Callable[[int], bool]]] = {
    "calcified": ("Calcification_value", lambda v: v != 6),  # calcification rated 1-5 (6 = absent)
    "spiculated": ("Spiculation_value", lambda v: v >= 3),  # spiculation >= 3 of 5
    "lobulated": ("Lobulation_value", lambda v: v >= 3),  # lobulation >= 3 of 5
    "subsolid": ("Texture_value", lambda v: v <= 3),  # texture <= 3 of 5: non-solid or part solid
}
NODULE_COLUMNS = ["key", "patient", "split", "image", "mask", "malignancy", "diameter_mm", "coordX", "coordY", "coordZ"]


@dataclass
class Nodule:
    key: str
    patient: str
    malignancy: int
    diameter_mm: float
    centre: np.ndarray  # LPS mm, as nodules.csv gives it
    image: Path
    mask: Path  # the nodule alone, written by prepare()
    split: str = ""
    characteristics: Dict[str, int] = field(default_factory=dict)  # CHARACTERISTICS' labels, 0/1


def rating_group(malignancy: int) -> str:
    if malignancy >= MALIGNANT_AT_LEAST:
        return "malignant"
    if malignancy <= BENIGN_AT_MOST:
        return "benign"
    return "indeterminate"


def characteristic_labels(row: Dict[str, str]) -> Dict[str, int]:
    """The 0/1 labels of ``CHARACTERISTICS`` for one row of nodules.csv."""
    return {name: int(rule(int(row[column]))) for name, (column, rule) in CHARACTERISTICS.items()}


def read_table(root: Path) -> List[Dict[str, str]]:
    table = root / "nodules.csv"
    if not table.is_file():
        raise InputError(table, "no such file (expected the lidc-nodules folder)")
    with open(table, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def nodule_mask(root: Path, row: Dict[str, str], out: Path) -> Optional[Path]:
    """Write the part of the crop's mask at the row's centre; None if the centre is off it."""
    key = row["key"]
    mask = load_volume(root / "nodule_mask" / f"{key}.nii.gz")
    centre = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
    part = nodule_part(mask, centre)
    distance = float(np.min(np.linalg.norm(voxel_positions(mask.grid, part) - centre, axis=1)))
    if distance > MAX_CENTRE_DISTANCE_MM:
        LOG.warning("%s: left out: its centre lies %.1f mm from the outline", key, distance)
        return None
    image = sitk.GetImageFromArray(part.astype(np.uint8))
    mask.grid.apply_to(image)
    path = out / "masks" / f"{key}.nii.gz"
    sitk.WriteImage(image, str(path), True)
    return path


def test_patients(nodules: Sequence[Nodule], fraction: float = TEST_FRACTION, seed: int = SEED) -> List[str]:
    """A fixed ``fraction`` of the patients, stratified on each patient's most suspicious group."""
    worst: Dict[str, int] = {}
    for n in nodules:
        worst[n.patient] = max(worst.get(n.patient, 0), n.malignancy)
    patients = sorted(worst)
    strata = [rating_group(worst[p]) for p in patients]
    _, test = train_test_split(patients, test_size=fraction, random_state=seed, stratify=strata)
    return sorted(test)


# pytest would otherwise collect this public function as a test when a test module imports it.
test_patients.__test__ = False  # type: ignore[attr-defined]


def _write_csv(path: Path, columns: List[str], rows: List[Dict[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def prepare(root: Path, out: Path, limit: Optional[int] = None) -> Dict[str, Path]:
    """Masks and manifests from the crops at ``root`` into ``out`` (``limit``: the first rows only)."""
    root, out = Path(root), Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = read_table(root)[:limit]
    nodules: List[Nodule] = []
    for row in rows:
        mask = nodule_mask(root, row, out)
        if mask is None:
            continue
        centre = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
        nodules.append(Nodule(row["key"], row["patient_id"], int(row["Malignancy_value"]), float(row["diameter_mm"]),
                              centre, (root / "image" / f"{row['key']}.nii.gz").resolve(), mask.resolve(),
                              characteristics=characteristic_labels(row)))
    test = set(test_patients(nodules))
    for n in nodules:
        n.split = "test" if n.patient in test else ""
    listed = [
        {"key": n.key, "patient": n.patient, "split": n.split, "image": n.image, "mask": n.mask, "malignancy": n.malignancy,
         "diameter_mm": n.diameter_mm, "coordX": n.centre[0], "coordY": n.centre[1], "coordZ": n.centre[2]}
        for n in nodules
    ]
    paths = {name: out / f"{name}.csv" for name in ("nodules", "malignancy", "segmentation", "characteristics")}
    _write_csv(paths["nodules"], NODULE_COLUMNS, listed)
    binary = [
        {"image": n.image, "mask": n.mask, "patient": n.patient, "split": n.split, "malignant": int(n.malignancy >= MALIGNANT_AT_LEAST),
         "diameter_mm": n.diameter_mm, "key": n.key}
        for n in nodules if rating_group(n.malignancy) != "indeterminate"
    ]
    _write_csv(paths["malignancy"], ["image", "mask", "patient", "split", "malignant", "diameter_mm", "key"], binary)
    _write_csv(paths["segmentation"], ["image", "mask", "patient", "split", "key"],
               [{"image": n.image, "mask": n.mask, "patient": n.patient, "split": n.split, "key": n.key} for n in nodules])
    _write_csv(paths["characteristics"], ["image", "mask", "patient", "split", *CHARACTERISTICS, "diameter_mm", "key"],
               [{"image": n.image, "mask": n.mask, "patient": n.patient, "split": n.split, **n.characteristics,
                 "diameter_mm": n.diameter_mm, "key": n.key} for n in nodules])
    LOG.info("%d of %d nodules kept (%d patients, %d of them test); %d benign/malignant rows (%d malignant)",
             len(nodules), len(rows), len({n.patient for n in nodules}), len(test), len(binary), sum(r["malignant"] for r in binary))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="the lidc-nodules folder (nodules.csv, image/, nodule_mask/)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = prepare(args.root, args.out)
    except InputError as exc:
        print(f"error: {exc}")
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
