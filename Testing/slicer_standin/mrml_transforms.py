"""Transform nodes (slicer-api.md section 2 "Parent transforms", MUST item 11).

Only linear transforms are modelled. A transform node is itself transformable (transforms nest);
its matrix-to-parent maps its children's coordinates to its own parent's, so a node's world
matrix is the product along its chain of ancestors. Nothing here is rendered: "displayed where"
means the world coordinates these matrices give (GetRASBounds, ...-World getters).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import vtk

from .mrml_core import matrix_of, register_node_class, vtkMRMLDisplayableNode, vtkMRMLStorageNode


def _vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    result.DeepCopy(np.asarray(m, dtype=float).ravel())
    return result


def _fill(out: Optional[vtk.vtkMatrix4x4], m: np.ndarray):
    """Fills ``out`` (returns None) or, without it, returns a new vtkMatrix4x4."""
    if out is None:
        return _vtk_matrix(m)
    out.DeepCopy(np.asarray(m, dtype=float).ravel())
    return None


@register_node_class
class vtkMRMLTransformStorageNode(vtkMRMLStorageNode):
    _tag = "TransformStorage"


@register_node_class
class vtkMRMLTransformNode(vtkMRMLDisplayableNode):
    _tag = "Transform"

    def __init__(self) -> None:
        super().__init__()
        self._toParent = np.eye(4)

    def _copyContent(self, node) -> None:
        if isinstance(node, vtkMRMLTransformNode):
            self._toParent = node._toParent.copy()

    def _setToParent(self, m: np.ndarray) -> None:
        if not np.array_equal(m, self._toParent):
            self._toParent = np.array(m, dtype=float)
            self.StorableModified()
            self.Modified()
            self.InvokeEvent(self.TransformModifiedEvent)

    def _transformToWorld(self) -> np.ndarray:
        return self._toWorld() @ self._toParent

    # -- matrices -------------------------------------------------------------------------
    def IsLinear(self) -> bool:
        return True

    def IsTransformToWorldLinear(self) -> bool:
        return True

    def SetMatrixTransformToParent(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._setToParent(matrix_of(matrix))

    def SetMatrixTransformFromParent(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._setToParent(np.linalg.inv(matrix_of(matrix)))

    def GetMatrixTransformToParent(self, out: Optional[vtk.vtkMatrix4x4] = None):
        return _fill(out, self._toParent)

    def GetMatrixTransformFromParent(self, out: Optional[vtk.vtkMatrix4x4] = None):
        return _fill(out, np.linalg.inv(self._toParent))

    def GetMatrixTransformToWorld(self, out: Optional[vtk.vtkMatrix4x4] = None):
        """This transform and all its parents: its children's coordinates -> world."""
        return _fill(out, self._transformToWorld())

    def GetMatrixTransformFromWorld(self, out: Optional[vtk.vtkMatrix4x4] = None):
        return _fill(out, np.linalg.inv(self._transformToWorld()))

    @staticmethod
    def GetMatrixTransformBetweenNodes(sourceNode, targetNode, out: vtk.vtkMatrix4x4) -> bool:
        """Coordinates of children of ``sourceNode`` -> those of ``targetNode`` (None = world)."""
        source = sourceNode._transformToWorld() if sourceNode is not None else np.eye(4)
        target = targetNode._transformToWorld() if targetNode is not None else np.eye(4)
        out.DeepCopy((np.linalg.inv(target) @ source).ravel())
        return True

    def ApplyTransformMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._setToParent(matrix_of(matrix) @ self._toParent)

    def Inverse(self) -> None:
        self._setToParent(np.linalg.inv(self._toParent))


@register_node_class
class vtkMRMLLinearTransformNode(vtkMRMLTransformNode):
    _tag = "LinearTransform"


class vtkSlicerTransformLogic:
    """``slicer.vtkSlicerTransformLogic``: only ``hardenTransform`` (static in Slicer)."""

    @staticmethod
    def hardenTransform(node) -> bool:
        node.HardenTransform()
        return True
