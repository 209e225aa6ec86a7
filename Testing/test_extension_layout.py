"""The Slicer extension's files: CMake lists name only files that exist, and the icon is right."""
from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def listed_files(cmake: Path) -> list:
    text = cmake.read_text()
    names = []
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)\s+(.*?)\)", text, flags=re.S):
        names += [line.strip().replace("${MODULE_NAME}", "CTExplain") for line in block.splitlines() if line.strip()]
    return names


def test_every_file_in_the_module_cmake_exists() -> None:
    cmake = REPO / "CTExplain" / "CMakeLists.txt"
    names = listed_files(cmake)
    assert len(names) > 20
    missing = [n for n in names if not (cmake.parent / n).is_file()]
    assert not missing, f"listed in {cmake} but missing: {missing}"


def test_every_core_module_is_listed() -> None:
    listed = set(listed_files(REPO / "CTExplain" / "CMakeLists.txt"))
    present = {str(p.relative_to(REPO / "CTExplain")) for package in ("CTExplainLib", "CTExplainSlicerLib")
               for p in (REPO / "CTExplain" / package).rglob("*.py")}
    assert any(p.startswith("CTExplainSlicerLib/") for p in present)
    assert present <= listed, f"core files not installed by CMake: {sorted(present - listed)}"


def test_every_shipped_sample_and_model_file_is_listed() -> None:
    """A model package or sample dropped into Resources but not listed would not be installed."""
    module = REPO / "CTExplain"
    listed = set(listed_files(module / "CMakeLists.txt"))
    resources = module / "Resources"
    shipped = [p for p in (resources / "Samples").rglob("*") if p.is_file()]
    packages = [folder for folder in (resources / "Models").iterdir() if folder.is_dir()]
    assert packages, "no model package under Resources/Models"
    for folder in packages:
        shipped += [p for p in folder.rglob("*") if p.is_file()]
    present = {str(p.relative_to(module)) for p in shipped if not p.name.startswith(".")}
    assert present <= listed, f"shipped files not installed by CMake: {sorted(present - listed)}"


def test_top_level_cmake_is_a_slicer_extension() -> None:
    text = (REPO / "CMakeLists.txt").read_text()
    for needed in ("find_package(Slicer REQUIRED)", 'set(EXTENSION_DEPENDS "PyTorch")', "add_subdirectory(CTExplain)", "Slicer_EXTENSION_CPACK"):
        assert needed in text


def test_icon_is_128_square() -> None:
    assert Image.open(REPO / "CTExplain.png").size == (128, 128)
