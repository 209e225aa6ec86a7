"""Human-readable outputs made from ``result.json`` records alone (no pipeline internals):

- ``report.html`` per case: self-contained (montages embedded as base64 PNG), with the models,
  the warnings, each finding's probability and where its map lies in the anatomy, the
  segments with their colours, and any further per-finding measurement a record holds
  (faithfulness checks, for instance), rendered as it is found;
- ``summary.csv`` and ``summary.html`` for a cohort: one row per case (input, ok or error,
  top finding, each finding's probability, number of warnings), the HTML linking each case's
  report.

Every file is written atomically (:func:`CTExplainLib.writing.atomic_output`).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..writing import atomic_output

REPORT_FILE = "report.html"
SUMMARY_CSV = "summary.csv"
SUMMARY_HTML = "summary.html"
RESULT_FILE = "result.json"

# Per-finding fields the report shows in their own places; any other is listed generically.
_FINDING_FIELDS_SHOWN = {"name", "probability", "above_threshold", "cam_raw_max", "heat_map", "montage", "anatomy", "dicom_heat_map"}
# Top-level fields shown in their own places, or too long to be worth showing.
_TOP_FIELDS_SHOWN = {
    "input", "series_uid", "classifier", "segmenter", "method", "findings", "segments", "warnings",
    "input_grid", "model_grid", "timings_s", "slice_probabilities", "patient", "dicom_segmentation",
}

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warn { background: #fff3cd; border: 1px solid #e0b000; padding: 0.5em 1em; }
.note { color: #555; font-size: 0.9em; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #333; vertical-align: middle; margin-right: 0.3em; }
img.montage { max-width: 100%; image-rendering: pixelated; border: 1px solid #888; }
tr.failed td { background: #fde2e2; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: Any) -> str:
    return f"{100.0 * float(value):.1f}%" if isinstance(value, (int, float)) else "-"


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _e(value)


def _color_css(rgb: Sequence[float]) -> str:
    r, g, b = (int(round(255 * float(c))) for c in rgb)
    return f"rgb({r},{g},{b})"


def _generic(value: Any, depth: int = 0) -> str:
    """Any JSON value as HTML: dicts as two-column tables, lists of scalars inline."""
    if isinstance(value, dict):
        if not value:
            return "-"
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_generic(v, depth + 1)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            shown = ", ".join(_number(v) for v in value[:20])
            return shown + (f", ... ({len(value)} values)" if len(value) > 20 else "")
        return "<ol>" + "".join(f"<li>{_generic(v, depth + 1)}</li>" for v in value) + "</ol>"
    if value is None:
        return "-"
    return _number(value)


def _image_tag(folder: Path, name: Optional[str], alt: str) -> str:
    if not name:
        return ""
    path = folder / name
    if not path.is_file():
        return f'<p class="note">{_e(name)} not found</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="montage" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _model_line(identity: Optional[Dict[str, Any]], role: str) -> str:
    if not identity:
        return f"<tr><th>{_e(role)}</th><td>none</td></tr>"
    text = f"{identity.get('name', '?')} {identity.get('version', '')} ({identity.get('task', '')}, {identity.get('network', '')})"
    if identity.get("untrained"):
        text += " UNTRAINED"
    return f"<tr><th>{_e(role)}</th><td>{_e(text)}</td></tr>"


def _regions(findings: Iterable[Dict[str, Any]]) -> List[str]:
    regions: List[str] = []
    for finding in findings:
        for name in (finding.get("anatomy") or {}).get("energy_by_segment", {}) or {}:
            if name not in regions:
                regions.append(name)
    return regions


def _findings_table(record: Dict[str, Any]) -> str:
    findings = record.get("findings", [])
    regions = _regions(findings)
    head = "".join(f"<th>{_e(h)}</th>" for h in ["finding", "probability", "above threshold", "peak in", *[f"energy in {r}" for r in regions]])
    rows = []
    for finding in findings:
        anatomy = finding.get("anatomy") or {}
        shares = anatomy.get("energy_by_segment") or {}
        cells = [
            f"<td>{_e(finding.get('name', '?'))}</td>",
            f"<td class=\"num\">{_number(finding.get('probability'))}</td>",
            f"<td>{_number(finding.get('above_threshold'))}</td>",
            f"<td>{_e(anatomy.get('peak_segment', '-'))}</td>",
            *[f"<td class=\"num\">{_percent(shares.get(r))}</td>" for r in regions],
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = ('<p class="note">Energy: the share of the finding\'s heat map lying in each region '
            "(segments of the segmenter, and outside the body for CT in HU); an empty cell: not measured for that finding.</p>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}"


def _finding_section(finding: Dict[str, Any], folder: Path) -> str:
    name = finding.get("name", "?")
    parts = [f"<h3>{_e(name)}: p = {_number(finding.get('probability'))}</h3>"]
    anatomy = finding.get("anatomy")
    if anatomy:
        parts.append(_generic({k: v for k, v in anatomy.items() if k != "energy_by_segment"}))
    extra = {k: v for k, v in finding.items() if k not in _FINDING_FIELDS_SHOWN}
    if extra:
        parts.append("<h4>Further measurements</h4>" + _generic(extra))
    files = [finding.get(k) for k in ("heat_map", "dicom_heat_map", "montage") if finding.get(k)]
    if files:
        parts.append('<p class="note">files: ' + ", ".join(_e(f) for f in files) + "</p>")
    parts.append(_image_tag(folder, finding.get("montage"), f"montage of {name}"))
    return "\n".join(parts)


def case_report_html(record: Dict[str, Any], folder: Path, title: Optional[str] = None) -> str:
    """The report of one case: ``record`` is its result.json, ``folder`` holds its montages."""
    folder = Path(folder)
    title = title or folder.name
    out: List[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>CTExplain: {_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>CTExplain: {_e(title)}</h1>",
        '<p class="note">Research models on small public data; not for clinical use.</p>',
        "<table>",
        f"<tr><th>input</th><td>{_e(record.get('input', ''))}</td></tr>",
        _model_line(record.get("classifier"), "classifier"),
        _model_line(record.get("segmenter"), "segmenter"),
        f"<tr><th>method</th><td>{_e(record.get('method', ''))}</td></tr>",
        *([f"<tr><th>DICOM SEG</th><td>{_e(record['dicom_segmentation'])}</td></tr>"] if record.get("dicom_segmentation") else []),
        "</table>",
    ]
    warnings = record.get("warnings") or []
    if warnings:
        out.append(f'<div class="warn"><b>{len(warnings)} warning(s)</b><ul>' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    out.append("<h2>Findings</h2>")
    out.append(_findings_table(record))
    segments = record.get("segments") or []
    out.append("<h2>Anatomy</h2>")
    if segments:
        out.append("<p>Outline colours: " + " ".join(
            f'<span class="swatch" style="background:{_color_css(s.get("color", (0, 0, 0)))}"></span>{_e(s.get("name", ""))}' for s in segments) + "</p>")
    else:
        out.append("<p>No segmenter ran: the montages show no anatomy outlines.</p>")
    extra = {k: v for k, v in record.items() if k not in _TOP_FIELDS_SHOWN}
    if extra:
        out.append("<h2>Further results</h2>" + _generic(extra))
    out.append("<h2>Heat maps</h2>")
    for finding in record.get("findings", []):
        if finding.get("heat_map") or finding.get("montage"):
            out.append(_finding_section(finding, folder))
    if record.get("timings_s"):
        out.append("<h2>Timings (s)</h2>" + _generic({k: round(float(v), 2) for k, v in record["timings_s"].items()}))
    out.append("</body></html>")
    return "\n".join(out)


def write_case_report(record: Dict[str, Any], folder: Path, title: Optional[str] = None) -> Path:
    """``folder/report.html`` from the case's ``record``; the montages it names must be in ``folder``."""
    path = Path(folder) / REPORT_FILE
    text = case_report_html(record, Path(folder), title)
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- cohort summary


@dataclass
class CaseEntry:
    """One case of a cohort: its input, its folder when it succeeded, else the error."""

    input: str
    folder: Optional[Path] = None
    error: str = ""

    def record(self) -> Optional[Dict[str, Any]]:
        if self.folder is None:
            return None
        path = Path(self.folder) / RESULT_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def _top(record: Dict[str, Any]) -> Tuple[str, Optional[float]]:
    findings = record.get("findings") or []
    if not findings:
        return "", None
    best = max(findings, key=lambda f: float(f.get("probability", 0.0)))
    return str(best.get("name", "")), float(best.get("probability", 0.0))


def summary_rows(entries: Sequence[CaseEntry]) -> Tuple[List[str], List[Dict[str, Any]]]:
    """The cohort table: column names and one dict per case (``p_<finding>`` per finding seen)."""
    records = [entry.record() for entry in entries]
    names: List[str] = []
    for record in records:
        for finding in (record or {}).get("findings", []):
            if finding.get("name") not in names:
                names.append(finding.get("name"))
    columns = ["case", "input", "status", "top_finding", "top_probability", *[f"p_{n}" for n in names], "warnings", "error", "report"]
    rows = []
    for entry, record in zip(entries, records):
        row: Dict[str, Any] = {c: "" for c in columns}
        row["input"] = entry.input
        row["case"] = Path(entry.folder).name if entry.folder is not None else Path(entry.input).name
        if record is None:
            row["status"] = "error"
            row["error"] = entry.error or "no result.json"
        else:
            row["status"] = "ok"
            top, probability = _top(record)
            row["top_finding"], row["top_probability"] = top, "" if probability is None else f"{probability:.4f}"
            for finding in record.get("findings", []):
                row[f"p_{finding.get('name')}"] = f"{float(finding.get('probability', 0.0)):.4f}"
            row["warnings"] = len(record.get("warnings") or [])
            if (Path(entry.folder) / REPORT_FILE).is_file():
                row["report"] = f"{Path(entry.folder).name}/{REPORT_FILE}"
        rows.append(row)
    return columns, rows


def summary_html(columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> str:
    ok = sum(1 for r in rows if r["status"] == "ok")
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>CTExplain cohort summary</title><style>{_STYLE}</style></head><body>',
        "<h1>CTExplain cohort summary</h1>",
        f"<p>{len(rows)} case(s): {ok} ok, {len(rows) - ok} failed.</p>",
        '<p class="note">Research models on small public data; not for clinical use.</p>',
        "<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>",
    ]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if column == "report" and value:
                cells.append(f'<td><a href="{_e(value)}">report</a></td>')
            elif column.startswith("p_") or column in ("top_probability", "warnings"):
                cells.append(f'<td class="num">{_e(value)}</td>')
            else:
                cells.append(f"<td>{_e(value)}</td>")
        css = ' class="failed"' if row["status"] != "ok" else ""
        out.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    out.append("</table></body></html>")
    return "\n".join(out)


def write_cohort_summary(out_dir: Path, entries: Sequence[CaseEntry]) -> Tuple[Path, Path]:
    """``summary.csv`` and ``summary.html`` in ``out_dir``, one row per entry."""
    columns, rows = summary_rows(entries)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = (Path(out_dir) / SUMMARY_CSV, Path(out_dir) / SUMMARY_HTML)
    for path, text in zip(paths, (buffer.getvalue(), summary_html(columns, rows))):
        with atomic_output(path) as temporary:
            temporary.write_text(text, encoding="utf-8")
    return paths


def cohort_summary(out_dir: Path, entries: Sequence[CaseEntry]) -> Optional[Tuple[Path, Path]]:
    """:func:`write_cohort_summary` when several cases ran and one at least succeeded (a single
    case has its report.html; a run where all failed leaves no summary); else None."""
    if len(entries) < 2 or not any(entry.folder is not None for entry in entries):
        return None
    return write_cohort_summary(out_dir, entries)


__all__ = [
    "CaseEntry",
    "cohort_summary",
    "case_report_html",
    "summary_html",
    "summary_rows",
    "write_case_report",
    "write_cohort_summary",
]
