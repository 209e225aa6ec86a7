"""Where CTExplain finds model packages and the shipped sample cases."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Union

from .errors import ModelPackageError
from .model_package import METADATA_FILE

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
SHIPPED_MODELS = RESOURCES / "Models"
SAMPLES = RESOURCES / "Samples"
USER_MODELS = Path.home() / ".ctexplain" / "models"
MODELS_PATH_VARIABLE = "CTEXPLAIN_MODELS"  # extra folders, separated like PATH

DEFAULT_CLASSIFIER = "demo-chest-classifier-untrained"
DEFAULT_SEGMENTER = "demo-chest-segmenter-untrained"
SAMPLE_CASES = [SAMPLES / "chest_ct.nii.gz"]


@dataclass
class PackageInfo:
    name: str
    task: str
    version: str
    untrained: bool
    path: Path


def search_folders(extra: Iterable[Path] = ()) -> List[Path]:
    folders = [SHIPPED_MODELS, USER_MODELS]
    folders += [Path(p) for p in os.environ.get(MODELS_PATH_VARIABLE, "").split(os.pathsep) if p]
    folders += list(extra)
    return folders


def find_packages(extra: Iterable[Path] = ()) -> List[PackageInfo]:
    """Packages in the search folders, from their metadata alone (no weights are read)."""
    found: List[PackageInfo] = []
    for folder in search_folders(extra):
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.iterdir()):
            metadata_file = candidate / METADATA_FILE
            if not metadata_file.is_file():
                continue
            try:
                data = json.loads(metadata_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found.append(
                PackageInfo(str(data.get("name", candidate.name)), str(data.get("task", "?")), str(data.get("version", "?")), bool(data.get("untrained")), candidate)
            )
    return found


def resolve_package(name_or_path: Union[str, Path]) -> Path:
    """A package folder given as a path, or by its folder name in the search folders."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for folder in search_folders():
        if (folder / str(name_or_path)).is_dir():
            return folder / str(name_or_path)
    available = ", ".join(p.path.name for p in find_packages()) or "none"
    raise ModelPackageError(path, f"no such model package (available: {available})")
