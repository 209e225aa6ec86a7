"""Splits: grouped by patient, stratified, test examples kept out, deterministic."""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest

from CTExplainTraining.manifest import Example, Manifest, ManifestError, read_class_folders, read_manifest
from CTExplainTraining.splits import Fold, check_no_patient_leak, holdout_split, patient_folds, test_indices


def _manifest(task: str, labels: Sequence[Sequence[float]], patients: Sequence[str], splits: Optional[Sequence[Optional[str]]] = None) -> Manifest:
    n_classes = len(labels[0])
    classes = [f"c{i}" for i in range(n_classes)]
    examples = [
        Example(Path(f"/x/{i}.nii.gz"), np.asarray(label, dtype=np.float32), None, patients[i], splits[i] if splits else None, i + 2)
        for i, label in enumerate(labels)
    ]
    return Manifest(task, classes, examples, Path("/x/m.csv"))


def _binary(n_patients: int = 60, per_patient: int = 2, positive_every: int = 3, test: int = 0) -> Manifest:
    """Patients with several examples each; every ``positive_every``-th patient positive."""
    labels, patients, splits = [], [], []
    for p in range(n_patients):
        for _ in range(per_patient):
            labels.append([1.0 if p % positive_every == 0 else 0.0])
            patients.append(f"p{p}")
            splits.append("test" if p < test else None)
    return _manifest("binary", labels, patients, splits)


def _patients(manifest: Manifest, indices: List[int]) -> set:
    return {manifest.examples[i].patient for i in indices}


def test_patient_folds_partition_without_leaks() -> None:
    m = _binary(n_patients=60, test=6)
    folds = patient_folds(m, k=5, seed=0)
    tests = test_indices(m)
    assert len(tests) == 12 and all(m.examples[i].split == "test" for i in tests)
    assert [f.index for f in folds] == list(range(5))
    in_val = Counter(i for f in folds for i in f.val)
    pool = [i for i in range(len(m.examples)) if i not in tests]
    assert sorted(in_val) == pool and set(in_val.values()) == {1}  # each non-test example in one val fold
    overall = np.mean([m.examples[i].target[0] for i in pool])
    for f in folds:
        assert not (_patients(m, f.train) & _patients(m, f.val))
        assert sorted(f.train + f.val) == pool and not set(tests) & set(f.train + f.val)
        check_no_patient_leak(m, f)
        fraction = np.mean([m.examples[i].target[0] for i in f.val])
        assert abs(fraction - overall) < 0.1  # stratified: ~1/3 positive in every fold


def test_folds_are_deterministic_for_a_seed() -> None:
    m = _binary()
    assert patient_folds(m, 4, seed=3) == patient_folds(m, 4, seed=3)
    assert holdout_split(m, seed=3) == holdout_split(m, seed=3)
    assert patient_folds(m, 4, seed=3) != patient_folds(m, 4, seed=4)


def test_multiclass_stratification() -> None:
    y = [i % 3 for i in range(45)]
    m = _manifest("multiclass", np.eye(3)[y], [f"p{i}" for i in range(45)])
    for f in patient_folds(m, 3, seed=1):
        assert sorted(Counter(y[i] for i in f.val).values()) == [5, 5, 5]


def test_multilabel_falls_back_to_a_feasible_stratification() -> None:
    # Label 0 is common (half); label 1 is rare (2 patients): the combination and label 1 are
    # infeasible for 4 folds, so folds stratify on label 0.
    labels = [[float(i % 2), 1.0 if i in (0, 1) else 0.0] for i in range(40)]
    m = _manifest("multilabel", labels, [f"p{i}" for i in range(40)])
    folds = patient_folds(m, 4, seed=0)
    for f in folds:
        assert sum(labels[i][0] for i in f.val) == 5
    assert sorted(i for f in folds for i in f.val) == list(range(40))


def test_holdout_uses_the_split_column() -> None:
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2 + [None] * 2
    m = _manifest("binary", [[i % 2] for i in range(12)], [f"p{i}" for i in range(12)], splits)
    fold = holdout_split(m)
    assert fold == Fold(0, [0, 1, 2, 3, 4, 5, 10, 11], [6, 7])


def test_holdout_without_split_column_is_grouped_and_about_the_fraction() -> None:
    m = _binary(n_patients=50, per_patient=3)
    fold = holdout_split(m, val_fraction=0.2, seed=0)
    assert not (_patients(m, fold.train) & _patients(m, fold.val))
    assert len(_patients(m, fold.val)) == 10 and len(fold.train) + len(fold.val) == 150
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(m, val_fraction=1.0)


def test_leak_and_too_few_patients_are_errors() -> None:
    m = _binary(n_patients=4, per_patient=2)
    with pytest.raises(ManifestError, match="fold 3 has 1 patient\\(s\\) on both sides: patient 'p1' \\(train: row 4; val: row 5\\)"):
        check_no_patient_leak(m, Fold(3, [0, 1, 2], [3, 4]))
    with pytest.raises(ManifestError, match="4 patient\\(s\\) outside the test split, fewer than the 5 folds"):
        patient_folds(m, 5)


def test_real_ct_ich_folds(data_dir: Path, tmp_path: Path) -> None:
    per_patient: Dict[int, List[int]] = defaultdict(lambda: [0, 0])
    with open(data_dir / "ct-ich" / "hemorrhage_diagnosis.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            p = per_patient[int(row["PatientNumber"])]
            p[0] |= int(row["No_Hemorrhage"]) == 0
            p[1] |= int(row["Fracture_Yes_No"])
    with open(tmp_path / "m.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "patient", "any_hemorrhage", "fracture"])
        writer.writerows([f"{data_dir}/ct-ich/brain/{n:03d}", n] + v for n, v in sorted(per_patient.items()))
    m = read_manifest(tmp_path / "m.csv", "multilabel")
    folds = patient_folds(m, 5, seed=0)
    assert sorted(i for f in folds for i in f.val) == list(range(66))
    for f in folds:
        positives = sum(m.examples[i].target[0] for i in f.val)
        assert 4 <= positives <= 8  # 29 of 66 with any hemorrhage, ~13 patients per fold


def test_real_chest_ct_holdout_uses_the_split_folders(data_dir: Path) -> None:
    m = read_class_folders(data_dir / "chest-ct-4class")
    fold = holdout_split(m)
    assert (len(fold.train), len(fold.val), len(test_indices(m))) == (515, 62, 213)
