"""Shared fixtures: where the real CT data of ../shared/data lies."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared CT data not found at {DATA}; the suite needs ../shared/data")
    return DATA
