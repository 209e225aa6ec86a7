"""Shared fixtures: where the real CT data of ../shared/data lies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib.volume import Volume

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared CT data not found at {DATA}; the suite needs ../shared/data")
    return DATA


# Module scope: a test module may modify what it gets without affecting the others.
@pytest.fixture(scope="module")
def real_ct(data_dir: Path) -> Volume:
    """TotalSegmentator's 30-slice chest-abdomen CT (3 mm, HU), as loaded by SimpleITK."""
    return Volume.from_sitk(sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz")))


@pytest.fixture(scope="module")
def real_seg(data_dir: Path) -> np.ndarray:
    """TotalSegmentator's own 41-structure label map of ``real_ct`` (another model's output)."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_seg.nii.gz")))


@pytest.fixture(scope="module")
def env():
    """The Slicer stand-in in testing mode with the CTExplain module loaded, fresh for each test
    module (the module's logic and scene tests): (slicer, module)."""
    import slicer_standin

    slicer = slicer_standin.install(testing=True)
    module = slicer_standin.load_scripted_module(REPO / "CTExplain" / "CTExplain.py")
    yield slicer, module
    slicer_standin.uninstall()
