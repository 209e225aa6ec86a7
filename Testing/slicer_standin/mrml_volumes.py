"""Volume nodes and their display nodes (slicer-api.md section 2, "Volume geometry" and
"Scalar display node").

The geometry lives on the node only (Spacing, Origin, IJKToRASDirections); the vtkImageData a
volume holds keeps origin 0, spacing 1 and an identity direction.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import vtk
import vtk.util.numpy_support

from .mrml_core import (
    register_node_class,
    vtkMRMLDisplayableNode,
    vtkMRMLDisplayNode,
    vtkMRMLNode,
    vtkMRMLStorageNode,
)

logger = logging.getLogger("slicer_standin")


def _changed(a, b) -> bool:
    # Slicer's setters compare fuzzily and fire Modified only on a change.
    return not np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0.0, atol=1e-12,
                           equal_nan=True)


def _three(args) -> np.ndarray:
    if len(args) == 1:
        args = tuple(args[0])
    if len(args) != 3:
        raise TypeError("expected 3 values")
    return np.array([float(v) for v in args])


def _matrix4(m) -> vtk.vtkMatrix4x4:
    if not isinstance(m, vtk.vtkMatrix4x4):
        raise TypeError("method requires a vtkMatrix4x4, a %s was provided." % type(m).__name__)
    return m


class vtkMRMLVolumeNode(vtkMRMLDisplayableNode):
    ImageDataModifiedEvent = 18001

    def __init__(self) -> None:
        super().__init__()
        self._spacing = np.ones(3)
        self._origin = np.zeros(3)
        self._dirs = np.eye(3)  # columns: the I, J and K unit vectors in RAS
        self._imageData: Optional[vtk.vtkImageData] = None
        # The volume tells its display nodes when voxels change (auto window/level); observing
        # itself also catches slicer.util.updateVolumeFromArray's direct InvokeEvent.
        self.AddObserver(self.ImageDataModifiedEvent, lambda caller, event: caller._onImageDataModified())

    def _copyContent(self, node: vtkMRMLNode) -> None:
        if isinstance(node, vtkMRMLVolumeNode):
            self._spacing = node._spacing.copy()
            self._origin = node._origin.copy()
            self._dirs = node._dirs.copy()

    # -- geometry -------------------------------------------------------------------------
    def _ijkToRAS(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self._dirs * self._spacing[np.newaxis, :]
        m[:3, 3] = self._origin
        return m

    def _setGeometry(self, spacing: np.ndarray, dirs: np.ndarray, origin: np.ndarray) -> None:
        if _changed(spacing, self._spacing) or _changed(dirs, self._dirs) or _changed(origin, self._origin):
            self._spacing, self._dirs, self._origin = spacing, dirs, origin
            self.StorableModified()
            self.Modified()

    def GetIJKToRASMatrix(self, mat: vtk.vtkMatrix4x4) -> None:
        """Fills the output argument and returns None (there is no no-argument form)."""
        _matrix4(mat)
        m = self._ijkToRAS()
        for r in range(4):
            for c in range(4):
                mat.SetElement(r, c, m[r, c])

    def GetRASToIJKMatrix(self, mat: vtk.vtkMatrix4x4) -> None:
        _matrix4(mat)
        m = np.linalg.inv(self._ijkToRAS())
        for r in range(4):
            for c in range(4):
                mat.SetElement(r, c, m[r, c])

    def SetIJKToRASMatrix(self, mat: Optional[vtk.vtkMatrix4x4]) -> None:
        """Spacing = column norms, directions = unit columns (NaN for a zero column), origin = column 3."""
        if mat is None:
            return
        _matrix4(mat)
        m = np.array([[mat.GetElement(r, c) for c in range(4)] for r in range(4)])
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            dirs = m[:3, :3] / spacing[np.newaxis, :]
        self._setGeometry(spacing, dirs, m[:3, 3].copy())

    def SetRASToIJKMatrix(self, mat: Optional[vtk.vtkMatrix4x4]) -> None:
        if mat is None:
            return
        _matrix4(mat)
        inverse = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(mat, inverse)
        self.SetIJKToRASMatrix(inverse)

    def GetSpacing(self) -> tuple:
        return tuple(float(v) for v in self._spacing)

    def SetSpacing(self, *args) -> None:
        self._setGeometry(_three(args), self._dirs, self._origin)

    def GetOrigin(self) -> tuple:
        return tuple(float(v) for v in self._origin)

    def SetOrigin(self, *args) -> None:
        self._setGeometry(self._spacing, self._dirs, _three(args))

    def GetIJKToRASDirections(self, dirs) -> None:
        """Fills a 3x3 numpy array or a nested list in place (VTK's double[3][3] wrapping)."""
        for r in range(3):
            for c in range(3):
                dirs[r][c] = float(self._dirs[r, c])

    def SetIJKToRASDirections(self, *args) -> None:
        """A 3x3 array/nested list, or nine scalars (ir, jr, kr, ia, ja, ka, is, js, ks), row-major."""
        if len(args) == 1:
            d = np.array(args[0], dtype=float).reshape(3, 3)
        elif len(args) == 9:
            d = np.array(args, dtype=float).reshape(3, 3)
        else:
            raise TypeError("SetIJKToRASDirections: expected a 3x3 array or 9 values")
        self._setGeometry(self._spacing, d, self._origin)

    def GetIJKToRASDirectionMatrix(self, mat: vtk.vtkMatrix4x4) -> None:
        _matrix4(mat)
        mat.Identity()
        for r in range(3):
            for c in range(3):
                mat.SetElement(r, c, self._dirs[r, c])

    def SetIJKToRASDirectionMatrix(self, mat: vtk.vtkMatrix4x4) -> None:
        _matrix4(mat)
        d = np.array([[mat.GetElement(r, c) for c in range(3)] for r in range(3)])
        self._setGeometry(self._spacing, d, self._origin)

    def CopyOrientation(self, node: "vtkMRMLVolumeNode") -> None:
        """Spacing, origin and directions only: no voxels, no dimensions."""
        self._setGeometry(node._spacing.copy(), node._dirs.copy(), node._origin.copy())

    def _bounds(self, bounds, toWorld: bool) -> None:
        if self._imageData is None:
            for i, v in enumerate((1.0, -1.0, 1.0, -1.0, 1.0, -1.0)):
                bounds[i] = v
            return
        dims = self._imageData.GetDimensions()
        m = self._ijkToRAS()
        if toWorld:
            m = self._toWorld() @ m
        corners = np.array([[i, j, k, 1.0] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5)
                            for k in (-0.5, dims[2] - 0.5)])
        ras = (m @ corners.T).T[:, :3]
        lo, hi = ras.min(axis=0), ras.max(axis=0)
        for i in range(3):
            bounds[2 * i], bounds[2 * i + 1] = float(lo[i]), float(hi[i])

    def GetRASBounds(self, bounds) -> None:
        """Voxel-corner bounds in *world* RAS (after the parent transforms), as shown."""
        self._bounds(bounds, toWorld=True)

    def GetBounds(self, bounds) -> None:
        """Voxel-corner bounds in the node's local RAS (no parent transform)."""
        self._bounds(bounds, toWorld=False)

    def ApplyTransformMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        """IJK-to-RAS becomes matrix . IJK-to-RAS (what hardening a linear transform does)."""
        m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]) @ self._ijkToRAS()
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        self._setGeometry(spacing, m[:3, :3] / spacing[np.newaxis, :], m[:3, 3].copy())

    def ReverseSliceOrder(self) -> None:
        """Reverses the voxels along K and sets IJKToRAS = old . Translate(0, 0, K-1) . Scale(1, 1, -1),
        so every voxel keeps its RAS position (section 2)."""
        image = self._imageData
        if image is None or image.GetPointData().GetScalars() is None:
            return
        scalars = image.GetPointData().GetScalars()
        dims = image.GetDimensions()
        voxels = vtk.util.numpy_support.vtk_to_numpy(scalars).reshape(
            (dims[2], dims[1], dims[0], image.GetNumberOfScalarComponents()))
        voxels[:] = voxels[::-1].copy()
        translate = np.eye(4)
        translate[2, 3] = dims[2] - 1
        m = self._ijkToRAS() @ translate @ np.diag([1.0, 1.0, -1.0, 1.0])
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        self._setGeometry(spacing, m[:3, :3] / spacing[np.newaxis, :], m[:3, 3].copy())
        scalars.Modified()
        self.InvokeEvent(self.ImageDataModifiedEvent, self)

    def SetIJKCoordinateSystemToRightHanded(self) -> bool:
        """Slicer >= 5.8: ReverseSliceOrder() if det(directions) < 0; True if it did."""
        if np.linalg.det(self._dirs) >= 0:
            return False
        self.ReverseSliceOrder()
        return True

    # -- voxels ---------------------------------------------------------------------------
    def GetImageData(self) -> Optional[vtk.vtkImageData]:
        return self._imageData

    def SetAndObserveImageData(self, image: Optional[vtk.vtkImageData]) -> None:
        if image is not None:
            direction = image.GetDirectionMatrix()
            identity = all(direction.GetElement(r, c) == (1.0 if r == c else 0.0) for r in range(3) for c in range(3))
            if image.GetOrigin() != (0.0, 0.0, 0.0) or image.GetSpacing() != (1.0, 1.0, 1.0) or not identity:
                # Slicer >= 5.12 warns: the geometry must be on the node, not on the image.
                logger.warning("vtkMRMLVolumeNode::SetAndObserveImageData: image data origin, spacing and "
                               "axis directions are ignored; use the volume node's geometry instead")
        if image is self._imageData:
            return
        self._imageData = image
        self.StorableModified()
        self.Modified()
        self.InvokeEvent(self.ImageDataModifiedEvent, self)

    def _onImageDataModified(self) -> None:
        for i in range(self.GetNumberOfDisplayNodes()):
            node = self.GetNthDisplayNode(i)
            if isinstance(node, vtkMRMLScalarVolumeDisplayNode):
                node._inputChanged()

    def _onDisplayNodeChanged(self) -> None:
        self._onImageDataModified()

    def _beforeModifiedEvent(self) -> None:
        # arrayFromVolumeModified ends with volumeNode.Modified(): display nodes see new voxels.
        self._onImageDataModified()


@register_node_class
class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    _tag = "Volume"

    def CreateDefaultDisplayNodes(self) -> None:
        """Grey scalar display node; idempotent; needs a scene (section 2)."""
        self._addDefaultDisplayNode(vtkMRMLScalarVolumeDisplayNode)


@register_node_class
class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    """Does not enforce an integer scalar type (section 2)."""

    _tag = "LabelMapVolume"

    def CreateDefaultDisplayNodes(self) -> None:
        self._addDefaultDisplayNode(vtkMRMLLabelMapVolumeDisplayNode)


class vtkMRMLTensorVolumeNode(vtkMRMLScalarVolumeNode):
    _tag = "TensorVolume"


@register_node_class
class vtkMRMLVectorVolumeNode(vtkMRMLTensorVolumeNode):
    _tag = "VectorVolume"

    def CreateDefaultDisplayNodes(self) -> None:
        self._addDefaultDisplayNode(vtkMRMLVectorVolumeDisplayNode)


@register_node_class
class vtkMRMLDiffusionWeightedVolumeNode(vtkMRMLScalarVolumeNode):
    _tag = "DiffusionWeightedVolume"


@register_node_class
class vtkMRMLDiffusionTensorVolumeNode(vtkMRMLTensorVolumeNode):
    _tag = "DiffusionTensorVolume"


@register_node_class
class vtkMRMLVolumeArchetypeStorageNode(vtkMRMLStorageNode):
    _tag = "VolumeArchetypeStorage"


class vtkMRMLVolumeDisplayNode(vtkMRMLDisplayNode):
    _tag = "VolumeDisplay"

    def GetInputImageData(self) -> Optional[vtk.vtkImageData]:
        volume = self.GetDisplayableNode()
        return volume.GetImageData() if isinstance(volume, vtkMRMLVolumeNode) else None


@register_node_class
class vtkMRMLScalarVolumeDisplayNode(vtkMRMLVolumeDisplayNode):
    """AutoWindowLevel is on by default and, as the node observes itself, any Modified() while
    it is on recomputes window/level from the 0.1-99.9 percentiles: SetWindowLevel & co. are
    overwritten unless AutoWindowLevelOff() comes first (slicer-api.md section 2)."""

    _tag = "VolumeDisplay"

    def __init__(self) -> None:
        super().__init__()
        self._autoWindowLevel = 1
        self._window = 256.0
        self._level = 128.0
        self._applyThreshold = 0
        self._autoThreshold = 0
        self._lowerThreshold = -32767.0
        self._upperThreshold = 32767.0
        self._interpolate = 1
        self._autoLevelsKey: Optional[tuple] = None
        self._autoLevels = (256.0, 128.0)

    def _copyContent(self, node: vtkMRMLNode) -> None:
        super()._copyContent(node)
        for key in ("_autoWindowLevel", "_window", "_level", "_applyThreshold", "_autoThreshold",
                    "_lowerThreshold", "_upperThreshold", "_interpolate"):
            if hasattr(node, key):
                setattr(self, key, getattr(node, key))

    def SetDefaultColorMap(self) -> None:
        self.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")

    # -- window / level -------------------------------------------------------------------
    def GetWindow(self) -> float:
        return self._window

    def GetLevel(self) -> float:
        return self._level

    def SetWindow(self, window: float) -> None:
        self._window = float(window)
        self.Modified()

    def SetLevel(self, level: float) -> None:
        self._level = float(level)
        self.Modified()

    def SetWindowLevel(self, window: float, level: float) -> None:
        self._window, self._level = float(window), float(level)
        self.Modified()

    def SetWindowLevelMinMax(self, minimum: float, maximum: float) -> None:
        self.SetWindowLevel(maximum - minimum, 0.5 * (minimum + maximum))

    def GetWindowLevelMin(self) -> float:
        return self._level - 0.5 * self._window

    def GetWindowLevelMax(self) -> float:
        return self._level + 0.5 * self._window

    def GetAutoWindowLevel(self) -> int:
        return self._autoWindowLevel

    def SetAutoWindowLevel(self, value: int) -> None:
        value = int(bool(value))
        if value != self._autoWindowLevel:
            self._autoWindowLevel = value
            self._autoLevelsKey = None
            self.Modified()

    def AutoWindowLevelOn(self) -> None:
        self.SetAutoWindowLevel(1)

    def AutoWindowLevelOff(self) -> None:
        self.SetAutoWindowLevel(0)

    # -- thresholds and interpolation -----------------------------------------------------
    def SetApplyThreshold(self, value: int) -> None:
        self._set("_applyThreshold", int(bool(value)))

    def GetApplyThreshold(self) -> int:
        return self._applyThreshold

    def ApplyThresholdOn(self) -> None:
        self.SetApplyThreshold(1)

    def ApplyThresholdOff(self) -> None:
        self.SetApplyThreshold(0)

    def SetAutoThreshold(self, value: int) -> None:
        self._set("_autoThreshold", int(bool(value)))

    def GetAutoThreshold(self) -> int:
        return self._autoThreshold

    def SetLowerThreshold(self, value: float) -> None:
        self._set("_lowerThreshold", float(value))

    def GetLowerThreshold(self) -> float:
        return self._lowerThreshold

    def SetUpperThreshold(self, value: float) -> None:
        self._set("_upperThreshold", float(value))

    def GetUpperThreshold(self) -> float:
        return self._upperThreshold

    def SetThreshold(self, lower: float, upper: float) -> None:
        self._lowerThreshold, self._upperThreshold = float(lower), float(upper)
        self.Modified()

    def SetInterpolate(self, value: int) -> None:
        self._set("_interpolate", int(bool(value)))

    def GetInterpolate(self) -> int:
        return self._interpolate

    def InterpolateOn(self) -> None:
        self.SetInterpolate(1)

    def InterpolateOff(self) -> None:
        self.SetInterpolate(0)

    # -- automatic levels -----------------------------------------------------------------
    def CalculateAutoLevels(self) -> None:
        if self._computeAutoLevels(force=True):
            vtkMRMLNode.Modified(self)

    def _computeAutoLevels(self, force: bool = False) -> bool:
        key = self._inputKey()
        if key is None:
            return False  # nothing to measure: the set values stay (as in Slicer)
        # The histogram is cached per voxel content; the levels are re-applied on every call.
        if force or key != self._autoLevelsKey:
            image = self.GetInputImageData()
            stats = vtk.vtkImageHistogramStatistics()
            stats.SetInputData(image)
            stats.SetAutoRangePercentiles(0.1, 99.9)
            stats.SetAutoRangeExpansionFactors(0.0, 0.0)
            stats.Update()
            low, high = stats.GetAutoRange()
            self._autoLevels = (float(high - low), float(0.5 * (high + low)))
            self._autoLevelsKey = key
        self._window, self._level = self._autoLevels
        return True

    def _beforeModifiedEvent(self) -> None:
        if self._autoWindowLevel:
            # Any Modified() re-runs CalculateAutoLevels while AutoWindowLevel is on.
            self._computeAutoLevels()

    def _inputKey(self) -> Optional[tuple]:
        image = self.GetInputImageData()
        if image is None or image.GetPointData().GetScalars() is None:
            return None
        return (id(image), image.GetMTime(), image.GetPointData().GetScalars().GetMTime(), image.GetDimensions())

    def _inputChanged(self) -> None:
        if self._autoWindowLevel and self._inputKey() != self._autoLevelsKey:
            self.Modified()


@register_node_class
class vtkMRMLLabelMapVolumeDisplayNode(vtkMRMLVolumeDisplayNode):
    _tag = "LabelMapVolumeDisplay"

    def SetDefaultColorMap(self) -> None:
        self.SetAndObserveColorNodeID("vtkMRMLColorTableNodeLabels")


@register_node_class
class vtkMRMLVectorVolumeDisplayNode(vtkMRMLVolumeDisplayNode):
    _tag = "VectorVolumeDisplay"
