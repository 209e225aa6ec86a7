"""LIDC nodule crops as training data: the nodule's own outline, labels by rating, patient splits."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from CTExplainLib.loading import load_volume
from CTExplainLib.points.crop import mask_parts
from CTExplainTraining.datasets.lidc_nodules import CHARACTERISTICS, Nodule, prepare, test_patients
from CTExplainTraining.manifest import read_manifest
from CTExplainTraining.splits import patient_folds

ROWS = 80  # the first rows of nodules.csv: 46 patients, every rating


@pytest.fixture(scope="module")
def prepared(data_dir: Path, tmp_path_factory) -> dict:
    return prepare(data_dir / "lidc-nodules", tmp_path_factory.mktemp("lidc-nodules"), limit=ROWS)


def _rows(path: Path) -> list:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_masks_hold_the_nodule_at_its_centre_only(prepared, data_dir: Path) -> None:
    nodules = _rows(prepared["nodules"])
    assert len(nodules) == ROWS  # none of the first rows has its centre off its outline
    several = 0
    for row in nodules:
        mask = load_volume(row["mask"])
        original = load_volume(data_dir / "lidc-nodules" / "nodule_mask" / f"{row['key']}.nii.gz")
        assert mask.grid.same_as(original.grid)
        assert mask_parts(mask).max() == 1  # one connected part ...
        assert (original.array[mask.array > 0] > 0).all()  # ... of the readers' outline
        several += int(mask_parts(original).max() > 1)
        index = np.rint(mask.grid.point_to_index([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])).astype(int)
        assert mask.array[index[2], index[1], index[0]] or mask_parts(original).max() > 1
    assert several > 0  # the first rows include outlines in several parts, which were reduced


def test_malignancy_labels_leave_out_rating_three(prepared) -> None:
    nodules = {row["key"]: row for row in _rows(prepared["nodules"])}
    binary = _rows(prepared["malignancy"])
    assert {int(nodules[r["key"]]["malignancy"]) for r in binary} == {1, 2, 4, 5}
    for row in binary:
        assert int(row["malignant"]) == int(int(nodules[row["key"]]["malignancy"]) >= 4)
    manifest = read_manifest(prepared["malignancy"], "binary", label_columns=["malignant"])
    assert all(e.mask is not None for e in manifest.examples)  # the box is cut around the outline
    segmentation = read_manifest(prepared["segmentation"], "segmentation", classes=["background", "nodule"])
    assert len(segmentation.examples) == ROWS


def test_characteristics_follow_the_readers_ratings_for_every_nodule(prepared, data_dir: Path) -> None:
    ratings = {row["key"]: row for row in _rows(data_dir / "lidc-nodules" / "nodules.csv")}
    rows = _rows(prepared["characteristics"])
    assert len(rows) == ROWS  # rating 3 included: these labels do not depend on malignancy
    expected = {  # LIDC's scales, written out here independently of CHARACTERISTICS' rules
        "calcified": lambda r: int(r["Calcification_value"]) != 6,
        "spiculated": lambda r: int(r["Spiculation_value"]) >= 3,
        "lobulated": lambda r: int(r["Lobulation_value"]) >= 3,
        "subsolid": lambda r: int(r["Texture_value"]) <= 3,
    }
    assert set(expected) == set(CHARACTERISTICS)
    for row in rows:
        for name, rule in expected.items():
            assert int(row[name]) == int(rule(ratings[row["key"]])), (row["key"], name)
    manifest = read_manifest(prepared["characteristics"], "multilabel", label_columns=list(CHARACTERISTICS))
    assert np.stack([e.target for e in manifest.examples]).sum(axis=0).min() > 0  # every label has positives in the first rows


def test_test_patients_are_fixed_stratified_and_never_in_a_fold(prepared) -> None:
    manifest = read_manifest(prepared["malignancy"], "binary", label_columns=["malignant"])
    test = {e.patient for e in manifest.examples if e.split == "test"}
    assert 0 < len(test) < len({e.patient for e in manifest.examples}) / 2
    for fold in patient_folds(manifest, 5, seed=0):
        used = {manifest.examples[i].patient for i in fold.train + fold.val}
        assert not used & test
    # The draw depends on the seed only, and keeps each rating group in the test set.
    nodules = [Nodule(f"n{i}", f"p{i % 30}", 1 + i % 5, 5.0, np.zeros(3), Path("i"), Path("m")) for i in range(60)]
    assert test_patients(nodules) == test_patients(list(reversed(nodules)))
    assert len(test_patients(nodules)) == 6


def test_training_cuts_the_box_the_core_cuts_at_a_point(prepared, data_dir: Path) -> None:
    from CTExplainLib.errors import InputError
    from CTExplainLib.points.crop import crop_input
    from CTExplainTraining.config import make_config, read_recipe
    from CTExplainTraining.data import LoadPreprocessd

    recipe = read_recipe(Path(__file__).resolve().parents[2] / "CTExplainTraining" / "recipes" / "lung_nodule_malignancy.json")
    config = make_config({**recipe, "manifest": str(prepared["malignancy"])})
    spec = config.input_spec()
    row = _rows(prepared["nodules"])[0]
    loaded = LoadPreprocessd(spec, True, None)({"image": row["image"], "mask": row["mask"]})
    point = [float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]
    at_point = crop_input(load_volume(row["image"]), spec, point, load_volume(row["mask"])).model_input.tensor
    assert tuple(loaded["image"].shape) == (3, 16, 32, 32)  # two windows and the outline
    assert float((loaded["image"] - at_point).abs().max()) < 1e-6
    with pytest.raises(InputError, match="needs a mask"):
        LoadPreprocessd(spec, True, None)({"image": row["image"], "mask": ""})
