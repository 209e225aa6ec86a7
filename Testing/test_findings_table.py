"""The module's findings table, built from result.json findings without Slicer."""
from __future__ import annotations

import math

from CTExplainLib.findings_table import findings_table


def test_columns_rows_ras_peak_and_missing_regions() -> None:
    findings = [
        {"name": "a", "probability": 0.9, "anatomy": {"energy_by_segment": {"lungs": 0.7, "background": 0.3},
                                                       "dominant_segment": "lungs", "peak_segment": "lungs", "peak_lps": [10.0, -20.0, 5.0]}},
        {"name": "b", "probability": 0.1, "anatomy": {"energy_by_segment": {"outside_body": 1.0}}},
        {"name": "c", "probability": 0.5},
    ]
    columns = {title: (kind, values) for title, kind, values in findings_table(findings)}
    assert list(columns)[:5] == ["Finding", "Probability", "Dominant region", "Peak region", "Peak RAS"]
    assert list(columns)[5:] == ["CAM in lungs", "CAM in background", "CAM in outside_body"]
    assert columns["Finding"] == ("string", ["a", "b", "c"]) and columns["Probability"] == ("double", [0.9, 0.1, 0.5])
    assert columns["Peak RAS"][1] == ["-10.0, 20.0, 5.0", "", ""]  # L and P flip sign in RAS
    lungs = columns["CAM in lungs"][1]
    assert lungs[0] == 0.7 and math.isnan(lungs[1]) and math.isnan(lungs[2])


def test_faithfulness_columns_only_when_measured() -> None:
    findings = [
        {"name": "a", "probability": 0.9, "faithfulness": {"verdict": "faithful", "score": 0.134}},
        {"name": "b", "probability": 0.1},
    ]
    columns = {title: (kind, values) for title, kind, values in findings_table(findings)}
    assert columns["Faithfulness"] == ("string", ["faithful", ""])
    kind, scores = columns["Faithfulness score"]
    assert kind == "double" and scores[0] == 0.134 and math.isnan(scores[1])
    assert "Faithfulness" not in {title for title, _, _ in findings_table(findings[1:])}
