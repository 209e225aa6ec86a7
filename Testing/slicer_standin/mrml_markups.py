"""Markups point lists (slicer-api.md "Markups point lists", read at Slicer 583e9b3).

Control point positions are stored in the node's *local* RAS; the ``...World`` getters and
setters go through the node's parent transforms, so a test can catch a transform ignored.
Control point IDs are "1", "2", ... and labels follow the default format "%N-%d" (node name,
running number), e.g. "F-1". Files: ``.mrk.json`` (Slicer's markups schema, LPS by default).

Not modelled: orientations (identity), interaction/measurement, point-placement modes, other
markup types (line, curve, ROI...). Event numbers are the stand-in's own (use the names).
"""
from __future__ import annotations

import json
import logging
from typing import Dict, List, Optional

import numpy as np
import vtk

from .mrml_core import register_node_class, vtkMRMLDisplayableNode, vtkMRMLDisplayNode, vtkMRMLStorageNode

logger = logging.getLogger("slicer_standin")

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"
F = np.diag([-1.0, -1.0, 1.0])


def _point(args) -> np.ndarray:
    """(x, y, z), ([x, y, z]), (vtkVector3d) or a numpy array -> float[3]."""
    if len(args) == 1:
        args = tuple(args[0])
    if len(args) != 3:
        raise TypeError("expected a point: x, y, z or a sequence of 3 numbers")
    return np.array([float(v) for v in args])


@register_node_class
class vtkMRMLMarkupsDisplayNode(vtkMRMLDisplayNode):
    _tag = "MarkupsDisplay"


@register_node_class
class vtkMRMLMarkupsFiducialDisplayNode(vtkMRMLMarkupsDisplayNode):
    _tag = "MarkupsFiducialDisplay"


@register_node_class
class vtkMRMLMarkupsJsonStorageNode(vtkMRMLStorageNode):
    _tag = "MarkupsJsonStorage"


@register_node_class
class vtkMRMLMarkupsFiducialStorageNode(vtkMRMLMarkupsJsonStorageNode):
    _tag = "MarkupsFiducialStorage"


class vtkMRMLMarkupsNode(vtkMRMLDisplayableNode):
    """Control points in local RAS; see the module docstring."""

    _tag = "Markups"
    _prefix = "M"
    _markupType = "Markups"
    LockModifiedEvent = 19000
    LabelFormatModifiedEvent = 19001
    PointAddedEvent = 19002
    PointRemovedEvent = 19003
    PointPositionDefinedEvent = 19004
    PointModifiedEvent = 19008

    def __init__(self) -> None:
        super().__init__()
        self._points: List[Dict[str, object]] = []
        self._lastNumber = 0
        self._labelFormat = "%N-%d"
        self._locked = 0

    def _copyContent(self, node) -> None:
        if isinstance(node, vtkMRMLMarkupsNode):
            self._points = [dict(p, position=np.array(p["position"])) for p in node._points]
            self._lastNumber = node._lastNumber
            self._labelFormat = node._labelFormat

    def GetDefaultNodeNamePrefix(self) -> str:
        return self._prefix

    def GetMarkupType(self) -> str:
        return self._markupType

    def CreateDefaultDisplayNodes(self) -> None:
        self._addDefaultDisplayNode(vtkMRMLMarkupsFiducialDisplayNode)

    # -- bookkeeping ----------------------------------------------------------------------
    def _check(self, i: int) -> bool:
        if not 0 <= int(i) < len(self._points):
            logger.error("%s: control point index %s is out of range 0-%d", self.GetClassName(), i, len(self._points) - 1)
            return False
        return True

    def _changed(self, event: int, index: int) -> None:
        self.StorableModified()
        self.Modified()
        self.InvokeEvent(event)

    def _newLabel(self, number: int) -> str:
        return self._labelFormat.replace("%N", self.GetName() or "").replace("%d", str(number))

    def GetControlPointLabelFormat(self) -> str:
        return self._labelFormat

    def SetControlPointLabelFormat(self, text: str) -> None:
        self._labelFormat = str(text)
        self.Modified()

    def GetLocked(self) -> int:
        return self._locked

    def SetLocked(self, value: int) -> None:
        self._locked = int(bool(value))
        self.Modified()

    # -- adding and removing --------------------------------------------------------------
    def AddControlPoint(self, *args) -> int:
        """AddControlPoint(point[, label]) with a vtkVector3d or 3 numbers, or (x, y, z[, label]);
        the position is local (node) RAS. Returns the new point's index."""
        label = ""
        if args and isinstance(args[-1], str):
            args, label = args[:-1], args[-1]
        return self._add(_point(args), label)

    def AddControlPointWorld(self, *args) -> int:
        """As AddControlPoint, the position given in world RAS."""
        label = ""
        if args and isinstance(args[-1], str):
            args, label = args[:-1], args[-1]
        world = _point(args)
        return self._add((np.linalg.inv(self._toWorld()) @ np.append(world, 1.0))[:3], label)

    def _add(self, position: np.ndarray, label: str) -> int:
        self._lastNumber += 1
        self._points.append({"id": str(self._lastNumber), "label": label or self._newLabel(self._lastNumber),
                             "description": "", "position": position, "selected": True, "locked": False,
                             "visibility": True})
        self._changed(self.PointAddedEvent, len(self._points) - 1)
        return len(self._points) - 1

    def RemoveNthControlPoint(self, i: int) -> None:
        if self._check(i):
            del self._points[int(i)]
            self._changed(self.PointRemovedEvent, int(i))

    def RemoveAllControlPoints(self) -> None:
        if self._points:
            self._points = []
            self._changed(self.PointRemovedEvent, -1)

    # -- reading --------------------------------------------------------------------------
    def GetNumberOfControlPoints(self) -> int:
        return len(self._points)

    def GetNumberOfDefinedControlPoints(self, includePreview: bool = False) -> int:
        return len(self._points)

    def GetNthControlPointPosition(self, i: int, out=None):
        """Local (node) RAS: fills ``out`` (returns None), or returns a 3-tuple."""
        if not self._check(i):
            return None
        position = self._points[int(i)]["position"]
        if out is None:
            return tuple(float(v) for v in position)
        for c in range(3):
            out[c] = float(position[c])
        return None

    def GetNthControlPointPositionVector(self, i: int) -> vtk.vtkVector3d:
        position = self.GetNthControlPointPosition(i)
        return vtk.vtkVector3d(*(position or (0.0, 0.0, 0.0)))

    def GetNthControlPointPositionWorld(self, i: int, out=None):
        """World RAS (through the parent transforms): fills ``out`` and returns 1 (0 for a bad
        index), or returns a vtkVector3d."""
        if not self._check(i):
            return 0 if out is not None else None
        world = (self._toWorld() @ np.append(self._points[int(i)]["position"], 1.0))[:3]
        if out is None:
            return vtk.vtkVector3d(*(float(v) for v in world))
        for c in range(3):
            out[c] = float(world[c])
        return 1

    def GetNthControlPointLabel(self, i: int) -> str:
        return str(self._points[int(i)]["label"]) if self._check(i) else ""

    def SetNthControlPointLabel(self, i: int, label: str) -> None:
        if self._check(i):
            self._points[int(i)]["label"] = str(label)
            self._changed(self.PointModifiedEvent, int(i))

    def GetNthControlPointDescription(self, i: int) -> str:
        return str(self._points[int(i)]["description"]) if self._check(i) else ""

    def SetNthControlPointDescription(self, i: int, text: str) -> None:
        if self._check(i):
            self._points[int(i)]["description"] = str(text)
            self._changed(self.PointModifiedEvent, int(i))

    def GetNthControlPointID(self, i: int) -> str:
        return str(self._points[int(i)]["id"]) if self._check(i) else ""

    def GetControlPointIndexByID(self, pointID: str) -> int:
        for index, point in enumerate(self._points):
            if point["id"] == pointID:
                return index
        return -1

    def GetNthControlPointSelected(self, i: int) -> bool:
        return bool(self._points[int(i)]["selected"]) if self._check(i) else False

    def SetNthControlPointSelected(self, i: int, value: bool) -> None:
        if self._check(i):
            self._points[int(i)]["selected"] = bool(value)
            self._changed(self.PointModifiedEvent, int(i))

    def GetNthControlPointLocked(self, i: int) -> bool:
        return bool(self._points[int(i)]["locked"]) if self._check(i) else False

    def GetNthControlPointVisibility(self, i: int) -> bool:
        return bool(self._points[int(i)]["visibility"]) if self._check(i) else False

    # -- moving ---------------------------------------------------------------------------
    def SetNthControlPointPosition(self, i: int, *args) -> None:
        """Local (node) RAS: (i, x, y, z) or (i, point)."""
        if self._check(i):
            self._points[int(i)]["position"] = _point(args)
            self._changed(self.PointModifiedEvent, int(i))

    def SetNthControlPointPositionWorld(self, i: int, *args) -> None:
        if self._check(i):
            local = (np.linalg.inv(self._toWorld()) @ np.append(_point(args), 1.0))[:3]
            self._points[int(i)]["position"] = local
            self._changed(self.PointModifiedEvent, int(i))

    def ApplyTransformMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        for point in self._points:
            point["position"] = (m @ np.append(point["position"], 1.0))[:3]
        if self._points:
            self._changed(self.PointModifiedEvent, -1)

    # -- .mrk.json ------------------------------------------------------------------------
    def _toJson(self, coordinateSystem: str = "LPS") -> dict:
        flip = F if coordinateSystem == "LPS" else np.eye(3)
        points = [{"id": p["id"], "label": p["label"], "description": p["description"], "associatedNodeID": "",
                   "position": [float(v) for v in flip @ p["position"]],
                   "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0] if coordinateSystem == "LPS"
                   else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                   "selected": p["selected"], "locked": p["locked"], "visibility": p["visibility"],
                   "positionStatus": "defined"} for p in self._points]
        return {"@schema": SCHEMA, "markups": [{"type": self._markupType, "coordinateSystem": coordinateSystem,
                                                "coordinateUnits": "mm", "locked": bool(self._locked),
                                                "labelFormat": self._labelFormat, "controlPoints": points}]}

    def _fromJson(self, document: dict) -> None:
        markup = document["markups"][0]
        flip = F if markup.get("coordinateSystem", "LPS") == "LPS" else np.eye(3)
        self._points = []
        self._labelFormat = markup.get("labelFormat", self._labelFormat)
        for p in markup.get("controlPoints", []):
            self._points.append({"id": str(p.get("id", len(self._points) + 1)), "label": p.get("label", ""),
                                 "description": p.get("description", ""),
                                 "position": flip @ np.asarray(p["position"], dtype=float),
                                 "selected": bool(p.get("selected", True)), "locked": bool(p.get("locked", False)),
                                 "visibility": bool(p.get("visibility", True))})
        numbers = [int(p["id"]) for p in self._points if str(p["id"]).isdigit()]
        self._lastNumber = max(numbers + [len(self._points)])
        self.Modified()


@register_node_class
class vtkMRMLMarkupsFiducialNode(vtkMRMLMarkupsNode):
    """A point list (Markups module's "Point List"): default name prefix "F"."""

    _tag = "MarkupsFiducial"
    _prefix = "F"
    _markupType = "Fiducial"


def write_markups_json(node: vtkMRMLMarkupsNode, fileName: str) -> None:
    with open(fileName, "w") as handle:
        json.dump(node._toJson("LPS"), handle, indent=2)


def read_markups_json(node: vtkMRMLMarkupsNode, fileName: str) -> None:
    with open(fileName) as handle:
        node._fromJson(json.load(handle))
