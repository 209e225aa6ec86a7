"""Train/validation splits that never put one patient on both sides.

Folds are grouped by patient and stratified on the label with scikit-learn's
``StratifiedGroupKFold``; examples marked ``test`` in the manifest never enter a fold.
Everything is deterministic for a seed. Example::

    from CTExplainTraining.splits import patient_folds
    for fold in patient_folds(manifest, k=5, seed=0):
        train = [manifest.examples[i] for i in fold.train]
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .manifest import Manifest, ManifestError

LOG = logging.getLogger(__name__)


@dataclass
class Fold:
    """One split: indices into ``manifest.examples``."""

    index: int
    train: List[int]
    val: List[int]


def test_indices(manifest: Manifest) -> List[int]:
    """Indices of the examples whose split is ``test``."""
    return [i for i, e in enumerate(manifest.examples) if e.split == "test"]


# pytest would otherwise collect this public function as a test when a test module imports it.
test_indices.__test__ = False  # type: ignore[attr-defined]


def holdout_split(manifest: Manifest, val_fraction: float = 0.2, seed: int = 0) -> Fold:
    """One train/validation split of the non-test examples.

    When the manifest marks ``val`` examples, they are the validation set and every other
    non-test example trains. Otherwise the split is the first fold of a patient-grouped,
    label-stratified K-fold with K = round(1 / val_fraction). ``val_fraction`` 0 trains on
    every non-test example without validation (a fixed number of epochs, no early stopping).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), not {val_fraction}")
    examples = manifest.examples
    if val_fraction == 0.0:
        return Fold(0, [i for i, e in enumerate(examples) if e.split != "test"], [])
    if any(e.split == "val" for e in examples):
        val = [i for i, e in enumerate(examples) if e.split == "val"]
        train = [i for i, e in enumerate(examples) if e.split in ("train", None)]
        if not train:
            raise ManifestError(manifest.source, "has validation examples but no training examples")
        unassigned = sum(1 for e in examples if e.split is None)
        if unassigned:
            LOG.info("%s: %d examples without a split train beside the 'train' ones", manifest.source, unassigned)
        fold = Fold(0, train, val)
    else:
        k = max(2, int(round(1.0 / val_fraction)))
        fold = _grouped_folds(manifest, k, seed)[0]
    check_no_patient_leak(manifest, fold)
    return fold


def patient_folds(manifest: Manifest, k: int, seed: int = 0) -> List[Fold]:
    """K folds of the non-test examples, grouped by patient and stratified on the label.

    Each non-test example is in exactly one validation fold. Multilabel targets are
    stratified on the combination of all labels when every combination has at least ``k``
    patients, else on the first label column for which that holds, else not at all.
    """
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, not {k}")
    folds = _grouped_folds(manifest, k, seed)
    for fold in folds:
        check_no_patient_leak(manifest, fold)
    return folds


def patient_split_within(manifest: Manifest, pool: Sequence[int], val_fraction: float, seed: int = 0) -> Fold:
    """A train/validation split of the examples ``pool`` (indices) alone, grouped by patient and
    stratified like :func:`patient_folds` (the first of K = round(1 / val_fraction) folds):
    the inner split of nested cross-validation, which must not see the outer test fold."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"an inner split needs val_fraction in (0, 1), not {val_fraction}")
    fold = _grouped_folds(manifest, max(2, int(round(1.0 / val_fraction))), seed, pool)[0]
    check_no_patient_leak(manifest, fold)
    return fold


def check_no_patient_leak(manifest: Manifest, fold: Fold) -> None:
    """Raise :class:`ManifestError` naming each patient with examples in both train and val."""
    examples = manifest.examples
    train_patients: Dict[str, List[int]] = defaultdict(list)
    for i in fold.train:
        train_patients[examples[i].patient].append(i)
    leaks: Dict[str, List[int]] = defaultdict(list)
    for i in fold.val:
        if examples[i].patient in train_patients:
            leaks[examples[i].patient].append(i)
    if leaks:
        parts = [
            f"patient {patient!r} (train: {_rows(manifest, train_patients[patient])}; val: {_rows(manifest, val)})"
            for patient, val in leaks.items()
        ]
        raise ManifestError(manifest.source, f"fold {fold.index} has {len(leaks)} patient(s) on both sides: {', '.join(parts)}")


# --- helpers ---------------------------------------------------------------------------


def _grouped_folds(manifest: Manifest, k: int, seed: int, pool: Optional[Sequence[int]] = None) -> List[Fold]:
    """K patient-grouped folds of ``pool`` (default: every example outside the test split)."""
    if pool is None:
        test = set(test_indices(manifest))
        pool = [i for i in range(len(manifest.examples)) if i not in test]
    pool = list(pool)
    if not pool:
        raise ManifestError(manifest.source, "has no examples outside the test split to train on")
    groups = np.array([manifest.examples[i].patient for i in pool], dtype=object)
    n_patients = len(set(groups.tolist()))
    if n_patients < k:
        raise ManifestError(manifest.source, f"has {n_patients} patient(s) outside the test split, fewer than the {k} folds asked for")
    strata = _strata(manifest, pool, groups, k)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for index, (train, val) in enumerate(splitter.split(np.zeros(len(pool)), strata, groups)):
        folds.append(Fold(index, sorted(int(pool[j]) for j in train), sorted(int(pool[j]) for j in val)))
    return folds


def _strata(manifest: Manifest, pool: List[int], groups: np.ndarray, k: int) -> np.ndarray:
    """One integer stratum per pooled example (all zeros when nothing feasible to stratify on)."""
    if manifest.task == "segmentation":
        return np.zeros(len(pool), dtype=int)
    targets = np.stack([np.asarray(manifest.examples[i].target) for i in pool]) > 0.5
    if manifest.task == "multiclass":
        return np.argmax(targets, axis=1)
    if manifest.task == "binary":
        return targets[:, 0].astype(int)
    candidates = [("all labels combined", targets)] + [
        (f"label {name!r}", targets[:, [c]]) for c, name in enumerate(manifest.classes)
    ]
    for what, columns in candidates:
        keys = ["".join("1" if v else "0" for v in row) for row in columns]
        if _feasible(keys, groups, k):
            LOG.info("%s: folds stratified on %s", manifest.source, what)
            return np.unique(keys, return_inverse=True)[1]
    LOG.warning("%s: no label has %d patients in each value; folds are not stratified", manifest.source, k)
    return np.zeros(len(pool), dtype=int)


def _feasible(keys: List[str], groups: np.ndarray, k: int) -> bool:
    patients: Dict[str, Set[str]] = defaultdict(set)
    for key, group in zip(keys, groups):
        patients[key].add(group)
    return len(patients) > 1 and min(len(p) for p in patients.values()) >= k


def _rows(manifest: Manifest, indices: List[int], limit: Optional[int] = 5) -> str:
    shown = [
        f"row {manifest.examples[i].row}" if manifest.examples[i].row else str(manifest.examples[i].image)
        for i in indices[:limit]
    ]
    more = f" and {len(indices) - len(shown)} more" if limit is not None and len(indices) > limit else ""
    return ", ".join(shown) + more
