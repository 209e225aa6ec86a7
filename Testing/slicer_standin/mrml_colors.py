"""Colour nodes and the built-in colour node IDs (slicer-api.md section 2, "Built-in colour node IDs").

The IDs, names and the ``Labels`` table's names are Slicer's. The RGB values of the file-based
tables (ColdToHotRainbow.txt, GenericColors.txt, ...) are *approximations* built from HSV ramps,
and their entry names are the label numbers: the stand-in has no rendering, so only IDs, names
and table sizes matter. GenericColors.txt really names its entries "0".."307"; GenericAnatomyColors
has anatomical names in Slicer that are not reproduced here.
"""
from __future__ import annotations

import colorsys
import logging
import random
from typing import Dict, List, Optional, Tuple

import vtk

from .mrml_core import register_node_class, vtkMRMLScene, vtkMRMLStorableNode

logger = logging.getLogger("slicer_standin")


class vtkMRMLColorNode(vtkMRMLStorableNode):
    """Names + RGBA entries; the colours live in a real vtkLookupTable."""

    _tag = "Color"
    # vtkMRMLColorTableNode type numbers. 0..14 are Slicer's; later ones follow the header
    # order as far as the stand-in needs them (not relied upon by the contract).
    FullRainbow, Grey, Iron, Rainbow, Ocean, Desert, InvertedGrey, ReverseRainbow = range(8)
    fMRI, fMRIPA, Labels, Obsolete, Random, User, File = range(8, 15)
    Red, Green, Blue, Yellow, Cyan, Magenta, Warm1, Warm2, Warm3, Cool1, Cool2, Cool3 = range(15, 27)

    def __init__(self) -> None:
        super().__init__()
        # vtkMRMLColorNode sets HideFromEditors = 1: a table made by code stays hidden (and is
        # not saved with the scene) until HideFromEditorsOff() (slicer-api.md MUST item 12).
        self._hideFromEditors = 1
        self._type = -1
        self._names: List[str] = []
        self._namesInitialised = 0
        self._lut = vtk.vtkLookupTable()
        self._lut.SetNumberOfTableValues(0)

    def _copyContent(self, node) -> None:
        if isinstance(node, vtkMRMLColorNode):
            self._type = node._type
            self._names = list(node._names)
            self._namesInitialised = node._namesInitialised
            self._lut.DeepCopy(node._lut)

    def Reset(self, defaultNode=None) -> None:
        # Colour tables survive File > Close Scene with their content (built-in singletons).
        return

    # -- table access ---------------------------------------------------------------------
    def GetLookupTable(self) -> vtk.vtkLookupTable:
        return self._lut

    def GetNumberOfColors(self) -> int:
        return self._lut.GetNumberOfTableValues()

    def GetType(self) -> int:
        return self._type

    def GetNoName(self) -> str:
        return "(none)"

    def GetNamesInitialised(self) -> int:
        return self._namesInitialised

    def NamesInitialisedOn(self) -> None:
        self._namesInitialised = 1

    def NamesInitialisedOff(self) -> None:
        self._namesInitialised = 0

    def SetNamesInitialised(self, value: int) -> None:
        self._namesInitialised = int(bool(value))

    def GetColorName(self, index: int) -> str:
        """The entry's name; "" (not None) for a value the table has no entry for (slicer-api.md
        section 2, "Segment name")."""
        if 0 <= index < len(self._names):
            return self._names[index]
        return ""

    def GetColorIndexByName(self, name: str) -> int:
        try:
            return self._names.index(name)
        except ValueError:
            return -1

    def SetColorName(self, index: int, name: str) -> int:
        if not 0 <= index < self.GetNumberOfColors():
            logger.error("SetColorName: index %d out of range 0 - %d", index, self.GetNumberOfColors() - 1)
            return 0
        if len(self._names) < self.GetNumberOfColors():
            self._names.extend([""] * (self.GetNumberOfColors() - len(self._names)))
        if self._names[index] != name:
            self._names[index] = name
            self.Modified()
        return 1

    def GetColor(self, index: int, color) -> bool:
        if not 0 <= index < self.GetNumberOfColors():
            return False
        rgba = self._lut.GetTableValue(index)
        for i in range(min(len(color), 4)):
            color[i] = rgba[i]
        return True

    def _setNamesFromColors(self) -> None:
        # Approximation of vtkMRMLColorNode::SetNamesFromColors (doc-silent).
        self._names = []
        for i in range(self.GetNumberOfColors()):
            r, g, b, a = self._lut.GetTableValue(i)
            self._names.append("R=%.3f G=%.3f B=%.3f A=%.3f" % (r, g, b, a))


@register_node_class
class vtkMRMLColorTableNode(vtkMRMLColorNode):
    _tag = "ColorTable"
    TypeModifiedEvent = 20002

    def GetTypeAsString(self) -> str:
        if self._type == self.User:
            return "UserDefined"
        return _TYPE_STRINGS.get(self._type, "(unknown)")

    def SetTypeToUser(self) -> None:
        self._type = self.User
        self._lut.SetNumberOfTableValues(0)
        self._names = []
        self.Modified()

    def SetTypeToFile(self) -> None:
        self._type = self.File
        self.Modified()

    def SetType(self, tableType: int) -> None:
        if tableType == self.User:
            self.SetTypeToUser()
            return
        if tableType == self.File:
            self.SetTypeToFile()
            return
        builder = _TABLE_BUILDERS.get(tableType)
        if builder is None:
            logger.error("vtkMRMLColorTableNode: SetType ERROR, unknown type %s", tableType)
            return
        self._type = tableType
        builder(self)
        self.Modified()

    def SetNumberOfColors(self, n: int) -> None:
        if self._type not in (self.User, self.File):
            logger.error("SetNumberOfColors: ERROR: can't set number of colours if not a user "
                         "defined colour table, reset the type first to User or File")
            return
        if n != self.GetNumberOfColors():
            self._lut.SetNumberOfTableValues(n)
            self._names = (self._names + [""] * n)[:n]
            self.Modified()

    def SetColor(self, entry: int, *args) -> int:
        """SetColor(i, name, r, g, b[, a]) or SetColor(i, r, g, b[, a]); returns 1 on success."""
        name: Optional[str] = None
        if args and isinstance(args[0], str):
            name, args = args[0], args[1:]
        if len(args) not in (3, 4):
            raise TypeError("SetColor: expected (index, [name,] r, g, b[, a])")
        if self._type not in (self.User, self.File):
            logger.error("vtkMRMLColorTableNode::SetColor: can not set a colour if not user defined")
            return 0
        if not 0 <= entry < self.GetNumberOfColors():
            logger.error("vtkMRMLColorTableNode::SetColor: requested entry %d is out of table range: "
                         "0 - %d, call SetNumberOfColors", entry, self.GetNumberOfColors())
            return 0
        r, g, b = (float(v) for v in args[:3])
        a = float(args[3]) if len(args) == 4 else 1.0
        self._lut.SetTableValue(entry, r, g, b, a)
        if name is not None:
            self._names[entry] = name
        self.Modified()
        return 1

    def AddColor(self, name: str, r: float, g: float, b: float, a: float = 1.0) -> int:
        if self._type != self.User:
            logger.error("AddColor: ERROR: can't add a colour if not a user defined colour table")
            return 0
        index = self.GetNumberOfColors()
        self._lut.SetNumberOfTableValues(index + 1)
        self._names.append(name)
        self._lut.SetTableValue(index, r, g, b, a)
        self.Modified()
        return 1


@register_node_class
class vtkMRMLProceduralColorNode(vtkMRMLColorNode):
    """A colour transfer function; GetNumberOfColors is 0 like Slicer's procedural nodes."""

    _tag = "ProceduralColor"

    def __init__(self) -> None:
        super().__init__()
        self._ctf = vtk.vtkColorTransferFunction()

    def GetColorTransferFunction(self) -> vtk.vtkColorTransferFunction:
        return self._ctf

    def GetTypeAsString(self) -> str:
        return self.GetName() or "(unknown)"


@register_node_class
class vtkMRMLPETProceduralColorNode(vtkMRMLProceduralColorNode):
    _tag = "PETProceduralColor"


# -- built-in tables --------------------------------------------------------------------------
def _hsv_ramp(node: vtkMRMLColorNode, n: int, hue: Tuple[float, float], sat: Tuple[float, float],
              val: Tuple[float, float]) -> None:
    lut = node.GetLookupTable()
    lut.SetNumberOfTableValues(n)
    lut.SetTableRange(0, max(n - 1, 1))
    lut.SetHueRange(*hue)
    lut.SetSaturationRange(*sat)
    lut.SetValueRange(*val)
    lut.SetAlphaRange(1, 1)
    lut.SetRampToLinear()
    lut.ForceBuild()
    node._setNamesFromColors()


def _ramp(hue, sat, val, n: int = 256):
    return lambda node: _hsv_ramp(node, n, hue, sat, val)


# The "Labels" table: 257 named entries, label 1 = "jake" (slicer-api.md section 2).
_LABELS_HEAD = [
    ("Black", (0.0, 0.0, 0.0, 0.0)), ("jake", (0.2, 0.5, 0.8, 1.0)), ("Peach", (1.0, 0.8, 0.7, 1.0)),
    ("Brain", (1.0, 1.0, 1.0, 1.0)), ("Ventricles", (0.4, 0.7, 1.0, 1.0)), ("Vessels", (0.9, 0.5, 0.5, 1.0)),
    ("Tumor", (0.5, 0.9, 0.5, 1.0)), ("fMRI-high", (0.5, 0.9, 0.9, 1.0)), ("fMRI-low", (0.9, 0.9, 0.5, 1.0)),
    ("Pre-Gyrus", (0.9, 0.7, 0.9, 1.0)), ("Post-Gyrus", (0.9, 0.9, 0.5, 1.0)),
]
_LABELS_CYCLE = [
    ("jake", (0.2, 0.5, 0.8)), ("elwood", (0.2, 0.8, 0.5)), ("gato", (0.8, 0.5, 0.2)), ("avery", (0.8, 0.2, 0.5)),
    ("mambazo", (0.5, 0.2, 0.8)), ("domino", (0.5, 0.8, 0.2)), ("monk", (0.2, 0.2, 0.8)), ("forest", (0.8, 0.8, 0.2)),
    ("dylan", (0.2, 0.8, 0.8)), ("kales", (0.5, 0.5, 0.5)),
]


def _labels(node: vtkMRMLColorNode) -> None:
    lut = node.GetLookupTable()
    lut.SetNumberOfTableValues(257)
    lut.SetTableRange(0, 257)
    node._names = [""] * 257
    for i, (name, rgba) in enumerate(_LABELS_HEAD):
        node._names[i] = name
        lut.SetTableValue(i, *rgba)
    for i in range(11, 257):
        name, rgb = _LABELS_CYCLE[(i - 11) % 10]
        node._names[i] = name
        lut.SetTableValue(i, *rgb, 1.0)
    node.NamesInitialisedOn()


def _random(node: vtkMRMLColorNode) -> None:
    rng = random.Random(0)
    lut = node.GetLookupTable()
    lut.SetNumberOfTableValues(256)
    lut.SetTableRange(0, 255)
    lut.SetTableValue(0, 0, 0, 0, 0)
    for i in range(1, 256):
        lut.SetTableValue(i, rng.randrange(255) / 255.0, rng.randrange(255) / 255.0, rng.randrange(255) / 255.0, 1.0)
    node._setNamesFromColors()


_C = vtkMRMLColorNode
_TABLE_BUILDERS = {
    _C.FullRainbow: _ramp((0, 1), (1, 1), (1, 1)),
    _C.Grey: _ramp((0, 0), (0, 0), (0, 1)),
    _C.Iron: _ramp((0, 0.15), (1, 1), (1, 1), 156),
    _C.Rainbow: _ramp((0, 0.8), (1, 1), (1, 1)),
    _C.Ocean: _ramp((0.666667, 0.5), (1, 1), (1, 1)),
    _C.Desert: _ramp((0, 0.1), (1, 1), (1, 1)),
    _C.InvertedGrey: _ramp((0, 0), (0, 0), (1, 0)),
    _C.ReverseRainbow: _ramp((0.8, 1), (1, 1), (1, 1)),
    _C.fMRI: _ramp((0.5, 0.16667), (1, 1), (1, 1), 43),
    _C.fMRIPA: _ramp((0, 0.16667), (1, 1), (1, 1), 20),
    _C.Labels: _labels,
    _C.Random: _random,
    _C.Red: _ramp((0, 0), (1, 1), (0, 1)),
    _C.Green: _ramp((0.333, 0.333), (1, 1), (0, 1)),
    _C.Blue: _ramp((0.667, 0.667), (1, 1), (0, 1)),
    _C.Yellow: _ramp((0.167, 0.167), (1, 1), (0, 1)),
    _C.Cyan: _ramp((0.5, 0.5), (1, 1), (0, 1)),
    _C.Magenta: _ramp((0.833, 0.833), (1, 1), (0, 1)),
    _C.Warm1: _ramp((0.167, 0.0), (1, 1), (1, 1)),
    _C.Warm2: _ramp((0.333, 0.167), (1, 1), (1, 1)),
    _C.Warm3: _ramp((0.5, 0.333), (1, 1), (1, 1)),
    _C.Cool1: _ramp((0.667, 0.5), (1, 1), (1, 1)),
    _C.Cool2: _ramp((0.833, 0.667), (1, 1), (1, 1)),
    _C.Cool3: _ramp((1.0, 0.833), (1, 1), (1, 1)),
}
_TYPE_STRINGS = {
    _C.FullRainbow: "FullRainbow", _C.Grey: "Grey", _C.Iron: "Iron", _C.Rainbow: "Rainbow", _C.Ocean: "Ocean",
    _C.Desert: "Desert", _C.InvertedGrey: "InvertedGrey", _C.ReverseRainbow: "ReverseRainbow", _C.fMRI: "fMRI",
    _C.fMRIPA: "fMRIPA", _C.Labels: "Labels", _C.Random: "Random", _C.File: "File", _C.Red: "Red",
    _C.Green: "Green", _C.Blue: "Blue", _C.Yellow: "Yellow", _C.Cyan: "Cyan", _C.Magenta: "Magenta",
    _C.Warm1: "Warm1", _C.Warm2: "Warm2", _C.Warm3: "Warm3", _C.Cool1: "Cool1", _C.Cool2: "Cool2", _C.Cool3: "Cool3",
}

# S:Base/Logic/Resources/ColorFiles as of v5.8.1: file name -> number of entries (approximate
# where the stand-in does not know the file; GenericColors.txt really has 0..307).
COLOR_FILES: Dict[str, int] = {
    "ColdToHotRainbow.txt": 256, "HotToColdRainbow.txt": 256, "Inferno.txt": 256, "Viridis.txt": 256,
    "Magma.txt": 256, "Plasma.txt": 256, "Cividis.txt": 256, "DivergingBlueRed.txt": 256,
    "GenericColors.txt": 308, "GenericAnatomyColors.txt": 350, "AbdomenColors.txt": 256,
    "64Color-Nonsemantic.txt": 64, "DarkBrightChartColors.txt": 16, "LightPaleChartColors.txt": 16,
    "MediumChartColors.txt": 16, "GenericChartColors.txt": 16, "PelvisColor.txt": 256,
    "SPL-BrainAtlas-ColorFile.txt": 256, "SPL-BrainAtlas-2009-ColorFile.txt": 256,
    "SPL-BrainAtlas-2012-ColorFile.txt": 256, "Slicer3_2010_Brain_Labels.txt": 256,
    "Slicer3_2010_Label_Colors.txt": 256,
}
_FILE_HUES: Dict[str, Tuple[float, float]] = {
    "ColdToHotRainbow.txt": (0.667, 0.0), "HotToColdRainbow.txt": (0.0, 0.667), "Inferno.txt": (0.75, 0.15),
    "Viridis.txt": (0.75, 0.17), "Magma.txt": (0.75, 0.05), "Plasma.txt": (0.7, 0.15), "Cividis.txt": (0.6, 0.15),
}


def _file_table(fileName: str, n: int) -> vtkMRMLColorTableNode:
    node = vtkMRMLColorTableNode()
    node._type = vtkMRMLColorNode.File
    lut = node.GetLookupTable()
    lut.SetNumberOfTableValues(n)
    lut.SetTableRange(0, n - 1)
    hue = _FILE_HUES.get(fileName)
    for i in range(n):
        if hue is not None:
            h = hue[0] + (hue[1] - hue[0]) * i / max(n - 1, 1)
            r, g, b = colorsys.hsv_to_rgb(h % 1.0, 1.0, 1.0)
        else:
            r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.55, 0.9)
        lut.SetTableValue(i, r, g, b, 0.0 if (i == 0 and hue is None) else 1.0)
    node._names = [str(i) for i in range(n)]
    node.NamesInitialisedOn()
    return node


def add_builtin_color_nodes(scene: vtkMRMLScene) -> None:
    """What vtkMRMLColorLogic adds at startup; singletons, so they survive Clear(0)."""
    for tableType, typeName in _TYPE_STRINGS.items():
        if tableType == vtkMRMLColorNode.File:
            continue
        node = vtkMRMLColorTableNode()
        node.SetType(tableType)
        node.SetName(typeName)
        node.SetSingletonTag(typeName)
        node.SetHideFromEditors(0)
        scene.AddNode(node)
    for fileName, n in COLOR_FILES.items():
        node = _file_table(fileName, n)
        node.SetName(fileName.rsplit(".", 1)[0])
        node.SetSingletonTag("File" + fileName)
        scene.AddNode(node)
    for name, cls in (("PET-Heat", vtkMRMLPETProceduralColorNode), ("PET-Rainbow2", vtkMRMLPETProceduralColorNode),
                      ("RedGreenBlue", vtkMRMLProceduralColorNode), ("RandomIntegers", vtkMRMLProceduralColorNode)):
        pnode = cls()
        pnode.SetName(name)
        pnode.SetSingletonTag(name)
        scene.AddNode(pnode)

