"""``slicer.app.coreIOManager()``: reading and writing volumes, segmentations and tables.

Volumes are read and written with SimpleITK and converted per slicer-api.md section 3 (rows 0
and 1 negated; arrays need no transpose; Slicer >= 5.8 makes left-handed files right-handed).
What each ``loadVolume`` property does follows section 1 (qSlicerVolumesReader::load).
"""
from __future__ import annotations

import csv
import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from . import geometry
from .mrml_core import vtkMRMLScene
from .mrml_markups import (
    read_markups_json,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsFiducialStorageNode,
    vtkMRMLMarkupsNode,
    write_markups_json,
)
from .mrml_misc import vtkMRMLTableNode, vtkMRMLTableStorageNode
from .mrml_volumes import (
    vtkMRMLLabelMapVolumeDisplayNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeDisplayNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLVectorVolumeDisplayNode,
    vtkMRMLVectorVolumeNode,
    vtkMRMLVolumeArchetypeStorageNode,
    vtkMRMLVolumeNode,
)
from .segmentations import (
    BINARY_LABELMAP,
    _image_array,
    _image_to_world,
    _new_oriented,
    vtkMRMLSegmentationNode,
    vtkMRMLSegmentationStorageNode,
    vtkSegment,
    vtkSlicerSegmentationsModuleLogic,
)

logger = logging.getLogger("slicer_standin")

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".ima", ".img", ".hdr",
                     ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".vtk", ".gipl", ".gipl.gz", ".mgz")
SEGMENTATION_EXTENSIONS = (".seg.nrrd", ".seg.nhdr")
TABLE_EXTENSIONS = (".csv", ".tsv")
MARKUPS_EXTENSIONS = (".mrk.json",)
SCENE_EXTENSIONS = (".mrb",)


class vtkMRMLMessageCollection(vtk.vtkObject):
    """What the IO manager reports to ``loadNodeFromFile`` (appended to its RuntimeError)."""

    def __init__(self) -> None:
        super().__init__()
        self._messages: List[Tuple[int, str]] = []

    def GetClassName(self) -> str:
        return "vtkMRMLMessageCollection"

    def AddMessage(self, eventId: int, text: str) -> None:
        self._messages.append((eventId, text))

    def GetNumberOfMessages(self) -> int:
        return len(self._messages)

    def GetNthMessageText(self, n: int) -> str:
        return self._messages[n][1]

    def GetAllMessagesAsString(self) -> str:
        return "\n".join(text for _, text in self._messages)

    def ClearMessages(self) -> None:
        self._messages.clear()


def _to_bool(value) -> bool:
    if isinstance(value, str):
        try:
            return bool(int(value))
        except ValueError:
            return value.lower() == "true"
    return bool(value)


def base_name(fileName: str) -> str:
    """QFileInfo::baseName(): the text before the *first* dot (``ct.nii.gz`` -> ``ct``)."""
    return os.path.basename(str(fileName)).split(".", 1)[0]


def name_without_extension(fileName: str, extensions) -> str:
    name = os.path.basename(str(fileName))
    for ext in sorted(extensions, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _is_dicom(fileName: str) -> bool:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(fileName)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return True


def read_image(fileName: str, singleFile: bool = False, fileNames: Optional[List[str]] = None) -> sitk.Image:
    """SimpleITK read. A DICOM file without ``singleFile`` loads its whole series (section 4)."""
    if fileNames:
        return sitk.ReadImage([str(f) for f in fileNames])
    if not singleFile and _is_dicom(fileName):
        folder = os.path.dirname(os.path.abspath(fileName))
        for seriesID in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, seriesID)
            if os.path.abspath(fileName) in [os.path.abspath(f) for f in files]:
                return sitk.ReadImage(files)
    return sitk.ReadImage(str(fileName))


def image_to_array_and_ijk_to_ras(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """(K, J, I[, C]) voxels and IJKToRAS per section 3 (2-D images become one slice)."""
    array = sitk.GetArrayFromImage(image)
    components = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 2:
        array = array[np.newaxis]
        d2 = np.reshape(image.GetDirection(), (2, 2))
        direction = np.eye(3)
        direction[:2, :2] = d2
        origin = tuple(image.GetOrigin()) + (0.0,)
        spacing = tuple(image.GetSpacing()) + (1.0,)
        return array, geometry.ijk_to_ras_from_sitk(origin, spacing, direction.ravel())
    if image.GetDimension() != 3:
        raise RuntimeError("unsupported image dimension %d" % image.GetDimension())
    if components == 1 and array.ndim != 3:
        raise RuntimeError("unexpected array shape %s" % (array.shape,))
    return array, geometry.ijk_to_ras_from_sitk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def new_image_data(array: np.ndarray) -> vtk.vtkImageData:
    """An identity-geometry vtkImageData holding a copy of a (K, J, I[, C]) array."""
    image = vtk.vtkImageData()
    components = array.shape[3] if array.ndim == 4 else 1
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(numpy_support.get_vtk_array_type(array.dtype), components)
    target = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    target[:] = array.reshape(target.shape)
    return image


def _vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            result.SetElement(r, c, float(m[r, c]))
    return result


def _node_matrix(node: vtkMRMLVolumeNode) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


class qSlicerCoreIOManager:
    def __init__(self, app) -> None:
        self._app = app

    @property
    def _scene(self) -> vtkMRMLScene:
        return self._app.mrmlScene()

    # -- file types -----------------------------------------------------------------------
    def fileType(self, fileName) -> str:
        name = str(fileName).lower()
        if name.endswith(SCENE_EXTENSIONS):
            return "SceneFile"
        if name.endswith(MARKUPS_EXTENSIONS):
            return "MarkupsFile"
        if name.endswith(SEGMENTATION_EXTENSIONS):
            return "SegmentationFile"
        if name.endswith(TABLE_EXTENSIONS):
            return "TableFile"
        if name.endswith(VOLUME_EXTENSIONS) or os.path.isdir(str(fileName)):
            return "VolumeFile"
        return "NoFile"

    def fileWriterFileType(self, node) -> str:
        if isinstance(node, vtkMRMLVolumeNode):
            return "VolumeFile"
        if isinstance(node, vtkMRMLSegmentationNode):
            return "SegmentationFile"
        if isinstance(node, vtkMRMLTableNode):
            return "TableFile"
        if isinstance(node, vtkMRMLMarkupsNode):
            return "MarkupsFile"
        return "NoFile"

    # -- loading --------------------------------------------------------------------------
    def loadNodes(self, fileType: str, properties: dict, loadedNodes: Optional[vtk.vtkCollection] = None,
                  userMessages: Optional[vtkMRMLMessageCollection] = None) -> bool:
        messages = userMessages if userMessages is not None else vtkMRMLMessageCollection()
        fileName = properties.get("fileName")
        loaders = {"VolumeFile": self._loadVolume, "SegmentationFile": self._loadSegmentation,
                   "TableFile": self._loadTable, "MarkupsFile": self._loadMarkups, "SceneFile": self._loadScene}
        loader = loaders.get(fileType)
        if loader is None:
            messages.AddMessage(vtk.vtkCommand.ErrorEvent, "No reader found for file type '%s'" % fileType)
            return False
        if not fileName or (not os.path.exists(str(fileName)) and not properties.get("fileNames")):
            messages.AddMessage(vtk.vtkCommand.ErrorEvent, "File not found: %s" % fileName)
            logger.error("Failed to read file: %s", fileName)
            return False
        try:
            node = loader(str(fileName), properties)
        except RuntimeError as error:
            messages.AddMessage(vtk.vtkCommand.ErrorEvent, "Failed to read %s: %s" % (fileName, error))
            logger.error("Failed to read %s: %s", fileName, error)
            return False
        if loadedNodes is not None and node is not None:
            loadedNodes.AddItem(node)
        return True

    def _loadVolume(self, fileName: str, properties: dict) -> vtkMRMLVolumeNode:
        labelmap = _to_bool(properties.get("labelmap", False))
        image = read_image(fileName, _to_bool(properties.get("singleFile", False)), properties.get("fileNames"))
        array, ijkToRAS = image_to_array_and_ijk_to_ras(image)
        if _to_bool(properties.get("discardOrientation", False)):
            ijkToRAS[:3, :3] = geometry.F @ np.diag(np.linalg.norm(ijkToRAS[:3, :3], axis=0))
        # Slicer >= 5.8: ForceRightHandedIJKCoordinateSystem (sections 2 and 3).
        array, ijkToRAS = geometry.right_handed(array, ijkToRAS)
        if _to_bool(properties.get("center", False)):
            dims = np.array([array.shape[2], array.shape[1], array.shape[0]], dtype=float)
            ijkToRAS[:3, 3] -= (ijkToRAS @ np.append((dims - 1) / 2.0, 1.0))[:3]

        scene = self._scene
        components = array.shape[3] if array.ndim == 4 else 1
        if labelmap:
            node, display, colorID = vtkMRMLLabelMapVolumeNode(), vtkMRMLLabelMapVolumeDisplayNode(), \
                "vtkMRMLColorTableNodeFileGenericColors.txt"
        elif components > 1:
            node, display, colorID = vtkMRMLVectorVolumeNode(), vtkMRMLVectorVolumeDisplayNode(), None
        else:
            node, display, colorID = vtkMRMLScalarVolumeNode(), vtkMRMLScalarVolumeDisplayNode(), \
                "vtkMRMLColorTableNodeGrey"
        # The name, given or the text before the first dot, is made unique (AddArchetypeVolume).
        node.SetName(scene.GetUniqueNameByString(properties.get("name") or base_name(fileName)))
        storage = vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(fileName)
        scene.AddNode(storage)
        if colorID:
            display.SetAndObserveColorNodeID(colorID)
        if isinstance(display, vtkMRMLScalarVolumeDisplayNode) and not _to_bool(properties.get("autoWindowLevel", True)):
            display.AutoWindowLevelOff()
        scene.AddNode(display)
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.SetAndObserveDisplayNodeID(display.GetID())
        scene.AddNode(node)
        node.SetIJKToRASMatrix(_vtk_matrix(ijkToRAS))
        node.SetAndObserveImageData(new_image_data(np.ascontiguousarray(array)))
        if properties.get("colorNodeID"):
            display.SetAndObserveColorNodeID(properties["colorNodeID"])

        if _to_bool(properties.get("show", True)):
            selection = self._app.applicationLogic().GetSelectionNode()
            if selection is not None:
                if isinstance(node, vtkMRMLLabelMapVolumeNode):
                    selection.SetActiveLabelVolumeID(node.GetID())
                else:
                    selection.SetActiveVolumeID(node.GetID())
                # Background = active, foreground = SecondaryVolumeID (normally empty: the
                # foreground layer is cleared), label = active label, on every composite node.
                self._app.applicationLogic().PropagateVolumeSelection()
        return node

    def _loadSegmentation(self, fileName: str, properties: dict) -> vtkMRMLSegmentationNode:
        scene = self._scene
        image = read_image(fileName, singleFile=True)
        keys = set(image.GetMetaDataKeys())
        segmentation = vtkMRMLSegmentationNode()
        name = properties.get("name") or name_without_extension(
            fileName, SEGMENTATION_EXTENSIONS + VOLUME_EXTENSIONS)
        segmentation.SetName(scene.GetUniqueNameByString(name))
        storage = vtkMRMLSegmentationStorageNode()
        storage.SetFileName(fileName)
        scene.AddNode(storage)
        segmentation.SetAndObserveStorageNodeID(storage.GetID())
        scene.AddNode(segmentation)
        segmentation.CreateDefaultDisplayNodes()
        logic = vtkSlicerSegmentationsModuleLogic()
        if "Segment0_ID" in keys:
            self._readSegNrrd(image, keys, segmentation, logic)
            return segmentation
        # An image file is imported as a labelmap, one segment per label (section 1).
        array, ijkToRAS = image_to_array_and_ijk_to_ras(image)
        array, ijkToRAS = geometry.right_handed(array, ijkToRAS)
        labelmap = vtkMRMLLabelMapVolumeNode()
        labelmap.SetName(name)
        scene.AddNode(labelmap)
        labelmap.SetIJKToRASMatrix(_vtk_matrix(ijkToRAS))
        labelmap.SetAndObserveImageData(new_image_data(np.ascontiguousarray(array)))
        display = vtkMRMLLabelMapVolumeDisplayNode()
        display.SetAndObserveColorNodeID(properties.get("colorNodeID") or "vtkMRMLColorTableNodeFileGenericColors.txt")
        scene.AddNode(display)
        labelmap.SetAndObserveDisplayNodeID(display.GetID())
        ok = logic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        scene.RemoveNode(display)
        scene.RemoveNode(labelmap)
        if not ok:
            scene.RemoveNode(segmentation)
            raise RuntimeError("labelmap import failed")
        return segmentation

    @staticmethod
    def _readSegNrrd(image: sitk.Image, keys, segmentation: vtkMRMLSegmentationNode, logic) -> None:
        """A .seg.nrrd: one segment per ``Segment<i>_*`` header group (layer = component)."""
        array, ijkToRAS = image_to_array_and_ijk_to_ras(image)
        if array.ndim == 3:
            array = array[..., np.newaxis]
        # The image extent may start anywhere: Slicer writes the effective extent of the segments.
        extentKey = "Segmentation_ReferenceImageExtentOffset"
        offset = [int(v) for v in image.GetMetaData(extentKey).split()] if extentKey in keys else [0, 0, 0]
        shifted = ijkToRAS.copy()
        shifted[:3, 3] -= shifted[:3, :3] @ np.array(offset, dtype=float)
        shape = array.shape
        extent = (offset[0], offset[0] + shape[2] - 1, offset[1], offset[1] + shape[1] - 1,
                  offset[2], offset[2] + shape[0] - 1)
        layers = [_new_oriented(np.ascontiguousarray(array[..., c]), shifted, extent) for c in range(shape[3])]
        index = 0
        while "Segment%d_ID" % index in keys:
            prefix = "Segment%d_" % index

            def meta(key: str, default: str = "", prefix: str = prefix) -> str:
                return image.GetMetaData(prefix + key) if prefix + key in keys else default
            segment = vtkSegment()
            segment.SetName(meta("Name", meta("ID")))
            color = meta("Color")
            if color:
                segment.SetColor([float(v) for v in color.split()[:3]])
            segment.SetLabelValue(int(meta("LabelValue", "1")))
            segment.AddRepresentation(BINARY_LABELMAP, layers[int(meta("Layer", "0"))])
            segmentation.GetSegmentation().AddSegment(segment, meta("ID"))
            index += 1

    def _loadTable(self, fileName: str, properties: dict) -> vtkMRMLTableNode:
        scene = self._scene
        table = vtkMRMLTableNode()
        table.SetName(scene.GetUniqueNameByString(properties.get("name") or name_without_extension(fileName, TABLE_EXTENSIONS)))
        scene.AddNode(table)
        read_table(table, fileName)
        storage = vtkMRMLTableStorageNode()
        storage.SetFileName(fileName)
        scene.AddNode(storage)
        table.SetAndObserveStorageNodeID(storage.GetID())
        return table

    def _loadMarkups(self, fileName: str, properties: dict):
        scene = self._scene
        node = vtkMRMLMarkupsFiducialNode()
        node.SetName(scene.GetUniqueNameByString(properties.get("name") or name_without_extension(fileName, MARKUPS_EXTENSIONS)))
        read_markups_json(node, fileName)
        storage = vtkMRMLMarkupsFiducialStorageNode()
        storage.SetFileName(fileName)
        scene.AddNode(storage)
        scene.AddNode(node)
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.CreateDefaultDisplayNodes()
        return node

    def _loadScene(self, fileName: str, properties: dict):
        from .scene_io import load_scene_bundle

        load_scene_bundle(self._scene, fileName, self._app.temporaryPath)
        return None

    # -- saving ---------------------------------------------------------------------------
    def saveNodes(self, fileType: str, properties: dict, userMessages: Optional[vtkMRMLMessageCollection] = None) -> bool:
        """Writes one node; on any failure logs an error and returns False (never raises)."""
        messages = userMessages if userMessages is not None else vtkMRMLMessageCollection()
        node = self._scene.GetNodeByID(properties.get("nodeID"))
        fileName = properties.get("fileName")
        writers = {"VolumeFile": self._saveVolume, "SegmentationFile": self._saveSegmentation,
                   "TableFile": self._saveTable, "MarkupsFile": self._saveMarkups}
        try:
            if fileType == "SceneFile":
                from .scene_io import save_scene_bundle

                save_scene_bundle(self._scene, str(fileName), self)
                return True
            if node is None:
                raise RuntimeError("node %s is not in the scene" % properties.get("nodeID"))
            if fileType not in writers:
                raise RuntimeError("no writer for file type '%s'" % fileType)
            writers[fileType](node, str(fileName), properties)
        except Exception as error:  # Slicer reports any writer failure as False
            messages.AddMessage(vtk.vtkCommand.ErrorEvent, str(error))
            logger.error("Failed to save node %s to %s: %s", properties.get("nodeID"), fileName, error)
            return False
        return True

    @staticmethod
    def _updateStorage(node, fileName: str, storageClass) -> None:
        storage = node.GetStorageNode()
        if storage is None and node.GetScene() is not None:
            storage = storageClass()
            node.GetScene().AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        if storage is not None:
            storage.SetFileName(fileName)

    def _saveVolume(self, node, fileName: str, properties: dict) -> None:
        if not isinstance(node, vtkMRMLVolumeNode) or node.GetImageData() is None:
            raise RuntimeError("not a volume node with image data")
        imageData = node.GetImageData()
        components = imageData.GetNumberOfScalarComponents()
        array = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
        shape = tuple(reversed(imageData.GetDimensions())) + ((components,) if components > 1 else ())
        image = sitk.GetImageFromArray(array.reshape(shape), isVector=components > 1)
        origin, spacing, direction = geometry.sitk_geometry_from_ijk_to_ras(_node_matrix(node))
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        sitk.WriteImage(image, fileName, True)
        self._updateStorage(node, fileName, vtkMRMLVolumeArchetypeStorageNode)

    def _saveSegmentation(self, node, fileName: str, properties: dict) -> None:
        """A 3-D .seg.nrrd with Segment<i>_* header fields, label values kept (one layer)."""
        if not isinstance(node, vtkMRMLSegmentationNode):
            raise RuntimeError("not a segmentation node")
        if not fileName.lower().endswith(SEGMENTATION_EXTENSIONS + (".nrrd",)):
            raise RuntimeError("segmentations are written as .seg.nrrd")
        segmentation = node.GetSegmentation()
        ids = segmentation.GetSegmentIDs()
        layers = {id(segmentation.GetSegment(s).GetRepresentation(BINARY_LABELMAP)) for s in ids}
        if len(layers) != 1:
            raise RuntimeError("the stand-in writes segmentations whose segments share one labelmap")
        labelmap = segmentation.GetSegment(ids[0]).GetRepresentation(BINARY_LABELMAP)
        voxels = np.zeros_like(_image_array(labelmap))
        for segmentId in ids:
            value = segmentation.GetSegment(segmentId).GetLabelValue()
            voxels[_image_array(labelmap) == value] = value
        extent = labelmap.GetExtent()
        ijkToRAS = _image_to_world(labelmap)
        start = ijkToRAS @ np.array([extent[0], extent[2], extent[4], 1.0])
        ijkToRAS[:3, 3] = start[:3]
        image = sitk.GetImageFromArray(voxels)
        origin, spacing, direction = geometry.sitk_geometry_from_ijk_to_ras(ijkToRAS)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "%d %d %d" % (extent[0], extent[2], extent[4]))
        image.SetMetaData("Segmentation_MasterRepresentation", BINARY_LABELMAP)
        for index, segmentId in enumerate(ids):
            segment = segmentation.GetSegment(segmentId)
            prefix = "Segment%d_" % index
            image.SetMetaData(prefix + "ID", segmentId)
            image.SetMetaData(prefix + "Name", segment.GetName())
            image.SetMetaData(prefix + "Color", " ".join("%g" % c for c in segment.GetColor()))
            image.SetMetaData(prefix + "LabelValue", str(segment.GetLabelValue()))
            image.SetMetaData(prefix + "Layer", "0")
        sitk.WriteImage(image, fileName, True)
        self._updateStorage(node, fileName, vtkMRMLSegmentationStorageNode)

    def _saveTable(self, node, fileName: str, properties: dict) -> None:
        if not isinstance(node, vtkMRMLTableNode):
            raise RuntimeError("not a table node")
        delimiter = "\t" if fileName.lower().endswith(".tsv") else ","
        with open(fileName, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow([node.GetColumnName(c) for c in range(node.GetNumberOfColumns())])
            for r in range(node.GetNumberOfRows()):
                writer.writerow([node.GetCellText(r, c) for c in range(node.GetNumberOfColumns())])
        self._updateStorage(node, fileName, vtkMRMLTableStorageNode)

    def _saveMarkups(self, node, fileName: str, properties: dict) -> None:
        if not isinstance(node, vtkMRMLMarkupsNode) or not fileName.lower().endswith(MARKUPS_EXTENSIONS):
            raise RuntimeError("markups are written as .mrk.json")
        write_markups_json(node, fileName)
        self._updateStorage(node, fileName, vtkMRMLMarkupsFiducialStorageNode)


def read_table(table: vtkMRMLTableNode, fileName: str) -> None:
    """Columns of a .csv/.tsv into ``table``, all as string columns."""
    delimiter = "\t" if fileName.lower().endswith(".tsv") else ","
    with open(fileName, newline="") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    for col, title in enumerate(header):
        column = vtk.vtkStringArray()
        column.SetName(title)
        for row in body:
            column.InsertNextValue(row[col] if col < len(row) else "")
        table.AddColumn(column)


def read_volume_into(node: vtkMRMLVolumeNode, fileName: str) -> None:
    """Voxels and IJK-to-RAS of a volume file into an existing node (a scene's storage read)."""
    array, ijkToRAS = image_to_array_and_ijk_to_ras(read_image(fileName, singleFile=True))
    array, ijkToRAS = geometry.right_handed(array, ijkToRAS)
    node.SetIJKToRASMatrix(_vtk_matrix(ijkToRAS))
    node.SetAndObserveImageData(new_image_data(np.ascontiguousarray(array)))
