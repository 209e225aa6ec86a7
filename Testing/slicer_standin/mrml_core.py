"""MRML base classes and the scene (slicer-api.md section 2, "Scene (vtkMRMLScene)").

MRML is not part of pip ``vtk``, so nodes are Python subclasses of the real ``vtk.vtkObject``:
``AddObserver``/``InvokeEvent``/``Register``/``UnRegister`` are VTK's own, observers receive the
node itself as ``caller`` and ``vtk.calldata_type`` works, as inside Slicer. ``GetClassName``
and ``IsA`` are answered from the Python class chain, whose names are the MRML names.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional

import numpy as np
import vtk

logger = logging.getLogger("slicer_standin")

# className -> class, for CreateNodeByClass / AddNewNodeByClass. Abstract MRML classes are not
# listed: the real scene cannot instantiate them either (AddNewNodeByClass returns None).
NODE_CLASSES: Dict[str, type] = {}


def register_node_class(cls: type) -> type:
    NODE_CLASSES[cls.__name__] = cls
    return cls


class vtkMRMLNode(vtk.vtkObject):
    """Name, ID, attributes, node references and batched Modified events of every MRML node."""

    _tag = "Node"
    HierarchyModifiedEvent = 16000
    IDChangedEvent = 16001

    def __init__(self) -> None:
        super().__init__()
        self._id: Optional[str] = None
        self._name: Optional[str] = None
        self._scene: Optional[vtkMRMLScene] = None
        self._singletonTag: Optional[str] = None
        self._description: Optional[str] = None
        self._hideFromEditors = 0
        self._selectable = 1
        self._attributes: Dict[str, str] = {}
        self._references: Dict[str, List[str]] = {}
        self._disableModified = 0
        self._modifiedPending = 0

    # -- identity -------------------------------------------------------------------------
    def GetClassName(self) -> str:
        return type(self).__name__

    def IsA(self, className: str) -> int:
        # IsA follows inheritance (slicer-api.md section 2 "Class hierarchy").
        if any(c.__name__ == className for c in type(self).__mro__):
            return 1
        return int(bool(vtk.vtkObject.IsA(self, className)))

    def IsTypeOf(self, className: str) -> int:
        return self.IsA(className)

    def GetNodeTagName(self) -> str:
        return type(self)._tag

    def GetDefaultNodeNamePrefix(self) -> str:
        """What a nameless node is named after when added (the tag; markups say "F", ...)."""
        return self.GetNodeTagName()

    def CreateNodeInstance(self) -> "vtkMRMLNode":
        return type(self)()

    def GetID(self) -> Optional[str]:
        return self._id

    def SetID(self, nodeID: Optional[str]) -> None:
        if nodeID != self._id:
            self._id = nodeID
            self.Modified()

    def GetName(self) -> Optional[str]:
        return self._name

    def SetName(self, name: Optional[str]) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError("SetName argument 1: expected a string")
        if name != self._name:
            self._name = name
            self.Modified()

    def GetSingletonTag(self) -> Optional[str]:
        return self._singletonTag

    def SetSingletonTag(self, tag: Optional[str]) -> None:
        self._singletonTag = tag or None

    def IsSingleton(self) -> bool:
        return self._singletonTag is not None

    def GetScene(self) -> Optional["vtkMRMLScene"]:
        return self._scene

    def SetScene(self, scene: Optional["vtkMRMLScene"]) -> None:
        self._scene = scene

    def GetDescription(self) -> Optional[str]:
        return self._description

    def SetDescription(self, text: Optional[str]) -> None:
        if text != self._description:
            self._description = text
            self.Modified()

    def GetHideFromEditors(self) -> int:
        return self._hideFromEditors

    def SetHideFromEditors(self, value: int) -> None:
        value = int(bool(value))
        if value != self._hideFromEditors:
            self._hideFromEditors = value
            self.Modified()

    def HideFromEditorsOn(self) -> None:
        self.SetHideFromEditors(1)

    def HideFromEditorsOff(self) -> None:
        self.SetHideFromEditors(0)

    def GetSelectable(self) -> int:
        return self._selectable

    def SetSelectable(self, value: int) -> None:
        self._selectable = int(bool(value))

    # -- attributes -----------------------------------------------------------------------
    def SetAttribute(self, name: str, value: Optional[str]) -> None:
        if value is None:
            self.RemoveAttribute(name)
            return
        if self._attributes.get(name) != str(value):
            self._attributes[name] = str(value)
            self.Modified()

    def GetAttribute(self, name: str) -> Optional[str]:
        return self._attributes.get(name)

    def RemoveAttribute(self, name: str) -> None:
        if name in self._attributes:
            del self._attributes[name]
            self.Modified()

    def GetAttributeNames(self) -> tuple:
        return tuple(self._attributes)

    # -- node references ------------------------------------------------------------------
    def SetNodeReferenceID(self, role: str, nodeID: Optional[str]) -> None:
        new = [nodeID] if nodeID else []
        if self._references.get(role, []) != new:
            if new:
                self._references[role] = new
            else:
                self._references.pop(role, None)
            self.Modified()

    SetAndObserveNodeReferenceID = SetNodeReferenceID

    def AddNodeReferenceID(self, role: str, nodeID: str) -> None:
        if nodeID:
            self._references.setdefault(role, []).append(nodeID)
            self.Modified()

    AddAndObserveNodeReferenceID = AddNodeReferenceID

    def GetNodeReferenceID(self, role: str) -> Optional[str]:
        ids = self._references.get(role)
        return ids[0] if ids else None

    def GetNthNodeReferenceID(self, role: str, n: int) -> Optional[str]:
        ids = self._references.get(role, [])
        return ids[n] if 0 <= n < len(ids) else None

    def GetNumberOfNodeReferences(self, role: str) -> int:
        return len(self._references.get(role, []))

    def GetNodeReference(self, role: str) -> Optional["vtkMRMLNode"]:
        return self.GetNthNodeReference(role, 0)

    def GetNthNodeReference(self, role: str, n: int) -> Optional["vtkMRMLNode"]:
        nodeID = self.GetNthNodeReferenceID(role, n)
        if nodeID is None or self._scene is None:
            return None
        return self._scene.GetNodeByID(nodeID)

    def RemoveNodeReferenceIDs(self, role: str) -> None:
        if self._references.pop(role, None):
            self.Modified()

    def GetNodeReferenceRoles(self) -> tuple:
        return tuple(self._references)

    def _forgetReferencesTo(self, nodeID: str) -> None:
        # The scene drops references to a removed node from every other node.
        changed = False
        for role in list(self._references):
            ids = [i for i in self._references[role] if i != nodeID]
            if len(ids) != len(self._references[role]):
                changed = True
                if ids:
                    self._references[role] = ids
                else:
                    del self._references[role]
        if changed:
            self.Modified()

    # -- modified events ------------------------------------------------------------------
    def Modified(self) -> None:
        if self._disableModified:
            self._modifiedPending += 1
            return
        self._beforeModifiedEvent()
        vtk.vtkObject.Modified(self)

    def _beforeModifiedEvent(self) -> None:
        """Hook for nodes that observe themselves (e.g. auto window/level)."""

    def StartModify(self) -> int:
        previous = self._disableModified
        self._disableModified = 1
        return previous

    def EndModify(self, previous: int) -> int:
        self._disableModified = previous
        pending = self._modifiedPending
        if not previous and pending:
            self._modifiedPending = 0
            self.Modified()
        return pending

    def GetDisableModifiedEvent(self) -> int:
        return self._disableModified

    def SetDisableModifiedEvent(self, value: int) -> None:
        self._disableModified = int(bool(value))

    def InvokeCustomModifiedEvent(self, event: int, callData=None) -> None:
        if callData is None:
            self.InvokeEvent(event)
        else:
            self.InvokeEvent(event, callData)

    # -- copy / reset ---------------------------------------------------------------------
    def Copy(self, node: "vtkMRMLNode") -> None:
        """Copies name, attributes, description and class content; not ID or scene."""
        wasModifying = self.StartModify()
        if node.GetName():
            self.SetName(node.GetName())
        self._attributes = dict(node._attributes)
        self._description = node._description
        self._hideFromEditors = node._hideFromEditors
        self._copyContent(node)
        self.Modified()
        self.EndModify(wasModifying)

    def CopyContent(self, node: "vtkMRMLNode", deepCopy: bool = True) -> None:
        self._copyContent(node)
        self.Modified()

    def _copyContent(self, node: "vtkMRMLNode") -> None:
        """Class-specific content; subclasses extend."""

    def Reset(self, defaultNode: Optional["vtkMRMLNode"] = None) -> None:
        """Back to a new node's content; ID, name, scene and singleton tag are kept.

        slicer-api.md is silent on Reset; this is what Clear(0) does to singletons
        (getParameterNode restores the ModuleName attribute afterwards for this reason).
        """
        wasModifying = self.StartModify()
        fresh = defaultNode if defaultNode is not None else self.CreateNodeInstance()
        self._attributes = dict(fresh._attributes)
        self._references = {}
        self._description = fresh._description
        self._copyContent(fresh)
        self.Modified()
        self.EndModify(wasModifying)

    def UpdateScene(self, scene: "vtkMRMLScene") -> None:
        pass


class vtkMRMLStorageNode(vtkMRMLNode):
    _tag = "Storage"

    def __init__(self) -> None:
        super().__init__()
        self._fileName: Optional[str] = None
        self._useCompression = 1

    def SetFileName(self, fileName: Optional[str]) -> None:
        if fileName != self._fileName:
            self._fileName = fileName
            self.Modified()

    def GetFileName(self) -> Optional[str]:
        return self._fileName

    def GetUseCompression(self) -> int:
        return self._useCompression

    def SetUseCompression(self, value: int) -> None:
        self._useCompression = int(bool(value))

    def _copyContent(self, node: vtkMRMLNode) -> None:
        self._fileName = getattr(node, "_fileName", None)


class vtkMRMLStorableNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self._storableModifiedCount = 0

    def GetStorageNode(self) -> Optional[vtkMRMLStorageNode]:
        return self.GetNodeReference("storage")  # type: ignore[return-value]

    def GetStorageNodeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("storage")

    def SetAndObserveStorageNodeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("storage", nodeID)

    def GetNumberOfStorageNodes(self) -> int:
        return self.GetNumberOfNodeReferences("storage")

    def StorableModified(self) -> None:
        self._storableModifiedCount += 1

    def GetModifiedSinceRead(self) -> bool:
        return self._storableModifiedCount > 0


class vtkMRMLTransformableNode(vtkMRMLStorableNode):
    """A node that may sit under a transform node (slicer-api.md sections 2 "Parent transforms"
    and MUST item 11).

    Its own coordinates (IJK-to-RAS, control points, ...) are *local*; world = the chain of parent
    transforms applied to local. Only linear transforms are modelled (vtkMRMLLinearTransformNode);
    the world matrix is the product of each ancestor's matrix-to-parent, innermost last.
    """

    TransformModifiedEvent = 15000

    def GetParentTransformNode(self):
        return self.GetNodeReference("transform")

    def GetTransformNodeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("transform")

    def SetAndObserveTransformNodeID(self, nodeID: Optional[str]) -> bool:
        """False (and nothing changes) if that would make a node its own ancestor."""
        if nodeID and self._scene is not None:
            ancestor = self._scene.GetNodeByID(nodeID)
            while ancestor is not None:
                if ancestor is self:
                    logger.error("SetAndObserveTransformNodeID: a transform cannot be its own parent")
                    return False
                ancestor = ancestor.GetParentTransformNode() if isinstance(ancestor, vtkMRMLTransformableNode) else None
        self.SetNodeReferenceID("transform", nodeID)
        self.InvokeEvent(self.TransformModifiedEvent)
        return True

    def _toWorld(self) -> np.ndarray:
        """4x4 local -> world of this node (identity without a parent transform)."""
        parent = self.GetParentTransformNode()
        if parent is None:
            return np.eye(4)
        return parent._transformToWorld()

    def TransformPointToWorld(self, inLocal, outWorld=None):
        """Fills ``outWorld`` (3 values) from a local point; without it, returns the world point."""
        world = (self._toWorld() @ np.append(np.asarray(inLocal, dtype=float)[:3], 1.0))[:3]
        if outWorld is None:
            return tuple(float(v) for v in world)
        for i in range(3):
            outWorld[i] = float(world[i])
        return None

    def TransformPointFromWorld(self, inWorld, outLocal=None):
        local = (np.linalg.inv(self._toWorld()) @ np.append(np.asarray(inWorld, dtype=float)[:3], 1.0))[:3]
        if outLocal is None:
            return tuple(float(v) for v in local)
        for i in range(3):
            outLocal[i] = float(local[i])
        return None

    def CanApplyNonLinearTransforms(self) -> bool:
        return False

    def ApplyTransformMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        """Moves the node's own (local) coordinates by ``matrix``; subclasses implement it."""
        raise NotImplementedError("%s: ApplyTransformMatrix is not modelled by the stand-in" % self.GetClassName())

    def HardenTransform(self) -> None:
        """Bakes the parent transforms into the node's own coordinates and detaches it, so that
        world positions stay where they were."""
        if self.GetParentTransformNode() is None:
            return
        toWorld = vtk.vtkMatrix4x4()
        toWorld.DeepCopy(self._toWorld().ravel())
        self.ApplyTransformMatrix(toWorld)
        self.SetAndObserveTransformNodeID(None)


def matrix_of(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


class vtkMRMLDisplayableNode(vtkMRMLTransformableNode):
    DisplayModifiedEvent = 17000

    def GetDisplayNode(self) -> Optional["vtkMRMLDisplayNode"]:
        return self.GetNthDisplayNode(0)

    def GetNthDisplayNode(self, n: int) -> Optional["vtkMRMLDisplayNode"]:
        return self.GetNthNodeReference("display", n)  # type: ignore[return-value]

    def GetDisplayNodeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("display")

    def GetNthDisplayNodeID(self, n: int) -> Optional[str]:
        return self.GetNthNodeReferenceID("display", n)

    def GetNumberOfDisplayNodes(self) -> int:
        return self.GetNumberOfNodeReferences("display")

    def SetAndObserveDisplayNodeID(self, nodeID: Optional[str]) -> None:
        self.SetNodeReferenceID("display", nodeID)
        self._onDisplayNodeChanged()

    def AddAndObserveDisplayNodeID(self, nodeID: str) -> None:
        self.AddNodeReferenceID("display", nodeID)
        self._onDisplayNodeChanged()

    def RemoveAllDisplayNodeIDs(self) -> None:
        self.RemoveNodeReferenceIDs("display")

    def _onDisplayNodeChanged(self) -> None:
        """Hook: volumes hand their image to a newly observed display node."""

    def CreateDefaultDisplayNodes(self) -> None:
        pass

    def _addDefaultDisplayNode(self, displayClass: type) -> None:
        """What each CreateDefaultDisplayNodes does: idempotent, needs a scene (section 2); the
        display node's default colour map is set when it has one."""
        if isinstance(self.GetDisplayNode(), displayClass):
            return
        if self.GetScene() is None:
            logger.error("%s::CreateDefaultDisplayNodes failed: scene is invalid", self.GetClassName())
            return
        display = displayClass()
        if hasattr(display, "SetDefaultColorMap"):
            display.SetDefaultColorMap()
        self.GetScene().AddNode(display)
        self.SetAndObserveDisplayNodeID(display.GetID())

    def SetDisplayVisibility(self, visible: int) -> None:
        for i in range(self.GetNumberOfDisplayNodes()):
            node = self.GetNthDisplayNode(i)
            if node is not None:
                node.SetVisibility(visible)

    def GetDisplayVisibility(self) -> int:
        node = self.GetDisplayNode()
        return node.GetVisibility() if node is not None else 0


class vtkMRMLDisplayNode(vtkMRMLNode):
    _tag = "Display"

    def __init__(self) -> None:
        super().__init__()
        self._visibility = 1
        self._visibility2D = 1
        self._visibility3D = 1
        self._opacity = 1.0
        self._color = (0.5, 0.5, 0.5)

    def _copyContent(self, node: vtkMRMLNode) -> None:
        for key in ("_visibility", "_visibility2D", "_visibility3D", "_opacity", "_color"):
            if hasattr(node, key):
                setattr(self, key, getattr(node, key))

    def SetAndObserveColorNodeID(self, colorNodeID: Optional[str]) -> None:
        # Any string is accepted; an unknown ID simply resolves to None (section 2).
        self.SetNodeReferenceID("colorNodeID", colorNodeID)

    def GetColorNodeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("colorNodeID")

    def GetColorNode(self):
        return self.GetNodeReference("colorNodeID")

    def GetDisplayableNode(self) -> Optional[vtkMRMLDisplayableNode]:
        if self._scene is None or self._id is None:
            return None
        for node in self._scene._nodes:
            if isinstance(node, vtkMRMLDisplayableNode) and self._id in node._references.get("display", []):
                return node
        return None

    def _set(self, attribute: str, value) -> None:
        if getattr(self, attribute) != value:
            setattr(self, attribute, value)
            self.Modified()

    def SetVisibility(self, value: int) -> None:
        self._set("_visibility", int(bool(value)))

    def GetVisibility(self) -> int:
        return self._visibility

    def VisibilityOn(self) -> None:
        self.SetVisibility(1)

    def VisibilityOff(self) -> None:
        self.SetVisibility(0)

    def SetVisibility2D(self, value: int) -> None:
        self._set("_visibility2D", int(bool(value)))

    def GetVisibility2D(self) -> int:
        return self._visibility2D

    def SetVisibility3D(self, value: int) -> None:
        self._set("_visibility3D", int(bool(value)))

    def GetVisibility3D(self) -> int:
        return self._visibility3D

    def SetOpacity(self, value: float) -> None:
        self._set("_opacity", float(value))

    def GetOpacity(self) -> float:
        return self._opacity

    def SetColor(self, *rgb) -> None:
        if len(rgb) == 1:
            rgb = tuple(rgb[0])
        self._set("_color", tuple(float(c) for c in rgb[:3]))

    def GetColor(self) -> tuple:
        return self._color


class vtkMRMLScene(vtk.vtkObject):
    """Node container with Slicer's ID/name generation, singletons, events and Clear()."""

    NodeAboutToBeAddedEvent = 0x2000
    NodeAddedEvent = 0x2001
    NodeAboutToBeRemovedEvent = 0x2002
    NodeRemovedEvent = 0x2003
    NewSceneEvent = 66030

    BatchProcessState = 0x0001
    CloseState = 0x0002 | 0x0001
    ImportState = 0x0004 | 0x0001
    RestoreState = 0x0008 | 0x0001
    SaveState = 0x0010

    StateEvent = 0x2000
    StartEvent = 0x0100
    EndEvent = 0x0200
    ProgressEvent = 0x0400
    StartBatchProcessEvent = 0x2000 | 0x0100 | 0x0001
    EndBatchProcessEvent = 0x2000 | 0x0200 | 0x0001
    StartCloseEvent = 0x2000 | 0x0100 | 0x0003
    EndCloseEvent = 0x2000 | 0x0200 | 0x0003
    StartImportEvent = 0x2000 | 0x0100 | 0x0005
    EndImportEvent = 0x2000 | 0x0200 | 0x0005
    StartSaveEvent = 0x2000 | 0x0100 | 0x0010
    EndSaveEvent = 0x2000 | 0x0200 | 0x0010

    def __init__(self) -> None:
        super().__init__()
        self._nodes: List[vtkMRMLNode] = []
        self._byID: Dict[str, vtkMRMLNode] = {}
        self._uniqueIDs: Dict[str, int] = {}
        self._uniqueNames: Dict[str, int] = {}
        self._states: List[int] = []
        self._registered: Dict[str, type] = {}
        self._url = ""
        self._rootDirectory = "."

    def GetClassName(self) -> str:
        return "vtkMRMLScene"

    def IsA(self, className: str) -> int:
        return int(className in ("vtkMRMLScene", "vtkObject", "vtkObjectBase"))

    # -- node classes ---------------------------------------------------------------------
    def RegisterNodeClass(self, node: vtkMRMLNode, tagName: Optional[str] = None) -> None:
        self._registered[node.GetClassName()] = type(node)

    def _nodeClass(self, className: str) -> Optional[type]:
        return self._registered.get(className) or NODE_CLASSES.get(className)

    def CreateNodeByClass(self, className: str) -> Optional[vtkMRMLNode]:
        """Returns a new node *with an extra reference*, like the C++ factory method.

        Slicer code therefore calls ``node.UnRegister(None)`` after it (see
        ScriptedLoadableModuleLogic.createParameterNode); without that the node leaks, as in Slicer.
        """
        cls = self._nodeClass(className)
        if cls is None:
            logger.error("CreateNodeByClass: unknown class %s", className)
            return None
        node = cls()
        node.Register(None)
        return node

    def AddNewNodeByClass(self, className: str, nodeBaseName: str = "") -> Optional[vtkMRMLNode]:
        cls = self._nodeClass(className)
        if cls is None:
            logger.error("AddNewNodeByClass: failed to create node by class %s", className)
            return None
        node = cls()
        if nodeBaseName:
            # Not made unique, despite the header comment (slicer-api.md section 2).
            node.SetName(nodeBaseName)
        return self.AddNode(node)

    # -- adding / removing ----------------------------------------------------------------
    def AddNode(self, node: Optional[vtkMRMLNode]) -> Optional[vtkMRMLNode]:
        if node is None:
            return None
        if node in self._nodes:
            logger.warning("AddNode: node %s is already in the scene", node.GetID())
            return node
        tag = node.GetSingletonTag()
        if tag:
            existing = self.GetSingletonNode(tag, node.GetClassName())
            if existing is not None:
                # A singleton is never duplicated: its content is overwritten instead.
                existing.Copy(node)
                return existing
        self.InvokeEvent(self.NodeAboutToBeAddedEvent, node)
        if not node.GetName():
            node.SetName(self.GenerateUniqueName(node.GetDefaultNodeNamePrefix()))
        if not node.GetID() or node.GetID() in self._byID:
            node._id = self._generateUniqueID(node)
        node.SetScene(self)
        self._nodes.append(node)
        self._byID[node.GetID()] = node  # type: ignore[index]
        self.InvokeEvent(self.NodeAddedEvent, node)
        self.Modified()
        return node

    def _generateUniqueID(self, node: vtkMRMLNode) -> str:
        baseID = node.GetClassName()
        if node.GetSingletonTag():
            return baseID + node.GetSingletonTag()  # type: ignore[operator]
        index = self._uniqueIDs.get(baseID, 0) + 1
        while baseID + str(index) in self._byID:
            index += 1
        self._uniqueIDs[baseID] = index
        return baseID + str(index)

    def RemoveNode(self, node: Optional[vtkMRMLNode]) -> None:
        """Removes only this node: its display and storage nodes stay (section 2)."""
        if node is None or node not in self._nodes:
            return
        self.InvokeEvent(self.NodeAboutToBeRemovedEvent, node)
        self._nodes.remove(node)
        self._byID.pop(node.GetID(), None)  # type: ignore[arg-type]
        for other in self._nodes:
            other._forgetReferencesTo(node.GetID())  # type: ignore[arg-type]
        node.SetScene(None)
        self.InvokeEvent(self.NodeRemovedEvent, node)
        self.Modified()

    def IsNodePresent(self, node: vtkMRMLNode) -> int:
        return self._nodes.index(node) + 1 if node in self._nodes else 0

    # -- names ----------------------------------------------------------------------------
    def GenerateUniqueName(self, baseName: str) -> str:
        """``base``, then ``base_1``, ``base_2``… skipping names in use (GetUniqueNameIndex)."""
        index = self._uniqueNames.get(baseName, -1) + 1
        while True:
            candidate = baseName if index == 0 else "%s_%d" % (baseName, index)
            if self.GetFirstNodeByName(candidate) is None:
                break
            index += 1
        self._uniqueNames[baseName] = index
        return candidate

    def GetUniqueNameByString(self, baseName: str) -> str:
        return self.GenerateUniqueName(baseName)

    # -- lookup ---------------------------------------------------------------------------
    def GetNodeByID(self, nodeID: Optional[str]) -> Optional[vtkMRMLNode]:
        if not nodeID:
            return None
        return self._byID.get(nodeID)

    def GetNumberOfNodes(self) -> int:
        return len(self._nodes)

    def GetNthNode(self, n: int) -> Optional[vtkMRMLNode]:
        return self._nodes[n] if 0 <= n < len(self._nodes) else None

    def _byClass(self, className: str) -> List[vtkMRMLNode]:
        return [n for n in self._nodes if n.IsA(className)]

    def GetNumberOfNodesByClass(self, className: str) -> int:
        return len(self._byClass(className))

    def GetNthNodeByClass(self, n: int, className: str) -> Optional[vtkMRMLNode]:
        nodes = self._byClass(className)
        return nodes[n] if 0 <= n < len(nodes) else None

    def _newCollection(self, nodes: Iterable[vtkMRMLNode]) -> vtk.vtkCollection:
        collection = vtk.vtkCollection()
        for node in nodes:
            collection.AddItem(node)
        # The C++ method returns a new collection that the caller owns; Python callers must
        # UnRegister it (slicer.util.getNodesByClass does), so hand out the same extra reference.
        collection.Register(self)
        return collection

    def GetNodesByClass(self, className: str) -> vtk.vtkCollection:
        return self._newCollection(self._byClass(className))

    def GetNodesByName(self, name: str) -> vtk.vtkCollection:
        return self._newCollection(n for n in self._nodes if n.GetName() == name)

    def GetNodesByClassByName(self, className: str, name: str) -> vtk.vtkCollection:
        return self._newCollection(n for n in self._nodes if n.GetName() == name and n.IsA(className))

    def GetNodes(self) -> vtk.vtkCollection:
        collection = vtk.vtkCollection()
        for node in self._nodes:
            collection.AddItem(node)
        return collection

    def GetFirstNode(self, byName: Optional[str] = None, byClass: Optional[str] = None,
                     exactNameMatch: bool = True, caseSensitive: bool = True) -> Optional[vtkMRMLNode]:
        for node in self._nodes:
            if byClass and not node.IsA(byClass):
                continue
            if byName is not None:
                name = node.GetName() or ""
                wanted = byName
                if not caseSensitive:
                    name, wanted = name.lower(), wanted.lower()
                if exactNameMatch and name != wanted:
                    continue
                if not exactNameMatch and not name.startswith(wanted):
                    continue
            return node
        return None

    def GetFirstNodeByName(self, name: str) -> Optional[vtkMRMLNode]:
        return self.GetFirstNode(name, None)

    def GetFirstNodeByClass(self, className: str) -> Optional[vtkMRMLNode]:
        return self.GetFirstNode(None, className)

    def GetSingletonNode(self, singletonTag: str, className: str) -> Optional[vtkMRMLNode]:
        for node in self._nodes:
            if node.GetSingletonTag() == singletonTag and node.IsA(className):
                return node
        return None

    # -- states and Clear -----------------------------------------------------------------
    def GetStates(self) -> int:
        states = 0
        for s in self._states:
            states |= s
        return states

    def _inState(self, state: int) -> bool:
        return (self.GetStates() & state) == state

    def IsBatchProcessing(self) -> bool:
        return self._inState(self.BatchProcessState)

    def IsClosing(self) -> bool:
        return self._inState(self.CloseState)

    def IsImporting(self) -> bool:
        return self._inState(self.ImportState)

    def StartState(self, state: int, anticipatedMaxProgress: int = 0) -> None:
        wasBatch = self.IsBatchProcessing()
        wasInState = self._inState(state)
        self._states.append(state)
        if self.IsBatchProcessing() and not wasBatch:
            self.InvokeEvent(self.StateEvent | self.StartEvent | self.BatchProcessState)
        if state != self.BatchProcessState and not wasInState:
            self.InvokeEvent(self.StateEvent | self.StartEvent | state)

    def EndState(self, state: int) -> None:
        if not self._states:
            logger.error("vtkMRMLScene::EndState failed: there was no previous state")
            return
        self._states.pop()
        if state != self.BatchProcessState and not self._inState(state):
            self.InvokeEvent(self.StateEvent | self.EndEvent | state)
        if (state & self.BatchProcessState) and not self.IsBatchProcessing():
            self.InvokeEvent(self.StateEvent | self.EndEvent | self.BatchProcessState)

    def Clear(self, removeSingletons: int = 0) -> None:
        """Removes every node (singletons too if asked), resets the kept singletons and the
        ID/name counters, between StartCloseEvent and EndCloseEvent."""
        self.StartState(self.CloseState)
        for node in list(self._nodes):
            if removeSingletons or node.GetSingletonTag() is None:
                self.RemoveNode(node)
        for node in list(self._nodes):
            node.Reset(None)
        self._uniqueIDs.clear()
        self._uniqueNames.clear()
        self.Modified()
        self.EndState(self.CloseState)

    # -- misc -----------------------------------------------------------------------------
    def GetURL(self) -> str:
        return self._url

    def SetURL(self, url: str) -> None:
        self._url = url

    def GetRootDirectory(self) -> str:
        return self._rootDirectory

    def SetRootDirectory(self, path: str) -> None:
        self._rootDirectory = path

