"""A nested run's numbers recorded in a shipped package, which still loads; a run that is not nested is refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from CTExplainLib.model_package import load_package
from CTExplainLib.models_catalog import resolve_package
from CTExplainTraining.record_protocol import main

PROTOCOL = "nested 5-fold cross-validation by patient: ..."


def _run(folder: Path, nested: bool, segmenter: bool = False) -> Path:
    folder.mkdir()
    metrics = {"protocol": PROTOCOL, "outer_folds": 5, "selections": [{"outer_fold": 1, "test_patients": ["slice-2"], "epochs": 11}]}
    if not segmenter:  # a segmenter's nested run pools nothing out of fold
        metrics["pooled_out_of_fold"] = {"auc_macro": 0.59}
    if nested:
        metrics["nested_cross_validation"] = {"auc_macro": {"mean": 0.66, "sd": 0.18, "n": 5, "n_none": 0}}
    (folder / "summary.json").write_text(json.dumps({"metrics": metrics}))
    return folder


def test_nested_numbers_go_into_the_package_and_a_plain_run_is_refused(tmp_path: Path, capsys) -> None:
    package = shutil.copytree(resolve_package("covid-consolidation-2d"), tmp_path / "pkg")
    assert main([str(package), str(_run(tmp_path / "nested", True)), "--command", "ctexplain-train ..."]) == 0
    entry = load_package(package).metadata.provenance["nested_cross_validation"]
    assert entry["protocol"] == PROTOCOL and entry["command"] == "ctexplain-train ..."
    assert entry["mean_sd"]["auc_macro"]["mean"] == 0.66
    assert "test_patients" not in entry["selections"][0]  # the choices, not the fold lists

    before = (package / "ctexplain-model.json").read_bytes()
    assert main([str(package), str(_run(tmp_path / "plain", False)), "--command", "x"]) == 2
    assert "not a nested cross-validation run" in capsys.readouterr().err
    assert (package / "ctexplain-model.json").read_bytes() == before


def test_a_segmenters_nested_run_is_recorded_without_pooled_numbers(tmp_path: Path) -> None:
    package = shutil.copytree(resolve_package("covid-infection-2d"), tmp_path / "pkg")
    assert main([str(package), str(_run(tmp_path / "nested", True, segmenter=True)), "--command", "ctexplain-train ..."]) == 0
    entry = load_package(package).metadata.provenance["nested_cross_validation"]
    assert entry["outer_folds"] == 5 and "pooled_out_of_fold" not in entry
