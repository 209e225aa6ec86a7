"""CTExplain core: load CT, classify, explain with all-class CAMs, segment, write aligned outputs.

Slicer-free: importable with plain Python and used by the Slicer module, the ``ctexplain``
command line and the training package alike.

``Grid`` and ``Volume`` are imported on first use (PEP 562): importing the package alone loads
neither SimpleITK nor numpy, so ``ctexplain --help`` and ``ctexplain models`` start fast.
"""
from typing import Any

__all__ = ["Grid", "Volume"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import volume

        return getattr(volume, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
