"""Turning the paths a user gives into cases: a file, a series folder, or a folder of cases."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from pydicom.misc import is_dicom

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SLICE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Stripped from file names to name a case, longest first (".seg.nrrd" before ".nrrd").
NAME_SUFFIXES = tuple(sorted({".seg.nrrd", *VOLUME_SUFFIXES, *SLICE_IMAGE_SUFFIXES}, key=len, reverse=True))


def case_name(path: Path) -> str:
    """The name of a case's output folder: a file inside a DICOM series loads the whole series,
    so it is named after the series' folder; other files after their name without the image
    extension (``foo.nii.gz`` -> ``foo``, ``0001.png`` -> ``0001``); folders after themselves."""
    if path.is_file() and (path.suffix.lower() == ".dcm" or is_dicom(str(path))):
        return path.resolve().parent.name
    name = path.name or path.resolve().name
    for suffix in NAME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or path.resolve().parent.name
    return name


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(VOLUME_SUFFIXES) and not name.endswith(".seg.nrrd")


def _is_single_case_folder(folder: Path) -> bool:
    """A folder is one case when it directly holds slices: DICOM files or 2D slice images."""
    for child in folder.iterdir():
        if child.is_file() and (child.suffix.lower() in SLICE_IMAGE_SUFFIXES or child.suffix.lower() == ".dcm" or is_dicom(str(child))):
            return True
    return False


def _cases_in_folder(folder: Path) -> List[Path]:
    if _is_single_case_folder(folder):
        return [folder]
    cases: List[Path] = []
    for child in sorted(folder.iterdir()):
        if child.is_file() and _is_volume_file(child):
            cases.append(child)
        elif child.is_dir() and not child.name.startswith("."):
            cases.extend(_cases_in_folder(child))
    # An empty folder, or one with nothing readable, is still a case: loading it says what is wrong.
    return cases or [folder]


def discover_cases(inputs: Sequence[Path]) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    """Cases to run, and (path, problem) for inputs that are not there at all."""
    cases: List[Path] = []
    problems: List[Tuple[Path, str]] = []
    for path in inputs:
        if not path.exists():
            problems.append((path, f"{path}: no such file or folder"))
        elif path.is_dir():
            cases.extend(_cases_in_folder(path))
        else:
            cases.append(path)
    return cases, problems


def unique_case_folders(cases: Sequence[Path], out: Path) -> Dict[Path, Path]:
    """An output folder per case, named after it; clashing names get _2, _3, ..."""
    folders: Dict[Path, Path] = {}
    used: Dict[str, int] = {}
    for case in cases:
        name = case_name(case)
        used[name] = used.get(name, 0) + 1
        folders[case] = out / (name if used[name] == 1 else f"{name}_{used[name]}")
    return folders
