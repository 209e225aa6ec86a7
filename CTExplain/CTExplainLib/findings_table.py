"""The findings table the Slicer module shows: its columns, from the findings of ``result.json``."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

TableColumn = Tuple[str, str, List[Any]]  # (title, "string" or "double", one value per finding)
PointMap = Callable[[Tuple[float, float, float]], Sequence[float]]


FAITHFULNESS_COLUMNS: Tuple[Tuple[str, str], ...] = (("Faithfulness", "string"), ("Faithfulness score", "double"))


def faithfulness_columns() -> List[TableColumn]:
    """The two columns of a map's faithfulness: its verdict and score."""
    return [(title, kind, []) for title, kind in FAITHFULNESS_COLUMNS]


def faithfulness_cells(finding: Dict[str, Any]) -> List[Any]:
    """A finding's values for :func:`faithfulness_columns` (empty / NaN when not measured)."""
    faithful = finding.get("faithfulness") or {}
    return [str(faithful.get("verdict", "")), float(faithful.get("score", float("nan")))]


def findings_table(findings: Sequence[Dict[str, Any]], peak_ras_to_shown: Optional[PointMap] = None) -> List[TableColumn]:
    """One row per finding: name, probability, where its map lies, and the share of its CAM
    energy in each region ("CAM in <segment>", "CAM in background", "CAM in outside_body";
    NaN where a finding has no share for a region), and where any finding's map was measured
    for faithfulness, its verdict and score (empty / NaN for the others).

    ``peak_ras_to_shown`` maps the peak's RAS on the input's own grid to the RAS it is shown at
    (in Slicer: through the input's parent transforms, to world coordinates); None keeps it."""
    regions: List[str] = []
    for finding in findings:
        for region in (finding.get("anatomy") or {}).get("energy_by_segment", {}):
            if region not in regions:
                regions.append(region)
    columns: List[TableColumn] = [("Finding", "string", []), ("Probability", "double", []), ("Dominant region", "string", []),
                                  ("Peak region", "string", []), ("Peak RAS", "string", [])]
    columns += [(f"CAM in {region}", "double", []) for region in regions]
    measured = any(finding.get("faithfulness") for finding in findings)
    if measured:
        columns += faithfulness_columns()
    for finding in findings:
        stats = finding.get("anatomy") or {}
        lps = stats.get("peak_lps")
        ras = None if lps is None else (-float(lps[0]), -float(lps[1]), float(lps[2]))  # LPS -> RAS
        if ras is not None and peak_ras_to_shown is not None:
            ras = tuple(peak_ras_to_shown(ras))
        peak = "" if ras is None else "%.1f, %.1f, %.1f" % tuple(ras)
        energy = stats.get("energy_by_segment", {})
        values = [finding["name"], float(finding["probability"]), stats.get("dominant_segment") or "",
                  stats.get("peak_segment") or "", peak] + [float(energy.get(region, float("nan"))) for region in regions]
        if measured:
            values += faithfulness_cells(finding)
        for (_, _, column), value in zip(columns, values):
            column.append(value)
    return columns
