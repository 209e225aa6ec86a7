"""A small real training set shared by the training tests: 8 CT-ICH patients as HU volumes."""
from __future__ import annotations

from pathlib import Path

import pytest

from CTExplainTraining.datasets.ct_ich import prepare

# Four patients with hemorrhage and skull fracture, four with neither.
SMALL_SET = ["049", "050", "051", "052", "054", "056", "060", "063"]


@pytest.fixture(scope="session")
def ct_ich_small(data_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ct-ich-small")
    prepare(data_dir / "ct-ich", out, patients=SMALL_SET)
    return out

