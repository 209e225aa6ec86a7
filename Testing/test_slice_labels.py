"""Per-slice labels: CT-ICH's annotations turn into a CAM-in-positive-slices share per finding."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from CTExplainLib.cli import main
from CTExplainLib.errors import InputError
from CTExplainLib.models_catalog import HEAD_CLASSIFIER, read_package_info, resolve_package
from CTExplainLib.slice_labels import positive_slices, read_slice_labels


def ct_ich_labels(data_dir: Path, target: Path) -> Path:
    """CT-ICH's diagnosis CSV as (case, slice, positive): positive = any hemorrhage."""
    with open(data_dir / "ct-ich" / "hemorrhage_diagnosis.csv", newline="") as source, open(target, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["case", "slice", "positive"])
        for row in csv.DictReader(source):
            writer.writerow([row["PatientNumber"], row["SliceNumber"], 1 - int(row["No_Hemorrhage"])])
    return target


def test_numeric_case_names_match_whatever_their_padding(data_dir: Path, tmp_path: Path) -> None:
    labels = read_slice_labels(ct_ich_labels(data_dir, tmp_path / "labels.csv"))
    flags = positive_slices(labels, "049", 40)
    assert flags is not None and len(flags) == 40
    assert sum(flags) == 9  # patient 49 has 9 slices with hemorrhage
    assert positive_slices(labels, "no-such-case", 10) is None


def test_malformed_csv(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("case,slice\n1,2\n")
    with pytest.raises(InputError, match="columns case, slice, positive"):
        read_slice_labels(bad)
    bad.write_text("case,slice,positive\n1,two,1\n")
    with pytest.raises(InputError, match="line 2"):
        read_slice_labels(bad)


@pytest.mark.slow
def test_cli_reports_energy_in_positive_slices(data_dir: Path, tmp_path: Path, capsys) -> None:
    labels = ct_ich_labels(data_dir, tmp_path / "labels.csv")
    status = main(
        ["explain", str(data_dir / "ct-ich" / "brain" / "049"), "--out", str(tmp_path / "out"), "--spacing", "0.4", "0.4", "5",
         "--slice-labels", str(labels), "--model", HEAD_CLASSIFIER, "--segmenter", "none", "--device", "cpu", "--no-progress"]
    )
    assert status == 0, capsys.readouterr().err
    findings = json.loads((tmp_path / "out" / "049" / "result.json").read_text())["findings"]
    shares = [f["anatomy"]["energy_in_positive_slices"] for f in findings]
    assert len(shares) == len(read_package_info(resolve_package(HEAD_CLASSIFIER)).class_names)
    assert all(0.0 <= s <= 1.0 for s in shares)
