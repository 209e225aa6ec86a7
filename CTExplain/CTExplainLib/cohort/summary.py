"""The cohort summary: one row per case of a run of several cases, written by rank 0.

The hook ``ctexplain explain`` calls once all ranks are done is :func:`write_cohort_summary`;
a fuller summary (``summary.html`` beside the CSV) may replace this writer without touching
the command line.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

if TYPE_CHECKING:  # pipeline imports torch; the summary needs only the fields of its results
    from ..pipeline import CaseResult

SUMMARY_FILE = "summary.csv"
COLUMNS = ("case", "input", "status", "top_finding", "top_probability", "seconds", "error")


def _row(result: "CaseResult") -> List[str]:
    top = max(result.probabilities.items(), key=lambda kv: kv[1]) if result.probabilities else None
    return [
        result.output.name if result.output is not None else "",
        result.input,
        "ok" if result.ok else "failed",
        top[0] if top else "",
        f"{top[1]:.6f}" if top else "",
        f"{result.elapsed_s:.1f}",
        result.error,
    ]


def write_cohort_summary(out_dir: Path, results: Sequence["CaseResult"]) -> Optional[Path]:
    """``out_dir/summary.csv`` for two or more cases of which at least one succeeded (written
    atomically); None, writing nothing, otherwise (one case has its result.json; a run where
    every case failed leaves no folder behind)."""
    if len(results) < 2 or not any(r.ok for r in results):
        return None
    from ..writing import atomic_output

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_row(r) for r in results)
    path = Path(out_dir) / SUMMARY_FILE
    with atomic_output(path) as temporary:
        temporary.write_text(text.getvalue(), encoding="utf-8")
    return path
