"""Grad-CAM against lesion masks: the measure, the held-out split of the COVID slices, and the
check run end to end with the shipped COVID models on real slices."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib.models_catalog import resolve_package
from CTExplainTraining.attention_check import lesion_share, main
from CTExplainTraining.datasets.covid_infection import prepare, held_out_slices

CONSOLIDATION_RGB = (0, 128, 0)  # palette index 2 as SimpleITK expands it


def test_lesion_share_is_the_area_for_uniform_heat_and_all_or_nothing_on_or_off_the_lesion() -> None:
    labels = np.zeros((1, 40, 50), dtype=np.uint8)
    labels[0, 5:15, 10:30] = 1
    labels[0, 20:25, 5:10] = 2
    lesion = labels > 0
    assert lesion_share(np.ones(labels.shape), labels, [1, 2]) == pytest.approx(lesion.mean())
    assert lesion_share(lesion.astype(float), labels, [1, 2]) == pytest.approx(1.0)
    assert lesion_share((~lesion).astype(float), labels, [1, 2]) == pytest.approx(0.0)
    assert lesion_share((labels == 2).astype(float), labels, [1]) == pytest.approx(0.0)


def test_held_out_slices_are_a_seeded_fifth_of_each_class() -> None:
    labels = [1] * 39 + [0] * 11
    held_out = held_out_slices(labels)
    assert held_out == held_out_slices(labels)
    assert sum(h for h, label in zip(held_out, labels) if label == 1) == 8
    assert sum(h for h, label in zip(held_out, labels) if label == 0) == 2
    assert held_out_slices(labels, seed=1) != held_out


def test_consolidation_labels_agree_with_the_masks_read_another_way(data_dir: Path, tmp_path: Path) -> None:
    prepare(data_dir / "covid-infection-2d", tmp_path)
    with open(tmp_path / "findings.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 50
    for row in rows:
        rgb = sitk.GetArrayFromImage(sitk.ReadImage(row["mask"])).reshape(-1, 3)
        has_green = bool(np.any(np.all(rgb == CONSOLIDATION_RGB, axis=1)))
        assert row["consolidation"] == str(int(has_green)), row["mask"]
    assert {row["split"] for row in rows} == {"train", "test"}


@pytest.mark.slow
def test_attention_check_on_held_out_slices_with_the_shipped_models(data_dir: Path, tmp_path: Path) -> None:
    prepare(data_dir / "covid-infection-2d", tmp_path / "manifest")
    out = tmp_path / "attention"
    status = main([str(resolve_package("covid-consolidation-2d")), str(tmp_path / "manifest" / "findings.csv"), "--split", "test",
                   "--image-spacing", "1", "1", "1", "--segmenter", str(resolve_package("covid-infection-2d")), "--out", str(out)])
    assert status == 0
    report = json.loads((out / "attention.json").read_text())
    assert report["finding"] == "consolidation" and report["summary"]["cases"] == 10
    for case in report["cases"]:
        rgb = sitk.GetArrayFromImage(sitk.ReadImage(case["image"].replace("/Imgs/", "/GT/").replace(".jpg", ".png")))
        assert case["lesion_area"] == pytest.approx(np.any(rgb > 0, axis=-1).mean(), abs=1e-6)
        assert 0.0 <= case["cam_in_lesion"] <= 1.0 and 0.0 <= case["cam_in_predicted_lesion"] <= 1.0
        assert (out / f"{Path(case['image']).stem}.png").is_file()
