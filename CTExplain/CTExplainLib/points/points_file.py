"""The points a user marks, from the command line (``--point X Y Z``) or a CSV file (``--points``).

A points file has columns ``x,y,z`` (millimetres, LPS unless ``--ras``), optionally ``id`` (a
name for the point's outputs) and ``image`` (which input the row belongs to, by its file or
folder name, with or without the extension), so one command runs a cohort's nodule list::

    id,image,x,y,z
    n1,lidc-idri-0001,56.2,86.3,-115.9

Rows without ``image`` belong to every input. Every problem is found before anything runs and
named by file and row. Only light modules are imported here (the command line reads points
before anything heavy is loaded).
"""
from __future__ import annotations

import argparse
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import InputError

REQUIRED_COLUMNS = ("x", "y", "z")


@dataclass(frozen=True)
class MarkedPoint:
    """One point to explain: its name (for output files) and LPS position in mm."""

    id: str
    lps: tuple
    image: Optional[str] = None  # the input it belongs to (None: every input)
    row: Optional[int] = None  # its row in the points file

    def to_dict(self) -> Dict[str, object]:
        lps = [float(v) for v in self.lps]
        return {"id": self.id, "lps": lps, "ras": list(flip_lps_ras(lps))}


def flip_lps_ras(xyz: Sequence[float]) -> tuple:
    """RAS of an LPS position, or LPS of a RAS one: x and y change sign (volume.LPS_TO_RAS)."""
    x, y, z = (float(v) for v in xyz)
    return (-x, -y, z)


def to_lps(xyz: Sequence[float], ras: bool) -> tuple:
    """LPS millimetres of a position given in LPS, or in RAS when ``ras``."""
    return flip_lps_ras(xyz) if ras else tuple(float(v) for v in xyz)


def safe_id(text: str) -> str:
    """A point id usable in file names: letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "point"


def command_line_points(values: Sequence[Sequence[float]], ras: bool) -> List[MarkedPoint]:
    """``--point X Y Z`` (repeated): ids 1, 2, ... in the order given."""
    return [MarkedPoint(str(n), to_lps(xyz, ras)) for n, xyz in enumerate(values, start=1)]


def _number(path: Path, row: int, column: str, text: Optional[str]) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        raise InputError(path, f"row {row}: column {column} is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise InputError(path, f"row {row}: column {column} is {text!r}, not a finite number")
    return value


def read_points_file(path: Path, ras: bool, first_id: int = 1) -> List[MarkedPoint]:
    """The rows of a points CSV (see the module docstring); rows are numbered from 2 (after
    the header), as a spreadsheet shows them."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            rows = [{(k.strip().lower() if k is not None else None): v for k, v in row.items()} for row in reader]
    except OSError as exc:
        raise InputError(path, f"cannot read the points file ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"is not a readable CSV file ({exc})") from None
    if not columns:
        raise InputError(path, "is empty: a points file needs a header with columns x,y,z and one row per point")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(path, f"has no column {', '.join(missing)} (columns: {', '.join(columns)}; needed: x,y,z, optional id, image)")
    if not rows:
        raise InputError(path, "has a header but no points")
    points: List[MarkedPoint] = []
    seen: Dict[tuple, int] = {}
    for number, row in enumerate(rows, start=2):
        if None in row:  # more fields than the header has
            raise InputError(path, f"row {number}: has more fields than the header's {len(columns)}")
        xyz = [_number(path, number, c, row.get(c)) for c in REQUIRED_COLUMNS]
        image = (row.get("image") or "").strip() or None
        point_id = safe_id((row.get("id") or "").strip() or str(first_id + len(points)))
        key = (image, point_id)
        if key in seen:
            raise InputError(path, f"row {number}: id {point_id!r} is used already by row {seen[key]}")
        seen[key] = number
        points.append(MarkedPoint(point_id, to_lps(xyz, ras), image, number))
    return points


def input_names(case: Path) -> List[str]:
    """The names a points file's ``image`` column may give ``case`` by: its file or folder name,
    with or without the extension."""
    from ..discovery import case_name  # pydicom: only when cases are looked for

    return list(dict.fromkeys([case.name, case_name(case)]))


def points_for_cases(points: Sequence[MarkedPoint], cases: Sequence[Path], source: Optional[Path]) -> Dict[Path, List[MarkedPoint]]:
    """Each case's points: those naming it, and those naming no input. A point naming an
    input that is not given is an error naming ``source`` (the points file) and the image."""
    by_name: Dict[str, List[Path]] = {}
    for case in cases:
        for name in input_names(case):
            by_name.setdefault(name, []).append(case)
    chosen: Dict[Path, List[MarkedPoint]] = {case: [] for case in cases}
    for point in points:
        if point.image is None:
            for case in cases:
                chosen[case].append(point)
            continue
        matches = by_name.get(point.image)
        if not matches:
            given = ", ".join(sorted({input_names(c)[0] for c in cases})) or "none"
            where = f"row {point.row}: " if point.row is not None else ""
            raise InputError(source or "--point", f"{where}point {point.id}: image {point.image!r} is not among the inputs given ({given})")
        for case in matches:
            chosen[case].append(point)
    return chosen


def add_point_arguments(parser: argparse.ArgumentParser) -> None:
    """``--point``, ``--points`` and ``--ras`` of ``ctexplain explain``."""
    parser.add_argument("--point", action="append", nargs=3, type=float, metavar=("X", "Y", "Z"), default=[],
                        help="explain the INPUTs at this point (mm, LPS as DICOM/ITK give it; RAS with --ras), with the "
                             "point models (default: lung-nodule-malignancy and lung-nodule-segmenter); repeatable "
                             "(default: none, the whole CT is explained)")
    parser.add_argument("--points", type=Path, default=None, metavar="CSV",
                        help="CSV of points: columns x,y,z, optional id and image (the input's file or folder name) "
                             "(default: none)")
    parser.add_argument("--ras", action="store_true", help="--point and --points give RAS coordinates (Slicer's), not LPS")


def requested_points(args: argparse.Namespace) -> Optional[List[MarkedPoint]]:
    """The points of ``--point`` then ``--points``; None when neither is given (whole-CT mode)."""
    if not args.point and args.points is None:
        return None
    points = command_line_points(args.point, args.ras)
    if args.points is not None:
        points += read_points_file(args.points, args.ras, first_id=len(points) + 1)
    return points
