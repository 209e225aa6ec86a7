"""``slicer.app`` and ``slicer.modules`` of a ``Slicer --no-main-window`` session (slicer-api.md section 7).

There is no layout manager (``layoutManager()`` is None: only qSlicerMainWindow creates it), no
main window and no widgets. The slice composite nodes of the Red/Yellow/Green views are still
created by default so that layer changes can be observed; pass ``slice_views=()`` to install()
for a scene without them.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Callable, Dict, Optional, Sequence

from .fileio import qSlicerCoreIOManager
from .mrml_core import vtkMRMLScene
from .mrml_misc import vtkMRMLSelectionNode, vtkMRMLSliceCompositeNode
from .segmentations import vtkSlicerSegmentationsModuleLogic

logger = logging.getLogger("slicer_standin")


class qSlicerCommandOptions:
    def __init__(self, testing: bool) -> None:
        self.testingEnabled = testing
        self.noMainWindow = True
        self.noSplash = True
        self.runPythonAndExit = testing
        self.pythonScript = ""
        self.pythonCode = ""
        self.additionalModulePaths: list = []
        self.disableCLIModules = False
        self.disableScriptedLoadableModules = False
        self.settingsDisabled = testing


class vtkSlicerApplicationLogic:
    """Selection node and PropagateVolumeSelection (S:Libs/MRML/Logic/vtkMRMLApplicationLogic.cxx)."""

    BackgroundLayer, ForegroundLayer, LabelLayer = 1, 2, 4

    def __init__(self, app: "qSlicerApplication") -> None:
        self._app = app
        self.fitCount = 0

    def GetSelectionNode(self) -> Optional[vtkMRMLSelectionNode]:
        node = self._app.mrmlScene().GetSingletonNode("Singleton", "vtkMRMLSelectionNode")
        return node  # type: ignore[return-value]

    def PropagateVolumeSelection(self, *args) -> None:
        """``PropagateVolumeSelection(fit=1)`` or ``PropagateVolumeSelection(layers, fit)``."""
        layers, fit = self.BackgroundLayer | self.ForegroundLayer | self.LabelLayer, 1
        if len(args) == 1:
            fit = args[0]
        elif len(args) == 2:
            layers, fit = args
        selection = self.GetSelectionNode()
        if selection is None:
            return
        scene = self._app.mrmlScene()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            if not composite.GetDoPropagateVolumeSelection():
                continue
            if layers & self.BackgroundLayer:
                composite.SetBackgroundVolumeID(selection.GetActiveVolumeID())
            if layers & self.ForegroundLayer:
                composite.SetForegroundVolumeID(selection.GetSecondaryVolumeID())
            if layers & self.LabelLayer:
                composite.SetLabelVolumeID(selection.GetActiveLabelVolumeID())
        if fit:
            self.FitSliceToAll()

    def PropagateBackgroundVolumeSelection(self, fit: int = 1) -> None:
        self.PropagateVolumeSelection(self.BackgroundLayer, fit)

    def PropagateForegroundVolumeSelection(self, fit: int = 1) -> None:
        self.PropagateVolumeSelection(self.ForegroundLayer, fit)

    def PropagateLabelVolumeSelection(self, fit: int = 1) -> None:
        self.PropagateVolumeSelection(self.LabelLayer, fit)

    def FitSliceToAll(self, *args) -> None:
        # No slice views to fit in a headless session; counted so tests can see the request.
        self.fitCount += 1


class _LoadableModule:
    """A C++ loadable module as seen from Python (``slicer.modules.<name>``)."""

    def __init__(self, name: str, logicFactory: Callable[[], object]) -> None:
        self.name = name
        self.title = name
        self.path = ""
        self._logic = logicFactory()

    def logic(self):
        return self._logic

    def widgetRepresentation(self):
        return None


class ModuleParent:
    """The qSlicerScriptedLoadableModule a scripted module's class receives as ``parent``."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.title = ""
        self.categories: list = []
        self.dependencies: list = []
        self.contributors: list = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.icon = None
        self.hidden = False
        self._logic = object()

    def logic(self):
        return self._logic

    def widgetRepresentation(self):
        # Widgets need Qt; the stand-in runs the no-main-window, logic-only path.
        return None


class _Modules:
    """``slicer.modules``: attribute access like Slicer's module namespace."""

    def __init__(self) -> None:
        self.segmentations = _LoadableModule("Segmentations", vtkSlicerSegmentationsModuleLogic)


class qSlicerModuleManager:
    def __init__(self, modules: _Modules) -> None:
        self._modules = modules

    def connect(self, *args) -> bool:
        return True

    def disconnect(self, *args) -> bool:
        return True

    def module(self, name: str):
        return getattr(self._modules, name.lower(), None)


class qSlicerApplication:
    applicationName = "Slicer"
    majorVersion = 5
    minorVersion = 8
    patchVersion = 1
    applicationVersion = "5.8.1"
    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def __init__(self, testing: bool, scene: vtkMRMLScene, modules: _Modules) -> None:
        self._options = qSlicerCommandOptions(testing)
        self._scene = scene
        self._ioManager = qSlicerCoreIOManager(self)
        self._appLogic = vtkSlicerApplicationLogic(self)
        self._moduleManager = qSlicerModuleManager(modules)
        self._settings: Dict[str, object] = {}
        self._tempdir = tempfile.mkdtemp(prefix="slicer_standin_")
        self.exitCode: Optional[int] = None
        self.dialogResponder: Optional[Callable[[str, str], object]] = None
        self.pipRequests: list = []

    # -- modes ----------------------------------------------------------------------------
    def testingEnabled(self) -> bool:
        return self._options.testingEnabled

    def commandOptions(self) -> qSlicerCommandOptions:
        return self._options

    def layoutManager(self):
        return None  # only qSlicerMainWindow creates one; --no-main-window has none

    # -- services -------------------------------------------------------------------------
    def mrmlScene(self) -> vtkMRMLScene:
        return self._scene

    def applicationLogic(self) -> vtkSlicerApplicationLogic:
        return self._appLogic

    def coreIOManager(self) -> qSlicerCoreIOManager:
        return self._ioManager

    ioManager = coreIOManager

    def moduleManager(self) -> qSlicerModuleManager:
        return self._moduleManager

    def pythonConsole(self):
        return None

    def processEvents(self, *args) -> None:
        pass

    def setOverrideCursor(self, *args) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass

    def exit(self, status: int = 0) -> None:
        self.exitCode = status

    def moduleDocumentationUrl(self, moduleName: str) -> str:
        return self.documentationBaseUrl + "user_guide/modules/%s.html" % moduleName.lower()

    @property
    def temporaryPath(self) -> str:
        return self._tempdir

    @property
    def slicerHome(self) -> str:
        return os.path.dirname(self._tempdir)


def add_application_nodes(scene: vtkMRMLScene, slice_views: Sequence[str]) -> None:
    """The singletons Slicer's application logic and layout create at startup."""
    selection = vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    for view in slice_views:
        composite = vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)
        scene.AddNode(composite)
