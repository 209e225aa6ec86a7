"""report.html per case and the cohort's summary.csv / summary.html, from real runs of the CLI."""
from __future__ import annotations

import base64
import html
import csv
import json
import re
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
from PIL import Image

from CTExplainLib.cli import main
from CTExplainLib.demo_models import LUNG, untrained_package
from CTExplainLib.model_package import InputSpec
from CTExplainLib.montage import FOOTER_PX, GAP_PX, TEXT_LINE_PX
from CTExplainLib.outputs.report import case_report_html

pytestmark = pytest.mark.slow  # the cohort fixture runs the CLI on two real CTs (~8 s)


@pytest.fixture(scope="module")
def cohort(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, dict, str]:
    """Two real CTs (a NIfTI chest-abdomen, Slicer's DICOM head) and one missing input, run with
    small untrained packages (a two-finding classifier, a lungs/liver segmenter)."""
    folder = tmp_path_factory.mktemp("cohort")
    spec = InputSpec(3, [LUNG], spacing=(8.0, 8.0, 8.0), size=(32, 32, 16), orientation="LPS")
    classifier = untrained_package(folder / "cls", "cls", "multilabel", "CompactCNN", ["nodule", "effusion"], spec, {"channels": [4, 8]})
    segmenter = untrained_package(folder / "seg", "seg", "segmentation", "UNet", ["background", "lungs", "liver"], spec, {"channels": [4, 8], "num_res_units": 0})
    inputs = {"nifti": data_dir / "totalsegmentator" / "example_ct_sm.nii.gz", "dicom": data_dir / "slicer-cthead", "missing": folder / "missing.nii.gz"}
    out = folder / "out"
    status = main(["explain", *map(str, inputs.values()), "--out", str(out), "--model", str(classifier), "--segmenter", str(segmenter), "--device", "cpu", "--no-progress"])
    assert status == 2, "the missing input fails, the others run"
    return out, inputs, str(classifier)


def _record(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def test_case_report_is_self_contained_and_shows_the_results(cohort) -> None:
    out, _, _ = cohort
    for name in ("example_ct_sm", "slicer-cthead"):
        folder = out / name
        record = _record(folder)
        text = (folder / "report.html").read_text(encoding="utf-8")
        # Self-contained: every image is embedded, nothing is fetched.
        sources = re.findall(r'src="([^"]*)"', text)
        assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
        assert not re.search(r'(href|src)="(https?:|//)', text)
        embedded = [base64.b64decode(s.split(",", 1)[1]) for s in sources]
        montages = [(folder / f["montage"]).read_bytes() for f in record["findings"]]
        assert embedded == montages
        for finding in record["findings"]:
            assert f"{finding['probability']:.4g}" in text
            for share in finding["anatomy"]["energy_by_segment"].values():
                assert f"{100 * share:.1f}%" in text
        assert record["warnings"] and all(html.escape(w) in text for w in record["warnings"])
        for segment in record["segments"]:
            r, g, b = (round(255 * c) for c in segment["color"])
            assert f"rgb({r},{g},{b})" in text and segment["name"] in text


def test_montage_legend_of_a_run_uses_the_segmenter_colours(cohort) -> None:
    out, _, _ = cohort
    folder = out / "example_ct_sm"
    record = _record(folder)
    picture = np.asarray(Image.open(folder / record["findings"][0]["montage"]).convert("RGB"))
    legend = picture[-(TEXT_LINE_PX + GAP_PX):].reshape(-1, 3)
    coloured = {tuple(int(v) for v in c) for c in np.unique(legend[~((legend[:, 0] == legend[:, 1]) & (legend[:, 1] == legend[:, 2]))], axis=0)}
    assert coloured == {tuple(int(v) for v in np.round(np.array(s["color"]) * 255)) for s in record["segments"]}
    assert picture.shape[0] > FOOTER_PX


def test_report_renders_any_further_per_finding_field(cohort) -> None:
    """Fields the report does not know (a faithfulness check, say) are shown as they are."""
    out, _, _ = cohort
    folder = out / "example_ct_sm"
    record = _record(folder)
    record["findings"][0]["faithfulness"] = {"deletion_auc": 0.1234, "random_baseline": [0.5, 0.25], "verdict": "<unfaithful>"}
    text = case_report_html(record, folder)
    assert "faithfulness" in text and "deletion_auc" in text and "0.1234" in text and "0.5, 0.25" in text
    assert "&lt;unfaithful&gt;" in text and "<unfaithful>" not in text, "values are escaped"


def test_cohort_summary_has_one_row_per_case(cohort) -> None:
    out, inputs, _ = cohort
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["input"] for r in rows] == [str(inputs["missing"]), str(inputs["nifti"]), str(inputs["dicom"])]
    failed, *good = rows
    assert failed["status"] == "error" and "missing.nii.gz" in failed["error"] and failed["top_finding"] == ""
    summary = (out / "summary.html").read_text(encoding="utf-8")
    for row, name in zip(good, ("example_ct_sm", "slicer-cthead")):
        record = _record(out / name)
        probabilities = {f["name"]: f["probability"] for f in record["findings"]}
        assert row["status"] == "ok" and row["case"] == name
        assert {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")} == pytest.approx(probabilities, abs=5e-5)
        assert row["top_finding"] == max(probabilities, key=probabilities.get)
        assert int(row["warnings"]) == len(record["warnings"])
        assert f'href="{name}/report.html"' in summary
    assert "3 case(s): 2 ok, 1 failed" in summary


def test_single_case_writes_no_cohort_summary(data_dir: Path, cohort, tmp_path: Path) -> None:
    _, inputs, classifier = cohort
    assert main(["explain", str(inputs["nifti"]), "--out", str(tmp_path), "--model", classifier, "--segmenter", "none", "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example_ct_sm"]
    text = (tmp_path / "example_ct_sm" / "report.html").read_text(encoding="utf-8")
    assert "No segmenter ran" in text
