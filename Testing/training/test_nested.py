"""Nested cross-validation: no patient of an outer test fold ever takes part in choosing or
training the model that scores it; the choices are made on the inner split alone."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest

from CTExplainTraining.cli import main as train_main
from CTExplainTraining.config import make_config
from CTExplainTraining.manifest import Example, Manifest, ManifestError, read_manifest
from CTExplainTraining.nested import NestedFold, check_nested, choose_threshold, nested_folds, vote
from CTExplainTraining.splits import Fold

from training_fixtures import tiny_recipe, write_recipe


def _manifest(n_patients: int = 30, slices: int = 4) -> Manifest:
    """Slice rows of ``n_patients`` patients; every third patient positive."""
    examples = []
    for p in range(n_patients):
        for k in range(slices):
            target = np.asarray([1.0 if p % 3 == 0 else 0.0], dtype=np.float32)
            examples.append(Example(Path(f"/x/{p}.nii.gz"), target, None, f"p{p}", None, len(examples) + 2, slice=k))
    return Manifest("binary", ["c0"], examples, Path("/x/m.csv"))


def _patients(manifest: Manifest, indices: Sequence[int]) -> set:
    return {manifest.examples[i].patient for i in indices}


def test_no_patient_is_both_choosing_the_model_and_in_its_outer_test_fold() -> None:
    m = _manifest()
    folds = nested_folds(m, k=5, val_fraction=0.25, seed=0)
    all_patients = _patients(m, range(len(m.examples)))
    tested: List[str] = []
    for fold in folds:
        test = _patients(m, fold.outer_test)
        choosing = _patients(m, fold.inner.train) | _patients(m, fold.inner.val)
        assert not test & choosing
        assert choosing | test == all_patients  # everyone else takes part in choosing
        assert not _patients(m, fold.inner.train) & _patients(m, fold.inner.val)
        assert set(fold.inner.train + fold.inner.val) == set(fold.outer_train)
        assert 0.15 < len(_patients(m, fold.inner.val)) / len(choosing) < 0.35
        tested += sorted(test)
    assert sorted(tested) == sorted(all_patients)  # each patient scored exactly once


def test_a_planted_leak_is_refused() -> None:
    m = _manifest(n_patients=10, slices=2)
    fold = nested_folds(m, k=5, val_fraction=0.25, seed=0)[0]
    leaked_row = fold.outer_test[0]  # a slice of an outer-test patient slipped into inner validation
    planted = NestedFold(fold.index, fold.outer_train + [leaked_row], fold.outer_test, Fold(0, fold.inner.train, fold.inner.val + [leaked_row]))
    with pytest.raises(ManifestError, match=f"patient\\(s\\) {m.examples[leaked_row].patient} are in its test fold"):
        check_nested(m, planted)
    outside = NestedFold(fold.index, fold.outer_train, fold.outer_test, Fold(0, fold.inner.train[1:], fold.inner.val))
    check_nested(m, outside)  # a subset is fine
    stray = NestedFold(fold.index, fold.outer_train[1:], fold.outer_test, Fold(0, fold.inner.train, fold.inner.val))
    with pytest.raises(ManifestError, match="outside the outer training set"):
        check_nested(m, stray)


def test_threshold_is_the_best_mean_balanced_accuracy() -> None:
    probabilities = np.array([[0.1, 0.2], [0.3, 0.9], [0.6, 0.4], [0.8, 0.7]])
    targets = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    # 0.6 separates both labels; 0.4 calls label 1's 0.4 positive (0.875), 0.7 misses label 0's 0.6 (0.875).
    assert choose_threshold(probabilities, targets) == pytest.approx(0.6)


def test_vote_takes_the_candidate_most_folds_chose() -> None:
    config = make_config({"manifest": "/x/m.csv", "task": "binary", "out": "/x/out", "nested_cv": 3,
                          "candidates": [{}, {"slice_context": 1}], "aggregations": ["max", "topk_mean:3", "noisy_or"], "spatial_dims": 2})
    selections = [
        {"outer_fold": 1, "candidate": 1, "aggregation": "topk_mean:3", "threshold": 0.3, "epochs": 4},
        {"outer_fold": 2, "candidate": 0, "aggregation": "max", "threshold": 0.9, "epochs": 9},
        {"outer_fold": 3, "candidate": 1, "aggregation": "max", "threshold": 0.5, "epochs": 6},
    ]
    chosen = vote(config, selections)
    assert chosen["overrides"] == {"slice_context": 1} and chosen["outer_folds_choosing_it"] == [1, 3]
    assert chosen["aggregation"] == "max"  # a tie between folds 1 and 3: the earlier in the list
    assert (chosen["threshold"], chosen["epochs"]) == (pytest.approx(0.4), 5)


def test_a_candidate_may_not_change_the_protocol() -> None:
    base = {"manifest": "/x/m.csv", "task": "binary", "out": "/x/out", "nested_cv": 3, "spatial_dims": 2}
    with pytest.raises(ManifestError, match="candidates may not set val_fraction"):
        make_config({**base, "candidates": [{"val_fraction": 0.5}]})
    with pytest.raises(ManifestError, match="aggregation must be"):
        make_config({**base, "aggregations": ["topk_mean"]})
    with pytest.raises(ManifestError, match="no --cv"):
        make_config({**base, "cv": 5})


@pytest.mark.slow
def test_nested_run_on_real_ct_exports_its_choice(ct_ich_small: Path, tmp_path: Path) -> None:
    """8 real patients, 2 outer folds, 2D against 2.5D: the package holds the voted settings, the
    protocol and per-label ECE, and the training scores the core must reproduce."""
    recipe = tiny_recipe(ct_ich_small / "slices.csv", tmp_path / "run", epochs=1, max_steps_per_epoch=2, val_fraction=0.5, nested_cv=2,
                         candidates=[{}, {"slice_context": 1}], aggregations=["max", "noisy_or"], choose_threshold=True)
    assert train_main(["--config", str(write_recipe(tmp_path / "recipe.json", recipe))]) == 0
    metadata = json.loads((tmp_path / "run" / "model" / "ctexplain-model.json").read_text())
    metrics = metadata["provenance"]["metrics"]
    selected = metrics["selected"]
    assert metrics["protocol"].startswith("nested 2-fold cross-validation by patient")
    assert metadata["volume_score"] == selected["volume_score"] and metadata["threshold"] == pytest.approx(selected["threshold"])
    assert metadata["input"]["slice_context"] == selected["overrides"].get("slice_context", 0)
    assert metadata["network_kwargs"]["in_channels"] == 2 * (2 * metadata["input"]["slice_context"] + 1)
    assert set(metrics["nested_cross_validation"]["per_class"]["any_hemorrhage"]) >= {"auc", "ece"}
    assert len(metrics["selections"]) == 2 and len(metrics["training_case_scores"]) == 8
    for selection in metrics["selections"]:
        assert {row["candidate"] for row in selection["inner_validation"]} == {0, 1}
    tested = [p for s in metrics["selections"] for p in s["test_patients"]]
    assert sorted(tested) == sorted({e.patient for e in read_manifest(ct_ich_small / "slices.csv", "multilabel",
                                                                      label_columns=["any_hemorrhage", "skull_fracture"]).examples})


@pytest.mark.slow
def test_a_segmenter_runs_nested_and_records_its_dice(data_dir: Path, tmp_path: Path) -> None:
    """Real LIDC nodule crops (the first 24 rows), 2 outer folds, two candidates: each outer fold
    is scored by the run's segmentation validation (Dice), the package records the protocol and
    no pooled probabilities; a segmenter recipe that asks for aggregations is refused."""
    from CTExplainTraining.datasets.lidc_nodules import prepare

    paths = prepare(data_dir / "lidc-nodules", tmp_path / "data", limit=24)
    recipe = json.loads((Path(__file__).resolve().parents[2] / "CTExplainTraining" / "recipes" / "lung_nodule_segmenter.json").read_text())
    recipe.update(manifest=str(paths["segmentation"]), out=str(tmp_path / "run"), epochs=1, max_steps_per_epoch=2, batch_size=8,
                  nested_cv=2, val_fraction=0.5, network_kwargs={"channels": [4, 8], "strides": [2], "num_res_units": 0},
                  candidates=[{}, {"lr": 0.001}])
    assert train_main(["--config", str(write_recipe(tmp_path / "recipe.json", recipe))]) == 0
    metrics = json.loads((tmp_path / "run" / "model" / "ctexplain-model.json").read_text())["provenance"]["metrics"]
    assert metrics["protocol"].startswith("nested 2-fold cross-validation by patient")
    assert metrics["nested_cross_validation"]["dice_mean"]["n"] == 2 and "pooled_out_of_fold" not in metrics
    folds = [json.loads((tmp_path / "run" / f"outer-{n}" / "outer-fold.json").read_text()) for n in (1, 2)]
    assert all(0.0 <= fold["metrics"]["dice_mean"] <= 1.0 and "probabilities" not in fold for fold in folds)
    assert not set(folds[0]["selection"]["test_patients"]) & set(folds[1]["selection"]["test_patients"])
    assert all({row["candidate"] for row in fold["selection"]["inner_validation"]} == {0, 1} for fold in folds)

    recipe.update(out=str(tmp_path / "refused"), aggregations=["max", "noisy_or"])
    assert train_main(["--config", str(write_recipe(tmp_path / "refused.json", recipe))]) != 0
    assert not (tmp_path / "refused" / "model").exists()
