"""A stand-in for 3D Slicer's Python API, built on the real ``vtk`` package, for tests outside Slicer.

It follows /work/shared/docs/slicer-api.md (the contract) for a ``Slicer --no-main-window
[--testing]`` session: ``slicer.util``, ``slicer.mrmlScene``, ``slicer.app``, ``slicer.modules``
(with ``segmentations.logic()``), the ``vtkMRML*`` classes, ``slicer.ScriptedLoadableModule`` and
``slicer.testing``. Usage::

    import slicer_standin
    slicer = slicer_standin.install()          # fresh `slicer`, `slicer.util`, ... in sys.modules
    try:
        volume = slicer.util.loadVolume("ct.nii.gz")
        ...
    finally:
        slicer_standin.uninstall()

Where the document is silent the stand-in does the minimal faithful thing and says so in the
docstring concerned. GUI pieces are placeholders (see ``gui``).

Known limits (not reproduced, or reproduced by inference):
- No Qt: ``loadUI`` raises StandInLimitation for an existing file, module widgets cannot run
  their template ``setup()``, ``widgetRepresentation()`` is None, ``qt``/``ctk`` are placeholders.
- No ``slicer.parameterNodeWrapper`` (section 2 allows skipping it), no DICOM database /
  ``DICOMLib`` (section 4). Parent transforms are linear only (vtkMRMLLinearTransformNode);
  nothing is rendered, so "shown where" means world coordinates (GetRASBounds, ...World).
- Scenes are saved and loaded as .mrb bundles only, with hidden storable nodes' data skipped
  (``scene_io``); point lists are the Markups "Fiducial" type only (``mrml_markups``).
- ``pip_install`` (and ``_executePythonModule``) only record their arguments in
  ``slicer.app.pipRequests``.
- Outside testing mode a confirmation dialog raises ModalDialogWouldBlock (Slicer would block)
  unless ``slicer.app.dialogResponder(kind, text)`` is set. In testing mode
  ``confirmOkCancelDisplay``/``confirmYesNoDisplay`` answer False, as Slicer's do.
- Behaves as Slicer 5.8+ with VTK >= 9.4: left-handed files are flipped on load, the 5.12
  SetAndObserveImageData warning is on, int8 maps to VTK_SIGNED_CHAR.
- Colour table RGB values of file-based tables are approximations; GenericColors names are the
  label numbers as in Slicer, GenericAnatomyColors' anatomical names are not reproduced.
- Red/Yellow/Green slice composite nodes exist by default even though ``layoutManager()`` is
  None; ``install(slice_views=())`` gives a scene without them.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import vtk as _vtk

from . import app as _app
from . import errors, geometry, gui, mrml_colors, mrml_core, mrml_misc, mrml_volumes, segmentations  # noqa: F401
from . import mrml_markups, mrml_transforms, scene_io  # noqa: F401
from . import fileio as _fileio
from .errors import ModalDialogWouldBlock, StandInLimitation

__all__ = ["install", "uninstall", "load_scripted_module", "installed", "StandInLimitation", "ModalDialogWouldBlock"]

_HERE = Path(__file__).resolve().parent
_MANAGED = ("slicer", "slicer.util", "slicer.ScriptedLoadableModule", "slicer.testing", "slicer.i18n", "vtk", "qt", "ctk")


class _InstallState:
    def __init__(self) -> None:
        self.previous: Dict[str, Optional[types.ModuleType]] = {}
        self.added_paths: List[str] = []
        self.loaded_modules: List[str] = []
        self.slicer: Optional[types.ModuleType] = None


_state: Optional[_InstallState] = None

# Classes Slicer exposes as slicer.<name>; abstract MRML bases are included for isinstance/IsA.
_EXPORTED_CLASSES = [
    mrml_core.vtkMRMLNode, mrml_core.vtkMRMLStorableNode, mrml_core.vtkMRMLTransformableNode,
    mrml_core.vtkMRMLDisplayableNode, mrml_core.vtkMRMLDisplayNode, mrml_core.vtkMRMLStorageNode,
    mrml_core.vtkMRMLScene, mrml_volumes.vtkMRMLVolumeNode, mrml_volumes.vtkMRMLVolumeDisplayNode,
    mrml_volumes.vtkMRMLTensorVolumeNode, mrml_colors.vtkMRMLColorNode,
    segmentations.vtkSegment, segmentations.vtkSegmentation, segmentations.vtkOrientedImageData,
    segmentations.vtkSlicerSegmentationsModuleLogic, _fileio.vtkMRMLMessageCollection, gui.qMRMLWidget,
    mrml_markups.vtkMRMLMarkupsNode, mrml_transforms.vtkSlicerTransformLogic,
]


def _exec_source(name: str, path: Path, injected: Optional[dict] = None) -> types.ModuleType:
    """Runs one of this package's files as a brand-new module ``name`` (fresh defaults each time)."""
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    module.__dict__.update(injected or {})
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _i18n_module() -> types.ModuleType:
    module = types.ModuleType("slicer.i18n")
    module.tr = lambda text: text  # type: ignore[attr-defined]
    module.translate = lambda context, text: text  # type: ignore[attr-defined]
    return module


def install(testing: bool = True, slice_views: Sequence[str] = ("Red", "Yellow", "Green"),
            gui_stubs: bool = True) -> types.ModuleType:
    """Creates fresh ``slicer`` modules and puts them in ``sys.modules``; returns ``slicer``.

    testing: ``slicer.app.testingEnabled()`` (``Slicer --testing``): dialogs return fixed values.
    slice_views: layout names of the vtkMRMLSliceCompositeNode singletons to create.
    gui_stubs: also register placeholder ``qt``/``ctk`` modules when no real ones are importable.
    """
    global _state
    uninstall()
    state = _InstallState()
    for name in _MANAGED:
        state.previous[name] = sys.modules.get(name)

    slicer = types.ModuleType("slicer")
    slicer.__path__ = []  # a package, so `import slicer.util` resolves through sys.modules
    slicer.__doc__ = "slicer_standin: stand-in for 3D Slicer's `slicer` package"
    for cls in list(mrml_core.NODE_CLASSES.values()) + _EXPORTED_CLASSES:
        setattr(slicer, cls.__name__, cls)
    slicer.qSlicerApplication = _app.qSlicerApplication

    scene = mrml_core.vtkMRMLScene()
    mrml_colors.add_builtin_color_nodes(scene)
    _app.add_application_nodes(scene, slice_views)
    modules = _app._Modules()
    application = _app.qSlicerApplication(testing, scene, modules)
    slicer.mrmlScene = scene
    slicer.app = application
    slicer.modules = modules
    slicer.selfTests = {}
    slicer._standinQIcon = gui.QIcon
    slicer._standinLayout = gui.HeadlessLayout
    sys.modules["slicer"] = slicer
    sys.modules["vtk"] = _vtk  # inside Slicer `import vtk` is Slicer's VTK; here it is pip vtk

    package = sys.modules[__name__]
    slicer.util = _exec_source("slicer.util", _HERE / "util.py", {"_standin": package})
    slicer.i18n = _i18n_module()
    sys.modules["slicer.i18n"] = slicer.i18n
    slicer.ScriptedLoadableModule = _exec_source("slicer.ScriptedLoadableModule", _HERE / "ScriptedLoadableModule.py")
    slicer.testing = _exec_source("slicer.testing", _HERE / "slicer_testing.py")

    if gui_stubs:
        for name in ("qt", "ctk"):
            if state.previous.get(name) is None and importlib.util.find_spec(name) is None:
                sys.modules[name] = gui.placeholder_module(name)

    state.slicer = slicer
    _state = state
    return slicer


def uninstall() -> None:
    """Removes what install() put in sys.modules (restoring earlier entries) and sys.path."""
    global _state
    state = _state
    if state is None:
        return
    for name in state.loaded_modules:
        sys.modules.pop(name, None)
    for path in state.added_paths:
        if path in sys.path:
            sys.path.remove(path)
    for name in _MANAGED:
        previous = state.previous.get(name)
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
    if state.slicer is not None:
        shutil.rmtree(state.slicer.app.temporaryPath, ignore_errors=True)
    _state = None


def installed() -> Optional[types.ModuleType]:
    """The ``slicer`` module of the current install, or None."""
    return _state.slicer if _state is not None else None


def load_scripted_module(path: Union[str, os.PathLike]) -> types.ModuleType:
    """Loads ``<Name>.py`` the way Slicer's scripted-module factory does (section 5).

    The module's folder goes on sys.path, the file is imported as module ``<Name>``, the class
    ``<Name>`` is instantiated with a parent whose ``path`` is the file, and Slicer's names are
    registered: ``slicer.modules.<name lower>`` (the parent) and ``slicer.modules.<Name>Instance``.
    No widget is created (``--no-main-window``). Returns the imported Python module.
    """
    if _state is None or _state.slicer is None:
        raise RuntimeError("slicer_standin.install() first")
    slicer = _state.slicer
    path = Path(path).resolve()
    name = path.stem
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
        _state.added_paths.append(folder)
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    _state.loaded_modules.append(name)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    parent = _app.ModuleParent(name, str(path))
    instance = getattr(module, name)(parent)
    setattr(slicer.modules, name.lower(), parent)
    setattr(slicer.modules, name + "Instance", instance)
    return module
