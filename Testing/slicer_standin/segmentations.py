"""Segmentation nodes and ImportLabelmapToSegmentationNode (slicer-api.md section 2, "Segmentations").

Segments keep a shared "Binary labelmap": one vtkOrientedImageData holding the imported label
values, clipped to the effective (non-zero) extent as Slicer's import does; a segment's binary
mask is ``labelmap == segment.GetLabelValue()``. Segment geometry is in the segmentation node's
local coordinates: importing goes labelmap local -> world -> segmentation local through both
nodes' parent transforms (linear only), as Slicer's import does.
"""
from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import numpy as np
import vtk
from vtk.util import numpy_support

from .mrml_core import register_node_class, vtkMRMLDisplayableNode, vtkMRMLDisplayNode, vtkMRMLStorageNode

logger = logging.getLogger("slicer_standin")

BINARY_LABELMAP = "Binary labelmap"
CLOSED_SURFACE = "Closed surface"


class vtkOrientedImageData(vtk.vtkImageData):
    """vtkImageData whose image-to-world matrix includes axis directions (VTK's direction matrix)."""

    def GetClassName(self) -> str:
        return "vtkOrientedImageData"

    def SetImageToWorldMatrix(self, mat: vtk.vtkMatrix4x4) -> None:
        m = np.array([[mat.GetElement(r, c) for c in range(4)] for r in range(4)])
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        direction = vtk.vtkMatrix3x3()
        for r in range(3):
            for c in range(3):
                direction.SetElement(r, c, m[r, c] / spacing[c] if spacing[c] else 0.0)
        self.SetSpacing(*spacing)
        self.SetOrigin(*m[:3, 3])
        self.SetDirectionMatrix(direction)

    SetGeometryFromImageToWorldMatrix = SetImageToWorldMatrix

    def GetImageToWorldMatrix(self, mat: vtk.vtkMatrix4x4) -> None:
        m = _image_to_world(self)
        for r in range(4):
            for c in range(4):
                mat.SetElement(r, c, m[r, c])

    def SetDirections(self, dirs) -> None:
        direction = vtk.vtkMatrix3x3()
        for r in range(3):
            for c in range(3):
                direction.SetElement(r, c, float(dirs[r][c]))
        self.SetDirectionMatrix(direction)

    def GetDirections(self, dirs) -> None:
        direction = self.GetDirectionMatrix()
        for r in range(3):
            for c in range(3):
                dirs[r][c] = direction.GetElement(r, c)


def _image_to_world(image: vtk.vtkImageData) -> np.ndarray:
    d = image.GetDirectionMatrix()
    direction = np.array([[d.GetElement(r, c) for c in range(3)] for r in range(3)])
    m = np.eye(4)
    m[:3, :3] = direction * np.asarray(image.GetSpacing())[np.newaxis, :]
    m[:3, 3] = image.GetOrigin()
    return m


def _image_array(image: vtk.vtkImageData) -> np.ndarray:
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(image.GetDimensions())))


def _new_oriented(array: np.ndarray, ijkToRAS: np.ndarray, extent: Tuple[int, ...]) -> vtkOrientedImageData:
    image = vtkOrientedImageData()
    image.SetExtent(*extent)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, ijkToRAS[r, c])
    image.SetImageToWorldMatrix(m)
    vtype = numpy_support.get_vtk_array_type(array.dtype)
    image.AllocateScalars(vtype, 1)
    _image_array(image)[:] = array
    return image


class vtkSegment(vtk.vtkObject):
    SEGMENT_COLOR_INVALID = (0.5, 0.5, 0.5)

    def __init__(self) -> None:
        super().__init__()
        self._name = ""
        self._color = self.SEGMENT_COLOR_INVALID
        self._labelValue = 1
        self._tags: Dict[str, str] = {}
        self._representations: Dict[str, vtk.vtkDataObject] = {}

    def GetClassName(self) -> str:
        return "vtkSegment"

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name
        self.Modified()

    def GetColor(self) -> tuple:
        return self._color

    def SetColor(self, *rgb) -> None:
        if len(rgb) == 1:
            rgb = tuple(rgb[0])
        self._color = tuple(float(c) for c in rgb[:3])
        self.Modified()

    def GetLabelValue(self) -> int:
        return self._labelValue

    def SetLabelValue(self, value: int) -> None:
        self._labelValue = int(value)
        self.Modified()

    def SetTag(self, key: str, value: str) -> None:
        self._tags[key] = str(value)

    def HasTag(self, key: str) -> bool:
        return key in self._tags

    def GetTag(self, key: str, value=None):
        """GetTag(key) -> str ("" if missing); GetTag(key, list) fills list[0] and returns bool."""
        if value is None:
            return self._tags.get(key, "")
        if key in self._tags:
            value[0] = self._tags[key]
            return True
        return False

    def AddRepresentation(self, name: str, data: vtk.vtkDataObject) -> bool:
        self._representations[name] = data
        self.Modified()
        return True

    def GetRepresentation(self, name: str) -> Optional[vtk.vtkDataObject]:
        return self._representations.get(name)

    def RemoveRepresentation(self, name: str) -> None:
        self._representations.pop(name, None)

    def GetContainedRepresentationNames(self) -> tuple:
        return tuple(self._representations)


class vtkSegmentation(vtk.vtkObject):
    """Ordered segments by ID. IDs handed out here are random UUID strings (section 2)."""

    def __init__(self) -> None:
        super().__init__()
        self._segments: "OrderedDict[str, vtkSegment]" = OrderedDict()
        self._sourceRepresentation = BINARY_LABELMAP
        self._hasClosedSurface = False

    def GetClassName(self) -> str:
        return "vtkSegmentation"

    def _newID(self) -> str:
        while True:
            candidate = str(uuid.uuid4())
            if candidate not in self._segments:
                return candidate

    def AddSegment(self, segment: vtkSegment, segmentId: str = "", insertBeforeSegmentId: str = "") -> bool:
        if segment is None:
            return False
        if not segmentId or segmentId in self._segments:
            segmentId = self._newID()
        items = list(self._segments.items())
        position = len(items)
        if insertBeforeSegmentId and insertBeforeSegmentId in self._segments:
            position = [k for k, _ in items].index(insertBeforeSegmentId)
        items.insert(position, (segmentId, segment))
        self._segments = OrderedDict(items)
        self.Modified()
        return True

    def AddEmptySegment(self, segmentId: str = "", segmentName: str = "", color=None) -> str:
        segment = vtkSegment()
        segment.SetName(segmentName or "Segment_%d" % (len(self._segments) + 1))
        if color is not None:
            segment.SetColor(color)
        if not segmentId or segmentId in self._segments:
            segmentId = self._newID()
        self.AddSegment(segment, segmentId)
        return segmentId

    def RemoveSegment(self, segmentIdOrSegment) -> None:
        if isinstance(segmentIdOrSegment, vtkSegment):
            segmentIdOrSegment = self.GetSegmentIdBySegment(segmentIdOrSegment)
        if self._segments.pop(segmentIdOrSegment, None) is not None:
            self.Modified()

    def RemoveAllSegments(self) -> None:
        self._segments.clear()
        self.Modified()

    def GetSegment(self, segmentId: str) -> Optional[vtkSegment]:
        return self._segments.get(segmentId)

    def GetNumberOfSegments(self) -> int:
        return len(self._segments)

    def GetNthSegment(self, n: int) -> Optional[vtkSegment]:
        segmentId = self.GetNthSegmentID(n)
        return self._segments.get(segmentId) if segmentId else None

    def GetNthSegmentID(self, n: int) -> str:
        ids = list(self._segments)
        return ids[n] if 0 <= n < len(ids) else ""

    def GetSegmentIDs(self, output: Optional[vtk.vtkStringArray] = None):
        if output is None:
            return tuple(self._segments)
        output.Initialize()
        for segmentId in self._segments:
            output.InsertNextValue(segmentId)
        return None

    def GetSegmentIndex(self, segmentId: str) -> int:
        ids = list(self._segments)
        return ids.index(segmentId) if segmentId in ids else -1

    def GetSegmentIdBySegmentName(self, name: str) -> str:
        for segmentId, segment in self._segments.items():
            if segment.GetName() == name:
                return segmentId
        return ""

    def GetSegmentIdBySegment(self, segment: vtkSegment) -> str:
        for segmentId, candidate in self._segments.items():
            if candidate is segment:
                return segmentId
        return ""

    def GetSourceRepresentationName(self) -> str:
        return self._sourceRepresentation

    GetMasterRepresentationName = GetSourceRepresentationName

    def ContainsRepresentation(self, name: str) -> bool:
        if name == CLOSED_SURFACE:
            return self._hasClosedSurface and bool(self._segments)
        return any(s.GetRepresentation(name) is not None for s in self._segments.values())

    def CreateRepresentation(self, name: str) -> bool:
        if name == CLOSED_SURFACE:
            self._hasClosedSurface = True
            return True
        return name == BINARY_LABELMAP


@register_node_class
class vtkMRMLSegmentationStorageNode(vtkMRMLStorageNode):
    _tag = "SegmentationStorage"


@register_node_class
class vtkMRMLSegmentationDisplayNode(vtkMRMLDisplayNode):
    _tag = "SegmentationDisplay"

    def __init__(self) -> None:
        super().__init__()
        self._segmentVisibility: Dict[str, bool] = {}
        self._properties: Dict[str, float] = {"Opacity2DFill": 0.5, "Opacity2DOutline": 1.0, "Opacity3D": 1.0}
        self._flags: Dict[str, bool] = {"Visibility2DFill": True, "Visibility2DOutline": True}

    def SetSegmentVisibility(self, segmentId: str, visible: bool) -> None:
        self._segmentVisibility[segmentId] = bool(visible)
        self.Modified()

    def GetSegmentVisibility(self, segmentId: str) -> bool:
        return self._segmentVisibility.get(segmentId, True)

    def SetAllSegmentsVisibility(self, visible: bool) -> None:
        node = self.GetDisplayableNode()
        if isinstance(node, vtkMRMLSegmentationNode):
            for segmentId in node.GetSegmentation().GetSegmentIDs():
                self._segmentVisibility[segmentId] = bool(visible)
        self.Modified()


def _add_display_property(name: str, kind: type) -> None:
    # SetOpacity2DFill / GetVisibility2DOutline / ...: stored values, no rendering.
    def getter(self):
        return self._properties[name] if kind is float else self._flags[name]

    def setter(self, value):
        store = self._properties if kind is float else self._flags
        store[name] = kind(value)
        self.Modified()

    setattr(vtkMRMLSegmentationDisplayNode, "Get" + name, getter)
    setattr(vtkMRMLSegmentationDisplayNode, "Set" + name, setter)


for _name in ("Opacity2DFill", "Opacity2DOutline", "Opacity3D"):
    _add_display_property(_name, float)
for _name in ("Visibility2DFill", "Visibility2DOutline"):
    _add_display_property(_name, bool)


@register_node_class
class vtkMRMLSegmentationNode(vtkMRMLDisplayableNode):
    _tag = "Segmentation"

    def __init__(self) -> None:
        super().__init__()
        self._segmentation = vtkSegmentation()
        self._referenceGeometry: Optional[Tuple[np.ndarray, Tuple[int, int, int]]] = None

    def GetSegmentation(self) -> vtkSegmentation:
        return self._segmentation

    def SetAndObserveSegmentation(self, segmentation: vtkSegmentation) -> None:
        self._segmentation = segmentation
        self.Modified()

    def CreateDefaultDisplayNodes(self) -> None:
        self._addDefaultDisplayNode(vtkMRMLSegmentationDisplayNode)

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode) -> None:
        """The volume's grid, expressed in this node's local coordinates (the two nodes' parent
        transforms are compared, as vtkMRMLSegmentationNode does)."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            return
        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        matrix = np.linalg.inv(self._toWorld()) @ volumeNode._toWorld() @ np.array(
            [[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        self._referenceGeometry = (matrix, volumeNode.GetImageData().GetDimensions())
        self.SetNodeReferenceID("referenceImageGeometryRef", volumeNode.GetID())

    def GetReferenceImageGeometry(self) -> Optional[Tuple[np.ndarray, Tuple[int, int, int]]]:
        return self._referenceGeometry

    def SetLabelmapConversionColorTableNodeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("labelmapConversionColorTableRef", nodeID)

    def GetLabelmapConversionColorTableNode(self):
        return self.GetNodeReference("labelmapConversionColorTableRef")

    def CreateClosedSurfaceRepresentation(self) -> bool:
        return self._segmentation.CreateRepresentation(CLOSED_SURFACE)

    def CreateBinaryLabelmapRepresentation(self) -> bool:
        return True

    def GetBinaryLabelmapRepresentation(self, segmentId: str, output: vtk.vtkImageData) -> bool:
        """Copies the segment's 0/1 mask (uint8, shared effective extent) into ``output``."""
        segment = self._segmentation.GetSegment(segmentId)
        labelmap = segment.GetRepresentation(BINARY_LABELMAP) if segment is not None else None
        if labelmap is None:
            return False
        mask = (_image_array(labelmap) == segment.GetLabelValue()).astype(np.uint8)
        result = _new_oriented(mask, _image_to_world(labelmap), labelmap.GetExtent())
        output.DeepCopy(result)
        output.SetDirectionMatrix(result.GetDirectionMatrix())
        return True

    def GetClosedSurfaceInternalRepresentation(self, segmentId: str) -> Optional[vtk.vtkPolyData]:
        """Built on demand with vtkDiscreteFlyingEdges3D once CreateClosedSurfaceRepresentation ran."""
        if not self._segmentation.ContainsRepresentation(CLOSED_SURFACE):
            return None
        image = vtkOrientedImageData()
        if not self.GetBinaryLabelmapRepresentation(segmentId, image):
            return None
        ijk = vtk.vtkImageData()
        ijk.DeepCopy(image)
        ijk.SetOrigin(0, 0, 0)
        ijk.SetSpacing(1, 1, 1)
        surface = vtk.vtkDiscreteFlyingEdges3D()
        surface.SetInputData(ijk)
        surface.SetValue(0, 1)
        transform = vtk.vtkTransform()
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        transform.SetMatrix(m)
        toWorld = vtk.vtkTransformPolyDataFilter()
        toWorld.SetInputConnection(surface.GetOutputPort())
        toWorld.SetTransform(transform)
        toWorld.Update()
        return toWorld.GetOutput()


class vtkSlicerSegmentationsModuleLogic(vtk.vtkObject):
    """``slicer.modules.segmentations.logic()``."""

    def GetClassName(self) -> str:
        return "vtkSlicerSegmentationsModuleLogic"

    def ImportLabelmapToSegmentationNode(self, labelmapNode, segmentationNode, insertBeforeOrUpdatedIDs="",
                                         userMessages=None) -> bool:
        """One segment per non-zero label, named from the colour table (an *empty* name for a
        value the table lacks), else the node name (one label, no colour table), else
        ``Label_<v>`` (no colour table); random IDs; float labelmaps are cast with a
        warning (slicer-api.md section 2 and MUST item 8).

        The third argument is ``insertBeforeSegmentId`` (str) or ``updatedSegmentIDs``
        (vtkStringArray): label ``i``-th in ascending order then updates/creates that segment ID.
        """
        from .mrml_volumes import vtkMRMLLabelMapVolumeNode
        from .mrml_colors import vtkMRMLColorTableNode

        if labelmapNode is not None and not isinstance(labelmapNode, vtkMRMLLabelMapVolumeNode):
            raise TypeError("ImportLabelmapToSegmentationNode argument 1: method requires a "
                            "vtkMRMLLabelMapVolumeNode, a %s was provided." % labelmapNode.GetClassName())
        if segmentationNode is None:
            logger.warning("vtkSlicerSegmentationsModuleLogic::ImportLabelmapToSegmentationNode: Invalid segmentation node")
            return False
        if labelmapNode is None or labelmapNode.GetImageData() is None:
            logger.error("ImportLabelmapToSegmentationNode: Invalid labelmap volume node")
            return False
        ijkToRAS = vtk.vtkMatrix4x4()
        labelmapNode.GetIJKToRASMatrix(ijkToRAS)
        # Labelmap local -> world -> segmentation local (slicer-api.md "Parent transforms").
        matrix = np.linalg.inv(segmentationNode._toWorld()) @ labelmapNode._toWorld() @ np.array(
            [[ijkToRAS.GetElement(r, c) for c in range(4)] for r in range(4)])

        colorTable = None
        display = labelmapNode.GetDisplayNode()
        if display is not None and isinstance(display.GetColorNode(), vtkMRMLColorTableNode):
            colorTable = display.GetColorNode()
            segmentationNode.SetLabelmapConversionColorTableNodeID(colorTable.GetID())
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()

        voxels = _image_array(labelmapNode.GetImageData())
        if voxels.ndim != 3:
            voxels = voxels[..., 0]
        if np.issubdtype(voxels.dtype, np.floating):
            logger.warning("ImportLabelmapToSegmentationNode: labelmap %s has floating-point scalar type %s; "
                           "it is cast to integer", labelmapNode.GetName(), voxels.dtype)
            voxels = np.trunc(voxels).astype(np.int32)
        labels = [int(v) for v in np.unique(voxels) if v != 0]

        nonzero = np.nonzero(voxels)
        if labels:
            lo = [int(a.min()) for a in nonzero]
            hi = [int(a.max()) for a in nonzero]
        else:
            lo, hi = [0, 0, 0], [-1, -1, -1]
        # Clipped to the effective extent, like Slicer's import; extent is (i0, i1, j0, j1, k0, k1).
        extent = (lo[2], hi[2], lo[1], hi[1], lo[0], hi[0])
        shared = _new_oriented(voxels[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1], matrix, extent) \
            if labels else None

        updatedIDs = None
        insertBefore = ""
        if isinstance(insertBeforeOrUpdatedIDs, vtk.vtkStringArray):
            updatedIDs = [insertBeforeOrUpdatedIDs.GetValue(i) for i in range(insertBeforeOrUpdatedIDs.GetNumberOfValues())]
        elif insertBeforeOrUpdatedIDs:
            insertBefore = str(insertBeforeOrUpdatedIDs)

        segmentation = segmentationNode.GetSegmentation()
        wasModifying = segmentationNode.StartModify()
        for index, label in enumerate(labels):
            color = list(vtkSegment.SEGMENT_COLOR_INVALID) + [1.0]
            if colorTable is not None:
                # GetColorName gives "" (not NULL) for a value the table lacks, so Slicer's
                # Label_<v> fallback is never reached: the segment's name is empty.
                name = colorTable.GetColorName(label)
                colorTable.GetColor(label, color)
            elif len(labels) == 1:
                name = labelmapNode.GetName()
            else:
                name = "Label_%d" % label
            segmentId = updatedIDs[index] if updatedIDs is not None and index < len(updatedIDs) else ""
            segment = segmentation.GetSegment(segmentId) if segmentId else None
            if segment is None:
                segment = vtkSegment()
                segment.SetName(name)
                segment.SetColor(color[:3])
            segment.SetLabelValue(label)
            segment.AddRepresentation(BINARY_LABELMAP, shared)
            if segmentation.GetSegment(segmentId) is None:
                if not segmentation.AddSegment(segment, segmentId, insertBefore):
                    logger.error("ImportLabelmapToSegmentationNode: Failed to add segment to segmentation")
                    segmentationNode.EndModify(wasModifying)
                    return False
        segmentationNode.Modified()
        segmentationNode.EndModify(wasModifying)
        return True


def resample_mask_to_reference(image: vtk.vtkImageData, refIJKToRAS: np.ndarray, refDims) -> np.ndarray:
    """Nearest-neighbour resampling of a (K, J, I) mask into a reference grid, slice by slice."""
    mask = _image_array(image)
    extent = image.GetExtent()
    toSource = np.linalg.inv(_image_to_world(image)) @ refIJKToRAS
    ni, nj, nk = refDims
    out = np.zeros((nk, nj, ni), dtype=mask.dtype)
    jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
    for k in range(nk):
        points = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k), np.ones(ii.size)])
        src = np.rint(toSource @ points).astype(np.int64)
        i = src[0] - extent[0]
        j = src[1] - extent[2]
        kk = src[2] - extent[4]
        inside = (i >= 0) & (i < mask.shape[2]) & (j >= 0) & (j < mask.shape[1]) & (kk >= 0) & (kk < mask.shape[0])
        values = np.zeros(ii.size, dtype=mask.dtype)
        values[inside] = mask[kk[inside], j[inside], i[inside]]
        out[k] = values.reshape(nj, ni)
    return out

