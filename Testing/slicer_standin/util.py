"""``slicer.util`` as described in slicer-api.md section 1.

install() executes this file afresh as the module ``slicer.util`` each time, so the mutable
default ``properties={}`` dicts behave as in Slicer within one install and do not leak into the
next. Quirks kept on purpose are marked with the section they come from.
"""
from __future__ import annotations

import collections
import fnmatch
import logging
import os
import sys
import warnings
from contextlib import contextmanager

import numpy as np
import vtk
import vtk.util.numpy_support

EXIT_SUCCESS = 0
EXIT_FAILURE = 1

# ``_standin`` (the slicer_standin package) is injected by install() before this file runs.
StandInLimitation = _standin.errors.StandInLimitation  # type: ignore[name-defined]  # noqa: F821


class MRMLNodeNotFoundException(Exception):
    """Raised by getNode when no node matches."""


# -- application ------------------------------------------------------------------------------
def exit(status=EXIT_SUCCESS):
    import slicer

    slicer.app.commandOptions().runPythonAndExit = False
    slicer.app.exit(status)


def quit():
    exit(EXIT_SUCCESS)


def mainWindow(verbose=True):
    # --no-main-window: there is none.
    if verbose:
        print("Failed to obtain reference to 'qSlicerMainWindow'", file=sys.stderr)
    return None


def showStatusMessage(message, duration=0):
    return False


def findChildren(widget=None, name="", text="", title="", className=""):
    return []


def findChild(widget, name):
    raise RuntimeError("Widget named " + str(name) + " does not exists.")


def loadUI(path):
    """RuntimeError for a missing file, as in Slicer; building widgets needs Qt (stand-in limit)."""
    if not os.path.exists(str(path)):
        raise RuntimeError("Could not load UI file: file not found " + str(path) + "\n\n")
    raise StandInLimitation("slicer_standin has no Qt: cannot build widgets from " + str(path))


def childWidgetVariables(widget):
    ui = type("", (), {})()
    for child in findChildren(widget):
        if getattr(child, "name", ""):
            setattr(ui, child.name, child)
    return ui


def toBool(value):
    try:
        return bool(int(value))
    except (ValueError, TypeError):
        return value.lower() in ["true"] if isinstance(value, str) else bool(value)


def settingsValue(key, default, converter=lambda v: v, settings=None):
    import slicer

    store = slicer.app._settings if settings is None else settings
    return converter(store[key]) if key in store else default


def resetSliceViews():
    import slicer

    slicer.app.layoutManager().resetSliceViews()  # AttributeError without a layout manager, as in Slicer


def resetThreeDViews():
    import slicer

    slicer.app.layoutManager().resetThreeDViews()


# -- modules ----------------------------------------------------------------------------------
def getModule(moduleName):
    import slicer

    module = slicer.app.moduleManager().module(moduleName)
    if not module:
        print("Could not find module with name '%s'" % moduleName, file=sys.stderr)
        return None
    return module


def modulePath(moduleName):
    import slicer

    return getattr(slicer.modules, moduleName.lower()).path


def getModuleGui(module):
    raise StandInLimitation("module GUIs need Qt (section 7: use the logic class directly)")


getModuleWidget = getModuleGui


def getModuleLogic(module):
    """C++ modules give module.logic(); scripted modules would instantiate the GUI in Slicer."""
    import slicer

    if isinstance(module, str):
        module = getModule(module)
    if module is None:
        return None
    if hasattr(slicer.modules, module.name + "Instance"):
        raise StandInLimitation("getModuleLogic on a scripted module instantiates its widget (section 7); "
                                "create the Logic class directly instead")
    return module.logic()


def selectModule(module):
    print("Could not find moduleSelector in the main window", file=sys.stderr)
    return None


# -- IO (section 1 "Loading and saving") ------------------------------------------------------
def loadNodeFromFile(filename, filetype=None, properties={}, returnNode=False):  # noqa: B006 (section 1)
    import slicer

    # Writes into the caller's dict (or this shared default dict): section 1.
    properties["fileName"] = str(filename)
    if filetype is None:
        filetype = slicer.app.coreIOManager().fileType(filename)
    loadedNodesCollection = vtk.vtkCollection()
    userMessages = slicer.vtkMRMLMessageCollection()
    success = slicer.app.coreIOManager().loadNodes(filetype, properties, loadedNodesCollection, userMessages)
    loadedNode = loadedNodesCollection.GetItemAsObject(0) if loadedNodesCollection.GetNumberOfItems() > 0 else None
    if returnNode:
        logging.warning("loadNodeFromFile `returnNode` argument is deprecated. Loaded node is now returned "
                        "directly if `returnNode` is not specified.")
        return success, loadedNode
    if not success:
        errorMessage = "Failed to load node from file: " + str(filename)
        if userMessages.GetNumberOfMessages() > 0:
            errorMessage += "\n" + userMessages.GetAllMessagesAsString()
        raise RuntimeError(errorMessage)
    return loadedNode


def loadNodesFromFile(filename, filetype=None, properties={}, returnNode=False):  # noqa: B006
    node = loadNodeFromFile(filename, filetype, properties)
    return iter([node])


def loadVolume(filename, properties={}, returnNode=False):  # noqa: B006 (shared on purpose)
    return loadNodeFromFile(filename, "VolumeFile", properties, returnNode)


def loadLabelVolume(filename, properties={}, returnNode=False):  # noqa: B006
    properties["labelmap"] = True
    return loadNodeFromFile(filename, "VolumeFile", properties, returnNode)


def loadSegmentation(filename, properties={}, returnNode=False):  # noqa: B006
    return loadNodeFromFile(filename, "SegmentationFile", properties, returnNode)


def loadTable(filename):
    return loadNodeFromFile(filename, "TableFile")


def loadMarkups(filename):
    """A point list from a .mrk.json file."""
    return loadNodeFromFile(filename, "MarkupsFile")


def loadScene(filename, properties={}):  # noqa: B006
    """Adds a saved scene (.mrb) to the current scene; returns None, raises on failure."""
    return loadNodeFromFile(filename, "SceneFile", properties)


def saveScene(filename, properties={}):  # noqa: B006
    """Saves the whole scene as a .mrb bundle; False on failure. Hidden storable nodes (e.g. a
    colour table left HideFromEditors) are written without their data (see scene_io)."""
    import slicer

    properties["fileName"] = str(filename)
    return slicer.app.coreIOManager().saveNodes("SceneFile", properties)


def saveNode(node, filename, properties={}):  # noqa: B006
    """Returns False on a failed write instead of raising (section 1)."""
    import slicer

    properties["nodeID"] = node.GetID()
    properties["fileName"] = str(filename)
    # Quirk kept from Slicer: hasattr() on a dict is never true for a key, so "fileType" is ignored.
    if hasattr(properties, "fileType"):
        filetype = properties["fileType"]
    else:
        filetype = slicer.app.coreIOManager().fileWriterFileType(node)
    return slicer.app.coreIOManager().saveNodes(filetype, properties)


# -- nodes (section 1 "Finding nodes and views") ---------------------------------------------
def getNodes(pattern="*", scene=None, useLists=False):
    import slicer

    nodes = collections.OrderedDict()
    if scene is None:
        scene = slicer.mrmlScene
    for idx in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(idx)
        name = node.GetName()
        nodeID = node.GetID()
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(nodeID, pattern):
            if useLists:
                nodes.setdefault(name, []).append(node)
            else:
                nodes[name] = node  # keyed by name: the *last* node of a duplicated name wins
    return nodes


def getNode(pattern="*", index=0, scene=None):
    nodes = getNodes(pattern, scene)
    if not nodes:
        raise MRMLNodeNotFoundException("could not find nodes in the scene by name or id '%s'"
                                        % (pattern if isinstance(pattern, str) else ""))
    return list(nodes.values())[index]


def getNodesByClass(className, scene=None):
    import slicer

    if scene is None:
        scene = slicer.mrmlScene
    nodes = scene.GetNodesByClass(className)
    nodes.UnRegister(scene)
    nodeList = []
    nodes.InitTraversal()
    node = nodes.GetNextItemAsObject()
    while node:
        nodeList.append(node)
        node = nodes.GetNextItemAsObject()
    return nodeList


def getFirstNodeByClassByName(className, name, scene=None):
    import slicer

    if scene is None:
        scene = slicer.mrmlScene
    return scene.GetFirstNode(name, className)


def getFirstNodeByName(name, className=None):
    import slicer

    return slicer.mrmlScene.GetFirstNode(name, className, False, False)


class NodeModify:
    def __init__(self, node):
        self.node = node

    def __enter__(self):
        self.wasModifying = self.node.StartModify()
        return self.node

    def __exit__(self, type, value, traceback):
        self.node.EndModify(self.wasModifying)


def setSliceViewerLayers(background="keep-current", foreground="keep-current", label="keep-current",
                         foregroundOpacity=None, labelOpacity=None, fit=False, rotateToVolumePlane=False):
    """Acts on every vtkMRMLSliceCompositeNode; ``fit`` needs a layout manager (none here)."""
    import slicer

    def _nodeID(nodeOrID):
        return nodeOrID.GetID() if isinstance(nodeOrID, slicer.vtkMRMLNode) else nodeOrID

    num = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(num):
        sliceViewer = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if background != "keep-current":
            sliceViewer.SetBackgroundVolumeID(_nodeID(background))
        if foreground != "keep-current":
            sliceViewer.SetForegroundVolumeID(_nodeID(foreground))
        if foregroundOpacity is not None:
            sliceViewer.SetForegroundOpacity(foregroundOpacity)
        if label != "keep-current":
            sliceViewer.SetLabelVolumeID(_nodeID(label))
        if labelOpacity is not None:
            sliceViewer.SetLabelOpacity(labelOpacity)

    # Both need slice logics from the layout manager; with --no-main-window there is none, so
    # they are silently skipped (section 1: "probably a silent no-op").
    if (fit or rotateToVolumePlane) and slicer.app.layoutManager() is not None:
        raise StandInLimitation("fit/rotateToVolumePlane need slice widgets")


# -- arrays (section 1 "Arrays") --------------------------------------------------------------
def arrayFromVolume(volumeNode):
    """A live (K, J, I) view of the voxels: no copy; the class test is an exact name match."""
    scalarTypes = ["vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode"]
    vectorTypes = ["vtkMRMLVectorVolumeNode", "vtkMRMLMultiVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode"]
    tensorTypes = ["vtkMRMLDiffusionTensorVolumeNode"]
    vimage = volumeNode.GetImageData()
    nshape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))  # AttributeError without image
    narray = None
    if volumeNode.GetClassName() in scalarTypes:
        narray = vtk.util.numpy_support.vtk_to_numpy(vimage.GetPointData().GetScalars()).reshape(nshape)
    elif volumeNode.GetClassName() in vectorTypes:
        components = vimage.GetNumberOfScalarComponents()
        if components > 1:
            nshape = nshape + (components,)
        narray = vtk.util.numpy_support.vtk_to_numpy(vimage.GetPointData().GetScalars()).reshape(nshape)
    elif volumeNode.GetClassName() in tensorTypes:
        narray = vtk.util.numpy_support.vtk_to_numpy(vimage.GetPointData().GetTensors()).reshape(nshape + (3, 3))
    else:
        raise RuntimeError("Unsupported volume type: " + volumeNode.GetClassName())
    return narray


def arrayFromVolumeModified(volumeNode):
    imageData = volumeNode.GetImageData()
    pointData = imageData.GetPointData() if imageData else None
    if pointData:
        if pointData.GetScalars():
            pointData.GetScalars().Modified()
        if pointData.GetTensors():
            pointData.GetTensors().Modified()
    volumeNode.Modified()


def _vtkArrayTypeAsInSlicer(dtype):
    """get_vtk_array_type as VTK 9.2-9.6 (Slicer's builds) answer it.

    pip vtk 9.7 maps int64 to VTK_LONG on Linux, so Slicer's "long long" rejection would not
    trigger here: int64 is mapped to VTK_LONG_LONG explicitly (section 1, MUST item 2).
    """
    vtype = vtk.util.numpy_support.get_vtk_array_type(dtype)  # TypeError for bool, float16, torch
    if np.dtype(dtype) == np.dtype(np.int64):
        return vtk.VTK_LONG_LONG
    return vtype


def updateVolumeFromArray(volumeNode, narray):
    """Deep copy into the node's image; 1-D/2-D input becomes float64; 4-D is components-last."""
    import slicer

    vshape = tuple(reversed(narray.shape))
    if len(vshape) == 1:
        narray3d = np.zeros([1, 1, narray.shape[0]])  # float64: the input dtype is lost
        narray3d[0, 0, :] = narray
        narray = narray3d
        vshape = tuple(reversed(narray.shape))
        vcomponents = 1
    elif len(vshape) == 2:
        narray3d = np.zeros([1, narray.shape[0], narray.shape[1]])
        narray3d[0, :, :] = narray
        narray = narray3d
        vshape = tuple(reversed(narray.shape))
        vcomponents = 1
    elif len(vshape) == 3:
        vcomponents = 1
    elif len(vshape) == 4:
        vcomponents = vshape[0]
        vshape = vshape[1:4]
    else:
        raise RuntimeError("Unsupported numpy array shape: " + str(narray.shape))

    vimage = volumeNode.GetImageData()
    if not vimage:
        vimage = vtk.vtkImageData()
        volumeNode.SetAndObserveImageData(vimage)
    vtype = _vtkArrayTypeAsInSlicer(narray.dtype)
    if vtype == vtk.VTK_LONG_LONG:
        raise RuntimeError("Unsupported numpy array type: long long")

    vimage.SetDimensions(vshape)
    vimage.AllocateScalars(vtype, vcomponents)
    narrayTarget = arrayFromVolume(volumeNode)
    narrayTarget[:] = narray

    volumeNode.StorableModified()
    volumeNode.Modified()
    volumeNode.InvokeEvent(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, volumeNode)


def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    """Name not made unique; a labelmap's integer type is not enforced (section 1)."""
    import slicer

    if name is None:
        name = ""
    if nodeClassName is None:
        nodeClassName = "vtkMRMLScalarVolumeNode"
    volumeNode = slicer.mrmlScene.AddNewNodeByClass(nodeClassName, name)
    if ijkToRAS is not None:
        if not isinstance(ijkToRAS, vtk.vtkMatrix4x4):
            ijkToRAS = vtkMatrixFromArray(ijkToRAS)  # needs .shape: a plain list fails
        volumeNode.SetIJKToRASMatrix(ijkToRAS)  # a vtkMatrix3x3 (from a 3x3 array) fails here
    updateVolumeFromArray(volumeNode, narray)
    volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


def arrayFromVTKMatrix(vmatrix):
    if isinstance(vmatrix, vtk.vtkMatrix4x4):
        matrixSize = 4
    elif isinstance(vmatrix, vtk.vtkMatrix3x3):
        matrixSize = 3
    else:
        raise RuntimeError("Input must be vtk.vtkMatrix3x3 or vtk.vtkMatrix4x4")
    narray = np.eye(matrixSize)
    vmatrix.DeepCopy(narray.ravel(), vmatrix)
    return narray


def vtkMatrixFromArray(narray):
    narrayshape = narray.shape
    if narrayshape == (4, 4):
        vmatrix = vtk.vtkMatrix4x4()
        updateVTKMatrixFromArray(vmatrix, narray)
        return vmatrix
    if narrayshape == (3, 3):
        vmatrix = vtk.vtkMatrix3x3()
        updateVTKMatrixFromArray(vmatrix, narray)
        return vmatrix
    raise RuntimeError("Unsupported numpy array shape: " + str(narrayshape) + " expected (4,4)")


def updateVTKMatrixFromArray(vmatrix, narray):
    if isinstance(vmatrix, vtk.vtkMatrix4x4):
        matrixSize = 4
    elif isinstance(vmatrix, vtk.vtkMatrix3x3):
        matrixSize = 3
    else:
        raise RuntimeError("Output vmatrix must be vtk.vtkMatrix3x3 or vtk.vtkMatrix4x4")
    if narray.shape != (matrixSize, matrixSize):
        raise RuntimeError("Input narray size must match output vmatrix size ({0}x{0})".format(matrixSize))
    vmatrix.DeepCopy(np.asarray(narray, dtype=float).ravel())


def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode=None):
    """A copy of the segment's 0/1 mask, (K, J, I); in the reference volume's grid if given."""
    import slicer

    resample_mask_to_reference = _standin.segmentations.resample_mask_to_reference  # noqa: F821

    vimage = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, vimage):
        return None
    if referenceVolumeNode is not None:
        m = vtk.vtkMatrix4x4()
        referenceVolumeNode.GetIJKToRASMatrix(m)
        # The reference grid in the segmentation's local coordinates, through both parent transforms.
        ref = np.linalg.inv(segmentationNode._toWorld()) @ referenceVolumeNode._toWorld() @ np.array(
            [[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        return resample_mask_to_reference(vimage, ref, referenceVolumeNode.GetImageData().GetDimensions())
    nshape = tuple(reversed(vimage.GetDimensions()))
    return vtk.util.numpy_support.vtk_to_numpy(vimage.GetPointData().GetScalars()).reshape(nshape).copy()


def arrayFromMarkupsControlPoints(markupsNode, world=False):
    """An N x 3 copy of the control point positions (local RAS, or world with ``world=True``)."""
    numberOfControlPoints = markupsNode.GetNumberOfControlPoints()
    narray = np.zeros([numberOfControlPoints, 3])
    for controlPointIndex in range(numberOfControlPoints):
        if world:
            markupsNode.GetNthControlPointPositionWorld(controlPointIndex, narray[controlPointIndex, :])
        else:
            markupsNode.GetNthControlPointPosition(controlPointIndex, narray[controlPointIndex, :])
    return narray


def updateMarkupsControlPointsFromArray(markupsNode, narray, world=False):
    """Sets the control points from an N x 3 array: moves, adds or removes points as needed."""
    narrayshape = narray.shape
    if narrayshape == (0,):
        markupsNode.RemoveAllControlPoints()
        return
    if len(narrayshape) != 2 or narrayshape[1] != 3:
        raise RuntimeError("Unsupported numpy array shape: " + str(narrayshape) + " expected (N,3)")
    numberOfControlPoints = narrayshape[0]
    oldNumberOfControlPoints = markupsNode.GetNumberOfControlPoints()
    wasModify = markupsNode.StartModify()
    for controlPointIndex in range(min(numberOfControlPoints, oldNumberOfControlPoints)):
        if world:
            markupsNode.SetNthControlPointPositionWorld(controlPointIndex, narray[controlPointIndex, :])
        else:
            markupsNode.SetNthControlPointPosition(controlPointIndex, narray[controlPointIndex, :])
    if numberOfControlPoints >= oldNumberOfControlPoints:
        for controlPointIndex in range(oldNumberOfControlPoints, numberOfControlPoints):
            if world:
                markupsNode.AddControlPointWorld(vtk.vtkVector3d(narray[controlPointIndex, :]))
            else:
                markupsNode.AddControlPoint(vtk.vtkVector3d(narray[controlPointIndex, :]))
    else:
        for controlPointIndex in range(oldNumberOfControlPoints, numberOfControlPoints, -1):
            markupsNode.RemoveNthControlPoint(controlPointIndex - 1)
    markupsNode.EndModify(wasModify)


def arrayFromTableColumn(tableNode, columnName):
    columnData = tableNode.GetTable().GetColumnByName(columnName)
    return vtk.util.numpy_support.vtk_to_numpy(columnData)


def arrayFromTableColumnModified(tableNode, columnName):
    tableNode.GetTable().GetColumnByName(columnName).Modified()
    tableNode.GetTable().Modified()


def updateTableFromArray(tableNode, narrays, columnNames=None):
    import slicer

    if tableNode is None:
        tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    if isinstance(narrays, np.ndarray) and len(narrays.shape) == 1:
        ncolumns = [narrays]
    elif isinstance(narrays, np.ndarray) and len(narrays.shape) == 2:
        ncolumns = narrays.T
    elif isinstance(narrays, (tuple, list)):
        ncolumns = narrays
    else:
        raise ValueError("Expected narrays is a numpy ndarray, or tuple or list of numpy ndarrays, got %s instead."
                         % (str(type(narrays))))
    tableNode.RemoveAllColumns()
    if columnNames is None:
        columnNames = []
    if isinstance(columnNames, str):
        columnNames = [columnNames]
    for columnIndex, ncolumn in enumerate(ncolumns):
        vcolumn = vtk.util.numpy_support.numpy_to_vtk(num_array=np.asarray(ncolumn).ravel(), deep=True,
                                                      array_type=vtk.VTK_FLOAT)
        if columnIndex < len(columnNames):
            vcolumn.SetName(columnNames[columnIndex])
        tableNode.AddColumn(vcolumn)
    return tableNode


# -- dialogs (section 1 "Dialogs, packages and observers") -----------------------------------
def _messageDisplay(logLevel, text, testingReturnValue, mainWindowNeeded=False, kind="", **kwargs):
    import slicer

    logging.log(logLevel, text)  # always logged first
    if slicer.app.testingEnabled():
        return testingReturnValue  # no dialog in testing mode
    if mainWindowNeeded and mainWindow(verbose=False) is None:
        return None
    # A modal QMessageBox, even without a main window: it would block a headless run.
    responder = slicer.app.dialogResponder
    if responder is None:
        raise _standin.errors.ModalDialogWouldBlock(  # noqa: F821
            "%s would show a modal dialog outside testing mode: %s" % (kind, text))
    return responder(kind, text)


def infoDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    _messageDisplay(logging.INFO, text, None, mainWindowNeeded=True, kind="infoDisplay")


def warningDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    _messageDisplay(logging.WARNING, text, None, mainWindowNeeded=True, kind="warningDisplay")


def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    _messageDisplay(logging.ERROR, text, None, mainWindowNeeded=True, kind="errorDisplay")


def _confirmed(kind, text):
    """Slicer passes testingReturnValue=True, then returns ``result == qt.QMessageBox.Ok``;
    True == 0x400 is False, so under --testing the answer is **False** (slicer-api.md section 1)."""
    import slicer

    result = _messageDisplay(logging.INFO, text, True, kind=kind)
    if slicer.app.testingEnabled():
        return False
    return bool(result)


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
    return _confirmed("confirmOkCancelDisplay", text)


def confirmYesNoDisplay(text, windowTitle=None, parent=None, **kwargs):
    return _confirmed("confirmYesNoDisplay", text)  # the same flaw: False under --testing


def confirmRetryCloseDisplay(text, windowTitle=None, parent=None, **kwargs):
    return _messageDisplay(logging.ERROR, text, False, kind="confirmRetryCloseDisplay")


def messageBox(text, parent=None, **kwargs):
    return _messageDisplay(logging.INFO, text, None, kind="messageBox")


def delayDisplay(message, autoCloseMsec=1000, parent=None, **kwargs):
    # Logged; the short-lived popup of Slicer needs Qt.
    logging.info(message)


class _ProgressDialog:
    """Stand-in for the QProgressDialog of createProgressDialog (attributes only)."""

    def __init__(self, value=0, maximum=100, labelText="", windowTitle="Processing...", **kwargs):
        self.value, self.maximum, self.labelText, self.windowTitle = value, maximum, labelText, windowTitle
        self.wasCanceled = False
        self.minimumDuration = 0
        for key, val in kwargs.items():
            setattr(self, key, val)

    def show(self):
        pass

    def close(self):
        pass

    def setValue(self, value):
        self.value = value

    def setLabelText(self, text):
        self.labelText = text


def createProgressDialog(parent=None, value=0, maximum=100, labelText="", windowTitle="Processing...", **kwargs):
    return _ProgressDialog(value, maximum, labelText, windowTitle, **kwargs)


@contextmanager
def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
    """Shows the error (errorDisplay, which only logs in testing) and re-raises it."""
    import slicer

    try:
        yield
    except Exception as e:
        if show and not slicer.app.testingEnabled():
            errorDisplay("%s\n\n%s" % (message, e) if message is not None else str(e))
        raise


# -- packages ---------------------------------------------------------------------------------
def pip_install(requirements):
    """Recorded in ``slicer.app.pipRequests``, never run: tests must not install packages."""
    import slicer

    slicer.app.pipRequests.append(requirements)


def _executePythonModule(module, args):
    """``PythonSlicer -m <module> <args>`` in Slicer (private, but what pip_install and PyTorchUtils
    use); recorded as ``("-m", module, args)`` in ``slicer.app.pipRequests``, never run."""
    import slicer

    slicer.app.pipRequests.append(("-m", module, list(args)))


def pip_uninstall(requirements):
    import slicer

    slicer.app.pipRequests.append(("uninstall", requirements))


def tempDirectory(key="__SlicerTemp__", tempDir=None, includeDateTime=True):
    import datetime
    import slicer

    name = key + (datetime.datetime.now().strftime("%Y-%m-%d_%H+%M+%S.%f")[:-3] if includeDateTime else "")
    path = os.path.join(tempDir or slicer.app.temporaryPath, name)
    os.makedirs(path, exist_ok=True)
    return path


# -- observers --------------------------------------------------------------------------------
class VTKObservationMixin:
    """{obj: {event: {method: (group, tag, priority)}}}; a duplicate only warns (section 1)."""

    def __init__(self):
        super().__init__()
        self.__observations = {}

    @property
    def Observations(self):
        return [(obj, event, method, group, tag, priority)
                for obj, events in self.__observations.items()
                for event, methods in events.items()
                for method, (group, tag, priority) in methods.items()]

    def removeObservers(self, method=None):
        for obj, events in list(self.__observations.items()):
            for methods in list(events.values()):
                for m in list(methods):
                    if method is None or m == method:
                        group, tag, priority = methods.pop(m)
                        obj.RemoveObserver(tag)
        if method is None:
            self.__observations.clear()

    def addObserver(self, obj, event, method, group="none", priority=0.0):
        events = self.__observations.setdefault(obj, {})
        methods = events.setdefault(event, {})
        if method in methods:
            warnings.warn("already has observer", stacklevel=2)
            return
        tag = obj.AddObserver(event, method, priority)
        methods[method] = (group, tag, priority)

    def removeObserver(self, obj, event, method):
        try:
            group, tag, priority = self.__observations[obj][event].pop(method)
        except KeyError:
            warnings.warn("does not have observer", stacklevel=2)
            return
        obj.RemoveObserver(tag)

    def getObserver(self, obj, event, method, default=None):
        try:
            return self.__observations[obj][event][method]
        except KeyError:
            return default

    def hasObserver(self, obj, event, method):
        return self.getObserver(obj, event, method) is not None

    def observer(self, event, method, default=None):
        for obj in self.__observations:
            if self.hasObserver(obj, event, method):
                return obj
        return default
