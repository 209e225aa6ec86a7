"""Which Python packages the core needs and which of them are missing, without importing any.

Slicer ships numpy and SimpleITK but not torch, MONAI and the rest; the Slicer module asks this
helper before its first run, then offers to install what is missing. Detection uses
``importlib.util.find_spec`` on top-level names only, which locates a package without running
it (importing torch alone takes seconds and hundreds of MB)::

    from CTExplainLib.dependencies import missing
    [r.pip for r in missing()]        # e.g. ['torch>=2.1', 'monai>=1.4']
"""
from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Requirement:
    """A package the core imports: its top-level import name and its pip requirement."""

    module: str  # import name, e.g. "openjpeg"
    pip: str  # pip requirement, e.g. "pylibjpeg-openjpeg>=2.0"

    @property
    def name(self) -> str:
        """The distribution name, without a version specifier."""
        match = re.match(r"\s*([A-Za-z0-9._-]+)", self.pip)
        return match.group(1) if match else self.pip.strip()


# The runtime dependencies of pyproject.toml ([project] dependencies), torch first.
REQUIREMENTS = (
    Requirement("torch", "torch>=2.1"),
    Requirement("monai", "monai>=1.4"),
    Requirement("SimpleITK", "SimpleITK>=2.3"),
    Requirement("numpy", "numpy>=1.24"),
    Requirement("pydicom", "pydicom>=2.4"),
    Requirement("pylibjpeg", "pylibjpeg>=2.0"),
    Requirement("openjpeg", "pylibjpeg-openjpeg>=2.0"),
    Requirement("highdicom", "highdicom>=0.23"),
    Requirement("safetensors", "safetensors>=0.4"),
    Requirement("slicerio", "slicerio>=1.1"),
    Requirement("PIL", "pillow>=10"),
    Requirement("matplotlib", "matplotlib>=3.7"),
    Requirement("tqdm", "tqdm>=4.60"),
    Requirement("yaml", "pyyaml>=6"),  # MONAI bundles written in YAML
    Requirement("einops", "einops>=0.6"),  # MONAI's SwinUNETR and UNETR
)
TORCH = "torch"


def is_installed(module: str, find_spec: Callable[[str], object] = importlib.util.find_spec) -> bool:
    """Whether the top-level package ``module`` can be imported (it is never imported here)."""
    if "." in module:
        raise ValueError(f"{module!r}: only top-level names can be checked without importing a parent package")
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(requirements: Sequence[Requirement] = REQUIREMENTS,
            find_spec: Callable[[str], object] = importlib.util.find_spec) -> List[Requirement]:
    """The requirements whose package cannot be imported, in the given order."""
    importlib.invalidate_caches()  # packages installed since the last check are seen
    return [r for r in requirements if not is_installed(r.module, find_spec)]


def split_torch(requirements: Sequence[Requirement]) -> Tuple[Optional[Requirement], List[Requirement]]:
    """(torch's requirement or None, the others): torch is installed its own way inside Slicer."""
    torch = next((r for r in requirements if r.module == TORCH), None)
    return torch, [r for r in requirements if r.module != TORCH]


def version_specifier(requirement: Requirement) -> str:
    """The version part of a pip requirement (``torch>=2.1`` -> ``>=2.1``), or ""."""
    return requirement.pip[len(requirement.name):].strip()


__all__ = ["REQUIREMENTS", "Requirement", "is_installed", "missing", "split_torch", "version_specifier"]
