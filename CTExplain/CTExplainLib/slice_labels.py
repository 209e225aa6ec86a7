"""Per-slice labels (e.g. CT-ICH's hemorrhage annotations) for the CAM-in-positive-slices share.

A CSV with columns ``case``, ``slice`` (1-based, in the order the case's slices are loaded:
k + 1) and ``positive`` (0 or 1). Case names match output folder names; numeric names
match whatever their zero padding ("49" is case "049").
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

from .errors import InputError

COLUMNS = ("case", "slice", "positive")


def _key(case: str) -> str:
    return str(int(case)) if case.strip().isdigit() else case.strip()


def read_slice_labels(path: Path) -> Dict[str, Dict[int, bool]]:
    """{case: {slice number: positive}} from the CSV at ``path``."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise InputError(path, f"cannot read slice labels: {exc.strerror}") from exc
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise InputError(path, f"slice labels need the columns {', '.join(COLUMNS)}")
    labels: Dict[str, Dict[int, bool]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            number, positive = int(row["slice"]), int(row["positive"])
        except ValueError:
            raise InputError(path, f"line {line}: slice and positive must be integers, got {row['slice']!r}, {row['positive']!r}") from None
        if positive not in (0, 1) or number < 1:
            raise InputError(path, f"line {line}: positive must be 0 or 1 and slice at least 1")
        labels.setdefault(_key(row["case"]), {})[number] = bool(positive)
    return labels


def positive_slices(labels: Dict[str, Dict[int, bool]], case: str, slice_count: int) -> Optional[List[bool]]:
    """The case's flags for slices 1..slice_count, or None when the case has no labels.

    Slices without a row count as negative (CT-ICH lists some slices that have no image and
    vice versa).
    """
    case_labels = labels.get(_key(case))
    if case_labels is None:
        return None
    return [case_labels.get(k + 1, False) for k in range(slice_count)]
