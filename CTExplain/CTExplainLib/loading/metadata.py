"""The metadata every loader records, in one place so all loaders fill the same keys."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional


def volume_metadata(
    path: Path,
    kind: str,
    intensity: str,
    dims: int,
    modality: Optional[str] = None,
    series_uid: Optional[str] = None,
    series_description: Optional[str] = None,
    warnings: Optional[List[str]] = None,
    **extra: Any,
) -> Dict[str, Any]:
    """``intensity`` is "hu", "display" (8-bit windowed images) or "native" (non-CT values)."""
    return {
        "source": str(path),
        "format": kind,
        "modality": modality,
        "series_uid": series_uid,
        "series_description": series_description,
        "intensity": intensity,
        "warnings": warnings if warnings is not None else [],
        "dims": dims,
        **extra,
    }
