"""CTExplain core: load CT, classify, explain with all-class CAMs, segment, write aligned outputs.

Slicer-free: importable with plain Python and used by the Slicer module, the ``ctexplain``
command line and the training package alike.
"""
from .volume import Grid, Volume

__all__ = ["Grid", "Volume"]
__version__ = "0.1.0"
