"""Parameter, slice-composite, selection and table nodes (slicer-api.md section 2)."""
from __future__ import annotations

import logging
from typing import Dict, Optional

import vtk

from .mrml_core import register_node_class, vtkMRMLNode, vtkMRMLStorableNode, vtkMRMLStorageNode

logger = logging.getLogger("slicer_standin")


@register_node_class
class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    """String parameters: Modified only on a change, "" for a missing one (section 2)."""

    _tag = "ScriptedModule"

    def __init__(self) -> None:
        super().__init__()
        self._parameters: Dict[str, str] = {}
        self._moduleName: Optional[str] = None

    def _copyContent(self, node: vtkMRMLNode) -> None:
        if isinstance(node, vtkMRMLScriptedModuleNode):
            self._parameters = dict(node._parameters)
            self._moduleName = node._moduleName

    def SetParameter(self, name: str, value: str) -> None:
        if not isinstance(name, str) or not isinstance(value, str):
            # The C++ signature takes std::string: VTK's wrapping rejects other types.
            raise TypeError("SetParameter argument %d: a string is required" % (1 if not isinstance(name, str) else 2))
        if self._parameters.get(name) != value:
            self._parameters[name] = value
            self.Modified()

    def GetParameter(self, name: str) -> str:
        return self._parameters.get(name, "")

    def HasParameter(self, name: str) -> bool:
        return name in self._parameters

    def UnsetParameter(self, name: str) -> None:
        if name in self._parameters:
            del self._parameters[name]
            self.Modified()

    def UnsetAllParameters(self) -> None:
        if self._parameters:
            self._parameters.clear()
            self.Modified()

    def GetParameterCount(self) -> int:
        return len(self._parameters)

    def GetParameterNames(self) -> tuple:
        return tuple(self._parameters)

    def GetParameterNamesAsCommaSeparatedList(self) -> str:
        return ",".join(self._parameters)

    def GetModuleName(self) -> Optional[str]:
        return self._moduleName

    def SetModuleName(self, name: Optional[str]) -> None:
        self._moduleName = name
        self.Modified()


@register_node_class
class vtkMRMLSliceCompositeNode(vtkMRMLNode):
    """Layers of one slice view; the layout name is the singleton tag (e.g. "Red")."""

    _tag = "SliceComposite"

    def __init__(self) -> None:
        super().__init__()
        self._foregroundOpacity = 0.0
        self._labelOpacity = 1.0
        self._doPropagateVolumeSelection = True

    def _copyContent(self, node: vtkMRMLNode) -> None:
        if isinstance(node, vtkMRMLSliceCompositeNode):
            self._foregroundOpacity = node._foregroundOpacity
            self._labelOpacity = node._labelOpacity
            self._doPropagateVolumeSelection = node._doPropagateVolumeSelection

    def GetLayoutName(self) -> Optional[str]:
        return self.GetSingletonTag()

    def SetLayoutName(self, name: str) -> None:
        self.SetSingletonTag(name)

    def SetBackgroundVolumeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("backgroundVolume", nodeID)

    def GetBackgroundVolumeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("backgroundVolume")

    def SetForegroundVolumeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("foregroundVolume", nodeID)

    def GetForegroundVolumeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("foregroundVolume")

    def SetLabelVolumeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("labelVolume", nodeID)

    def GetLabelVolumeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("labelVolume")

    def SetForegroundOpacity(self, value: float) -> None:
        if float(value) != self._foregroundOpacity:
            self._foregroundOpacity = float(value)
            self.Modified()

    def GetForegroundOpacity(self) -> float:
        return self._foregroundOpacity

    def SetLabelOpacity(self, value: float) -> None:
        if float(value) != self._labelOpacity:
            self._labelOpacity = float(value)
            self.Modified()

    def GetLabelOpacity(self) -> float:
        return self._labelOpacity

    def GetDoPropagateVolumeSelection(self) -> bool:
        return self._doPropagateVolumeSelection

    def SetDoPropagateVolumeSelection(self, value: bool) -> None:
        self._doPropagateVolumeSelection = bool(value)


@register_node_class
class vtkMRMLSelectionNode(vtkMRMLNode):
    """The application's active volumes (singleton "Singleton")."""

    _tag = "Selection"

    def SetActiveVolumeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("ActiveVolume", nodeID)

    def GetActiveVolumeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("ActiveVolume")

    SetReferenceActiveVolumeID = SetActiveVolumeID

    def SetSecondaryVolumeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("SecondaryVolume", nodeID)

    def GetSecondaryVolumeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("SecondaryVolume")

    SetReferenceSecondaryVolumeID = SetSecondaryVolumeID

    def SetActiveLabelVolumeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("ActiveLabelVolume", nodeID)

    def GetActiveLabelVolumeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("ActiveLabelVolume")

    SetReferenceActiveLabelVolumeID = SetActiveLabelVolumeID


@register_node_class
class vtkMRMLTableStorageNode(vtkMRMLStorageNode):
    _tag = "TableStorage"


@register_node_class
class vtkMRMLTableNode(vtkMRMLStorableNode):
    """A vtkTable of string and numeric columns with Slicer's cell-text helpers.

    New columns are named "Column", "Column_1"... when unnamed (slicer-api.md is silent).
    """

    _tag = "Table"

    def __init__(self) -> None:
        super().__init__()
        self._table = vtk.vtkTable()
        self._columnProperties: Dict[str, Dict[str, str]] = {}
        self._useColumnNameAsColumnHeader = False
        self._locked = 0

    def _copyContent(self, node: vtkMRMLNode) -> None:
        if isinstance(node, vtkMRMLTableNode):
            self._table = vtk.vtkTable()
            self._table.DeepCopy(node._table)
            self._columnProperties = {k: dict(v) for k, v in node._columnProperties.items()}

    def GetTable(self) -> vtk.vtkTable:
        return self._table

    def SetAndObserveTable(self, table: vtk.vtkTable) -> None:
        self._table = table
        self.Modified()

    def GetNumberOfRows(self) -> int:
        return self._table.GetNumberOfRows()

    def GetNumberOfColumns(self) -> int:
        return self._table.GetNumberOfColumns()

    def _uniqueColumnName(self, base: str) -> str:
        names = {self._table.GetColumnName(i) for i in range(self._table.GetNumberOfColumns())}
        if base not in names:
            return base
        index = 1
        while "%s_%d" % (base, index) in names:
            index += 1
        return "%s_%d" % (base, index)

    @staticmethod
    def _pad(column: vtk.vtkAbstractArray, rows: int) -> None:
        while column.GetNumberOfTuples() < rows:
            if isinstance(column, vtk.vtkStringArray):
                column.InsertNextValue("")
            elif isinstance(column, vtk.vtkDataArray):
                column.InsertNextTuple([0.0] * column.GetNumberOfComponents())
            else:
                column.InsertNextValue(vtk.vtkVariant())

    def AddColumn(self, column: Optional[vtk.vtkAbstractArray] = None) -> vtk.vtkAbstractArray:
        """Adds (or creates, as a string column) a column, padding the shorter side with empty values."""
        rows = self._table.GetNumberOfRows()
        if column is None:
            column = vtk.vtkStringArray()
        if column.GetNumberOfTuples() < rows:
            self._pad(column, rows)
        elif column.GetNumberOfTuples() > rows and self._table.GetNumberOfColumns() > 0:
            for i in range(self._table.GetNumberOfColumns()):
                self._pad(self._table.GetColumn(i), column.GetNumberOfTuples())
        if not column.GetName():
            column.SetName(self._uniqueColumnName("Column"))
        self._table.AddColumn(column)
        self._table.Modified()
        self.Modified()
        return column

    def RemoveColumn(self, col: int) -> None:
        self._table.RemoveColumn(col)
        self.Modified()

    def RemoveAllColumns(self) -> None:
        while self._table.GetNumberOfColumns():
            self._table.RemoveColumn(0)
        self.Modified()

    def AddEmptyRow(self) -> int:
        if self._table.GetNumberOfColumns() == 0:
            self.AddColumn()
        row = self._table.InsertNextBlankRow()
        self.Modified()
        return row

    def RemoveRow(self, row: int) -> None:
        self._table.RemoveRow(row)
        self.Modified()

    def GetColumnName(self, col: int) -> Optional[str]:
        return self._table.GetColumnName(col)

    def SetColumnName(self, col: int, name: str) -> bool:
        column = self._table.GetColumn(col)
        if column is None:
            return False
        column.SetName(name)
        self.Modified()
        return True

    def GetColumnIndex(self, name: str) -> int:
        for i in range(self._table.GetNumberOfColumns()):
            if self._table.GetColumnName(i) == name:
                return i
        return -1

    def SetCellText(self, row: int, col: int, text: str) -> bool:
        if not (0 <= row < self.GetNumberOfRows() and 0 <= col < self.GetNumberOfColumns()):
            logger.error("vtkMRMLTableNode::SetCellText failed: row %d or column %d is out of range", row, col)
            return False
        column = self._table.GetColumn(col)
        if isinstance(column, vtk.vtkStringArray):
            column.SetValue(row, text)
        elif isinstance(column, vtk.vtkDataArray):
            try:
                value = float(text)
            except ValueError:
                logger.error("vtkMRMLTableNode::SetCellText failed: '%s' is not a number", text)
                return False
            column.SetComponent(row, 0, value)
        else:
            column.SetVariantValue(row, vtk.vtkVariant(text))
        column.Modified()
        self._table.Modified()
        self.Modified()
        return True

    def GetCellText(self, row: int, col: int) -> str:
        if not (0 <= row < self.GetNumberOfRows() and 0 <= col < self.GetNumberOfColumns()):
            logger.error("vtkMRMLTableNode::GetCellText failed: row %d or column %d is out of range", row, col)
            return ""
        return self._table.GetValue(row, col).ToString()

    def _setColumnProperty(self, name: str, key: str, value: str) -> None:
        self._columnProperties.setdefault(name, {})[key] = value
        self.Modified()

    def SetColumnProperty(self, name: str, key: str, value: str) -> None:
        self._setColumnProperty(name, key, value)

    def GetColumnProperty(self, name: str, key: str) -> str:
        return self._columnProperties.get(name, {}).get(key, "")

    def SetColumnDescription(self, name: str, text: str) -> None:
        self._setColumnProperty(name, "description", text)

    def GetColumnDescription(self, name: str) -> str:
        return self.GetColumnProperty(name, "description")

    def SetColumnUnitLabel(self, name: str, text: str) -> None:
        self._setColumnProperty(name, "unitLabel", text)

    def GetColumnUnitLabel(self, name: str) -> str:
        return self.GetColumnProperty(name, "unitLabel")

    def SetColumnLongName(self, name: str, text: str) -> None:
        self._setColumnProperty(name, "longName", text)

    def GetColumnLongName(self, name: str) -> str:
        return self.GetColumnProperty(name, "longName")

    def SetUseColumnNameAsColumnHeader(self, value: bool) -> None:
        self._useColumnNameAsColumnHeader = bool(value)

    def GetUseColumnNameAsColumnHeader(self) -> bool:
        return self._useColumnNameAsColumnHeader

    def SetLocked(self, value: int) -> None:
        self._locked = int(bool(value))

    def GetLocked(self) -> int:
        return self._locked
