"""Where CTExplain finds model packages, which ones it uses by default, and the shipped sample cases.

Nothing here imports torch (package metadata is plain JSON): the Slicer module fills its model
selectors from this catalog before its dependencies are installed.

The trained packages are named here before they ship. Until a package's folder exists in a
search folder, its untrained demo stands in for it, with a warning; the stand-in disappears by
itself once the folder is there.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

from .errors import ModelPackageError
from .package_files import METADATA_FILE

LOG = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
SHIPPED_MODELS = RESOURCES / "Models"
SAMPLES_FOLDER = RESOURCES / "Samples"
USER_MODELS = Path.home() / ".ctexplain" / "models"
MODELS_PATH_VARIABLE = "CTEXPLAIN_MODELS"  # extra folders, separated like PATH

# Untrained packages with random weights: they exercise the mechanics, not accuracy.
DEMO_CLASSIFIER = "demo-chest-classifier-untrained"
DEMO_SEGMENTER = "demo-chest-segmenter-untrained"
# Trained packages (folder names under Resources/Models).
HEAD_CLASSIFIER = "head-ct-ich-findings"
CHEST_CLASSIFIER = "chest-ct-4class"
CHEST_SEGMENTER = "chest-ct-segmenter"
# Point mode (``--point``): what runs at a marked lung nodule unless --model/--segmenter say otherwise.
POINT_CLASSIFIER = "lung-nodule-malignancy"
POINT_SEGMENTER = "lung-nodule-segmenter"
# The chest sample's packages; inputs without --model/--segmenter get the packages whose domain fits (trust/choice.py).
DEFAULT_CLASSIFIER = CHEST_CLASSIFIER
DEFAULT_SEGMENTER = CHEST_SEGMENTER
# The demo that stands in for each trained package while that package is not installed.
STAND_INS: Dict[str, str] = {
    HEAD_CLASSIFIER: DEMO_CLASSIFIER,
    CHEST_CLASSIFIER: DEMO_CLASSIFIER,
    CHEST_SEGMENTER: DEMO_SEGMENTER,
}


@dataclass(frozen=True)
class SampleCase:
    """A CT shipped for the demo, and the packages it is meant to be run with."""

    name: str  # also its output folder under ``ctexplain explain --sample --out DIR``
    path: Path
    classifier: str
    segmenter: Optional[str]  # None: no segmenter
    citation: str
    slice_labels: Optional[Path] = None  # CSV of slice_labels.py: the CAM-in-positive-slices share is reported
    points: Tuple[Tuple[float, float, float], ...] = ()  # LPS mm: run in point mode at these


CHEST_SAMPLE = SampleCase(
    name="chest_ct",
    path=SAMPLES_FOLDER / "chest_ct.nii.gz",
    classifier=CHEST_CLASSIFIER,
    segmenter=CHEST_SEGMENTER,
    citation="TotalSegmentator example_ct (Apache-2.0): Wasserthal J. et al., Radiology: AI 2023, doi:10.1148/ryai.230024",
)
HEAD_SAMPLE = SampleCase(
    name="head_ct_ich_050",
    path=SAMPLES_FOLDER / "head_ct_ich_050.nii.gz",
    classifier=HEAD_CLASSIFIER,
    segmenter=None,
    citation=(
        "CT-ICH patient 050 (CC BY 4.0): Hssayeni, M. D., et al. (2020). Computed Tomography Images for "
        "Intracranial Hemorrhage Detection and Segmentation (version 1.3.1). PhysioNet. doi:10.13026/w8q8-ky94"
    ),
    slice_labels=SAMPLES_FOLDER / "head_ct_ich_050_slices.csv",
)
NODULE_SAMPLE = SampleCase(
    name="lung_nodule_lidc_0001",
    path=SAMPLES_FOLDER / "lung_nodule_lidc_0001.nii.gz",
    classifier=POINT_CLASSIFIER,
    segmenter=POINT_SEGMENTER,
    citation=(
        "LIDC-IDRI-0001 (TCIA, CC BY 3.0): Armato SG III et al., The Lung Image Database Consortium (LIDC) and "
        "Image Database Resource Initiative (IDRI), Med. Phys. 38(2):915-931, 2011, doi:10.1118/1.3528204"
    ),
    points=((56.20840547, 86.34341278, -115.8675792),),  # its nodule's centre in nodules.csv
)
SAMPLES: Tuple[SampleCase, ...] = (CHEST_SAMPLE, HEAD_SAMPLE, NODULE_SAMPLE)


@dataclass
class PackageInfo:
    name: str
    task: str
    version: str
    untrained: bool
    path: Path
    class_names: Tuple[str, ...] = ()


def read_package_info(folder: Path) -> Optional[PackageInfo]:
    """What a package's metadata says about it (no weights are read); None if it has none."""
    try:
        data = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    classes = tuple(str(c.get("name", "?")) if isinstance(c, dict) else str(c) for c in data.get("classes", []))
    return PackageInfo(str(data.get("name", folder.name)), str(data.get("task", "?")), str(data.get("version", "?")),
                       bool(data.get("untrained")), folder, classes)


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
            info = read_package_info(candidate)
            if info is not None:
                found.append(info)
    return found


def _find_folder(name_or_path: Union[str, Path]) -> Optional[Path]:
    path = Path(name_or_path)
    if path.exists():
        return path
    for folder in search_folders():
        if (folder / str(name_or_path)).is_dir():
            return folder / str(name_or_path)
    return None


def locate_package(name_or_path: Union[str, Path]) -> Tuple[Path, Optional[str]]:
    """The package folder, and the name of the trained package it stands in for (None when it
    is the package asked for). Logs nothing: see :func:`resolve_package`."""
    found = _find_folder(name_or_path)
    if found is not None:
        return found, None
    stand_in = STAND_INS.get(str(name_or_path))
    found = _find_folder(stand_in) if stand_in is not None else None
    if found is not None:
        return found, str(name_or_path)
    available = ", ".join(p.path.name for p in find_packages()) or "none"
    raise ModelPackageError(Path(name_or_path), f"no such model package (available: {available})")


def resolve_package(name_or_path: Union[str, Path]) -> Path:
    """A package folder given as a path, or by its folder name in the search folders; a trained
    package that is not installed yet gives its untrained stand-in, with a warning."""
    path, missing = locate_package(name_or_path)
    if missing is not None:
        LOG.warning("model package %s is not installed yet; using the untrained stand-in %s instead (its results show the mechanics only)", missing, path)
    return path


NO_SEGMENTER = "none"  # what a user gives as the segmenter for none
AUTOMATIC = "Automatic (fits the input)"  # the selectors' entry for trust/choice.py's choice


def chosen_segmenter(requested: Optional[str], default: Optional[str]) -> Optional[str]:
    """The segmenter a case runs with: ``requested`` ("none", in any case: none), else ``default``."""
    if requested is None:
        return default
    return None if requested.lower() == NO_SEGMENTER else requested


def model_choices() -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """(label, package path) of the classifiers and of the segmenters found, from their metadata
    alone: first AUTOMATIC with the path "" (chosen per input), the segmenters last ("None", "none")."""
    packages = find_packages()

    def label(info: PackageInfo) -> str:
        return info.name + (" (untrained demo)" if info.untrained else "")

    automatic = [(AUTOMATIC, "")] if packages else []
    classifiers = automatic + [(label(p), str(p.path)) for p in packages if p.task != "segmentation"]
    segmenters = automatic + [(label(p), str(p.path)) for p in packages if p.task == "segmentation"] + [("None", NO_SEGMENTER)]
    return classifiers, segmenters


def resolve_models(classifier: Union[str, Path], segmenter: Union[str, Path, None]) -> Tuple[Path, Optional[Path]]:
    """The folders of a classifier and of a segmenter (None: no segmenter)."""
    return resolve_package(classifier), resolve_package(segmenter) if segmenter is not None else None


def sample_models(sample: SampleCase) -> Tuple[Path, Optional[Path]]:
    """The folders of the packages ``sample`` is meant to be run with, or of their stand-ins."""
    return resolve_models(sample.classifier, sample.segmenter)
