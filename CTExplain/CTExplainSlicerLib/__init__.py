"""The Slicer side of CTExplain that is not GUI: scene nodes, dependency installation, background runs.

Beside the module file as SlicerNNUnet keeps its ``SlicerNNUNetLib``: CTExplain.py stays Qt and
scene wiring, the Slicer-free work stays in CTExplainLib, and what needs MRML but no widget is
here. ``slicer`` is imported inside the functions (as the module file imports CTExplainLib), so
this package imports without Slicer's Python and with nothing heavy installed.
"""
