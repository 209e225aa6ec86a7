"""Points marked in 3D Slicer, explained by point mode; no Slicer import, so it runs (and is
tested) outside Slicer too.

The user marks nodules with the Markups module in a point list (``vtkMRMLMarkupsFiducialNode``).
Each control point is read at its **world** RAS position (``GetNthControlPointPositionWorld``:
after the list's parent transforms), brought into the CT volume's own frame (through the
inverse of the volume's parent transform, when it has one) and to LPS, and explained as
``ctexplain explain CT --point`` would (:func:`CTExplainLib.points.run.explain_points`). Each
point becomes a row of the findings table (:func:`points_table`); a row's heat map and nodule
are :meth:`PointAnalysis.heat_map` and :meth:`PointAnalysis.nodule_labels` on the CT's grid.

Console use, in Slicer's Python console (``ct`` a scalar volume node in HU, ``marks`` a point
list with the nodules marked)::

    import numpy as np, slicer, vtk
    from CTExplainLib.model_package import load_package
    from CTExplainLib.models_catalog import POINT_CLASSIFIER, POINT_SEGMENTER, resolve_package
    from CTExplainLib.points.markups import explain_markups, points_table
    from CTExplainLib.volume import Volume
    matrix = vtk.vtkMatrix4x4(); ct.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    volume = Volume.from_ijk_to_ras(np.array(slicer.util.arrayFromVolume(ct)), ijk_to_ras)  # as the module's volume_from_node
    models = [load_package(resolve_package(name)) for name in (POINT_CLASSIFIER, POINT_SEGMENTER)]
    analyses = explain_markups(volume, marks, *models)
    for title, kind, values in points_table(analyses):
        print(title, values)
    heat = analyses[0].heat_map(0, volume.grid)       # (k, j, i) on the CT's grid, zero outside the crop
    nodule = analyses[0].nodule_labels(volume.grid)    # 0/1 on the CT's grid
    # show them: slicer.util.updateVolumeFromArray(node, heat) on a node with the CT's geometry

A CT under a parent transform: pass ``world_to_volume`` (4x4, RAS), the inverse of its parent
transform's matrix to world.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from ..findings_table import TableColumn, faithfulness_cells, faithfulness_columns
from ..model_package import LoadedModel
from ..trust.faithfulness import DEFAULT as DEFAULT_FAITHFULNESS
from ..volume import LPS_TO_RAS, Volume
from .points_file import MarkedPoint, safe_id
from .run import PointAnalysis, explain_points


def marked_points(markups: Any, world_to_volume: Optional[np.ndarray] = None) -> List[MarkedPoint]:
    """The control points of a point list as LPS points of the volume's frame, named by their
    labels (made file-safe; a repeated label gets its position in the list appended)."""
    matrix = np.eye(4) if world_to_volume is None else np.asarray(world_to_volume, dtype=float)
    points: List[MarkedPoint] = []
    used = set()
    for index in range(markups.GetNumberOfControlPoints()):
        world = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(index, world)
        ras = matrix[:3, :3] @ np.asarray(world, dtype=float) + matrix[:3, 3]
        name = safe_id(markups.GetNthControlPointLabel(index) or str(index + 1))
        if name in used:
            name = f"{name}_{index + 1}"
        used.add(name)
        points.append(MarkedPoint(name, tuple(float(v) for v in LPS_TO_RAS @ ras)))
    return points


def explain_markups(volume: Volume, markups: Any, classifier: LoadedModel, segmenter: Optional[LoadedModel],
                    method: str = "gradcam", device: str = "auto", world_to_volume: Optional[np.ndarray] = None,
                    faithfulness: str = DEFAULT_FAITHFULNESS) -> List[PointAnalysis]:
    """Every control point of ``markups`` explained on ``volume`` (see the module docstring)."""
    return explain_points(volume, classifier, segmenter, marked_points(markups, world_to_volume), method, device, faithfulness)


def points_table(analyses: Sequence[PointAnalysis]) -> List[TableColumn]:
    """One row per point: its label, the top class and its probability, the nodule's diameter
    and volume, the share of that class's map inside the nodule beside the nodule's share of
    the crop, that map's faithfulness (verdict and score) and the error of a point that could
    not be used (NaN or empty where there is no value)."""
    columns: List[TableColumn] = [("Point", "string", []), ("Finding", "string", []), ("Probability", "double", []),
                                  ("Diameter mm", "double", []), ("Volume mL", "double", []),
                                  ("Energy in nodule", "double", []), ("Nodule share of crop", "double", []),
                                  *faithfulness_columns(), ("Error", "string", [])]
    nan = float("nan")
    for analysis in analyses:
        record = analysis.record
        findings = record.get("findings") or []
        top = max(findings, key=lambda f: f["probability"]) if findings else {}
        nodule = record.get("nodule") or {}
        values = [analysis.point.id, top.get("name", ""), float(top.get("probability", nan)), float(nodule.get("diameter_mm", nan)),
                  float(nodule.get("volume_ml", nan)), float(top.get("energy_in_nodule", nan)), float(nodule.get("share_of_crop", nan)),
                  *faithfulness_cells(top), analysis.error]
        for (_, _, column), value in zip(columns, values):
            column.append(value)
    return columns
