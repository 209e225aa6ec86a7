"""Output nodes of a CTExplain run: heat maps, label map with its colour table, segmentation and
findings table, placed on the input's grid *and under the input's parent transform*, so they
are shown where the input is shown (slicer-api.md section 2, "Parent transforms")."""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import vtk

LOG = logging.getLogger(__name__)

INPUT_ATTRIBUTE = "CTExplain.InputNodeID"  # marks output nodes with the node they explain
HEAT_MAP_COLOR_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
HEAT_MAP_OPACITY = 0.5


def ijkToRASArray(volumeNode) -> np.ndarray:
    """The node's (local) IJK-to-RAS matrix as a 4x4 numpy array (the getter needs an out-argument)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(volumeNode):
    """A core Volume from a scalar volume node: a *copy* of its (K, J, I) voxels (so the node is
    never touched) and its local IJK-to-RAS, turned into the core's LPS grid by
    Volume.from_ijk_to_ras. The parent transform is not baked in: outputs go under it instead."""
    import slicer
    from CTExplainLib.volume import Volume

    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    return Volume.from_ijk_to_ras(array, ijkToRASArray(volumeNode), metadata={"source": volumeNode.GetName()})


def toWorld(node):
    """A function mapping the node's local RAS points to world RAS (through its parent transforms,
    linear or not), as the findings table shows them."""
    def apply(point: Sequence[float]) -> Tuple[float, float, float]:
        out = [0.0, 0.0, 0.0]
        node.TransformPointToWorld([float(v) for v in point], out)
        return (out[0], out[1], out[2])
    return apply


# -- scene bookkeeping ------------------------------------------------------------------------
def nodeIDs() -> List[str]:
    import slicer

    scene = slicer.mrmlScene
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def removeNodesAddedSince(before: Sequence[str]) -> None:
    """Whatever was added (including display nodes and half-built nodes) goes again."""
    import slicer

    scene, known = slicer.mrmlScene, set(before)
    for nodeID in reversed([n for n in nodeIDs() if n not in known]):
        node = scene.GetNodeByID(nodeID)
        if node is not None:
            scene.RemoveNode(node)


def outputNodes(inputVolumeNode) -> List[Any]:
    """The nodes an earlier run made for this input (found by their attribute)."""
    import slicer

    scene, inputID = slicer.mrmlScene, inputVolumeNode.GetID()
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [n for n in nodes if n.GetAttribute(INPUT_ATTRIBUTE) == inputID]


def removeOutputs(inputVolumeNode, keep: Set[str] = frozenset()) -> None:
    """Remove this input's outputs and their display/storage nodes (RemoveNode leaves those)."""
    import slicer

    scene = slicer.mrmlScene
    for node in outputNodes(inputVolumeNode):
        if node.GetID() in keep:
            continue
        owned = []
        if node.IsA("vtkMRMLDisplayableNode"):
            owned += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            owned.append(node.GetStorageNode())
        for other in owned + [node]:
            if other is not None and scene.IsNodePresent(other):
                scene.RemoveNode(other)


def isModuleOutput(node) -> bool:
    return node is not None and node.GetAttribute(INPUT_ATTRIBUTE) is not None


def outputVolumeIDs() -> List[str]:
    """IDs of the scalar volumes CTExplain made (heat maps): the input selector hides them."""
    import slicer

    return [n.GetID() for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if isModuleOutput(n)]


def isInputCandidate(node) -> bool:
    """A plain scalar volume (not a label map) that CTExplain did not make itself."""
    return node is not None and node.GetClassName() == "vtkMRMLScalarVolumeNode" and not isModuleOutput(node)


# -- output nodes ------------------------------------------------------------------------------
def segmentEntries(segments: Sequence[Dict[str, Any]], labels: np.ndarray) -> List[Tuple[int, str, Tuple[float, ...]]]:
    """(label, name, rgb) for every non-zero label value in ``labels``, plus the named segments.

    A value present in the label map without a segment entry would get an *empty* segment name
    in Slicer (its colour table has no name for it): it is named "label <v>" with a colour of its
    own, and a warning says so. The core's segments name every class, so this is a safety net."""
    entries = {int(s["label"]): (str(s["name"]), tuple(float(c) for c in s["color"])) for s in segments}
    present = [int(v) for v in np.unique(labels) if v != 0]
    unnamed = [v for v in present if v not in entries or not entries[v][0]]
    if unnamed:
        LOG.warning("CTExplain: label values %s have no segment name; named 'label <value>'", unnamed)
    for value in unnamed:
        hue = (0.618033988749895 * value) % 1.0  # golden-ratio hues: distinct colours
        entries[value] = (f"label {value}", tuple(float(c) for c in _hsv(hue)))
    return [(label, name, color) for label, (name, color) in sorted(entries.items())]


def _hsv(hue: float) -> Tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(hue, 0.6, 0.9)


def addHeatMap(inputVolumeNode, name: str, heat: np.ndarray):
    import slicer

    node = slicer.util.addVolumeFromArray(np.asarray(heat, dtype=np.float32), ijkToRAS=ijkToRASArray(inputVolumeNode),
                                          name=name, nodeClassName="vtkMRMLScalarVolumeNode")
    node.SetAndObserveTransformNodeID(inputVolumeNode.GetTransformNodeID())
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(HEAT_MAP_COLOR_ID)
    display.AutoWindowLevelOff()  # else any Modified() recomputes the window from percentiles
    display.SetWindowLevelMinMax(0.0, 1.0)
    return node


def addColorTable(name: str, entries: Sequence[Tuple[int, str, Tuple[float, ...]]]):
    """A user colour table naming every label value; *shown to editors*, so that Slicer's save
    writes it with the scene (colour nodes start hidden and hidden ones are skipped)."""
    import slicer

    colorTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    colorTable.HideFromEditorsOff()
    colorTable.SetTypeToUser()  # names from the package, not the built-in "Labels" ("jake")
    colorTable.SetNumberOfColors(max([label for label, _, _ in entries] + [0]) + 1)
    colorTable.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for label, segmentName, color in entries:
        colorTable.SetColor(label, segmentName, *color[:3], 1.0)
    return colorTable


def addLabelOutputs(inputVolumeNode, base: str, labels: np.ndarray, segments: Sequence[Dict[str, Any]],
                    tag) -> Tuple[Any, Any, Any]:
    """(colour table, label map, segmentation) for one run's labels, under the input's transform."""
    import slicer
    from CTExplainLib.writing import label_array

    transformID = inputVolumeNode.GetTransformNodeID()
    colorTable = tag(addColorTable(f"{base} CTExplain colors", segmentEntries(segments, labels)))
    labelMap = tag(slicer.util.addVolumeFromArray(label_array(labels), ijkToRAS=ijkToRASArray(inputVolumeNode),  # uint8/16
                                                  name=f"{base} CTExplain labels", nodeClassName="vtkMRMLLabelMapVolumeNode"))
    labelMap.SetAndObserveTransformNodeID(transformID)
    labelMap.GetDisplayNode().SetAndObserveColorNodeID(colorTable.GetID())
    segmentation = tag(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{base} CTExplain segmentation"))
    segmentation.SetAndObserveTransformNodeID(transformID)  # before the import, which goes through both transforms
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolumeNode)
    if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelMap, segmentation):
        raise RuntimeError(f"CTExplain: could not import the label map of {base} into a segmentation")
    return colorTable, labelMap, segmentation


def fillTable(table, findings: Sequence[Dict[str, Any]], peakToShown=None, columns=None) -> None:
    """The columns of ``CTExplainLib.findings_table`` (or ``columns`` of that form, such as the
    points table's) as VTK arrays of ``table``."""
    from CTExplainLib.findings_table import findings_table

    for title, kind, values in columns if columns is not None else findings_table(findings, peak_ras_to_shown=peakToShown):
        column = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
        for value in values:
            column.InsertNextValue(value)
        column.SetName(title)
        table.AddColumn(column)


def addOutputs(inputVolumeNode, record: Dict[str, Any], heatMaps: Iterable[Tuple[str, np.ndarray]],
               labels: Optional[np.ndarray]) -> Dict[str, Any]:
    """Nodes for one run, the same from both paths: ``record`` is result.json's shape (findings
    with probabilities and anatomy, segments); arrays are (K, J, I) on the input's grid."""
    import slicer

    inputID, base = inputVolumeNode.GetID(), inputVolumeNode.GetName()
    nodes: List[Any] = []

    def tag(node):
        node.SetAttribute(INPUT_ATTRIBUTE, inputID)
        nodes.append(node)
        return node

    heatMapNodes = {name: tag(addHeatMap(inputVolumeNode, f"{base} CTExplain {name}", heat)) for name, heat in heatMaps}
    labelMap = segmentation = colorTable = None
    if labels is not None:
        colorTable, labelMap, segmentation = addLabelOutputs(inputVolumeNode, base, labels, record.get("segments", []), tag)

    findings = record.get("findings", [])
    probabilities = {f["name"]: float(f["probability"]) for f in findings}
    anatomy = {f["name"]: f["anatomy"] for f in findings if f.get("anatomy") is not None}
    table = tag(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{base} CTExplain findings"))
    fillTable(table, findings, toWorld(inputVolumeNode))  # "Peak RAS" where the CT is shown
    top = max(heatMapNodes, key=lambda n: probabilities[n]) if heatMapNodes else None
    return {"input": inputVolumeNode, "heatMaps": heatMapNodes, "labelMap": labelMap, "segmentation": segmentation,
            "colorTable": colorTable, "table": table, "probabilities": probabilities, "anatomy": anatomy,
            "topFinding": top, "record": record, "nodes": nodes}


def worldToLocal(node) -> Optional[np.ndarray]:
    """World RAS -> the node's own RAS, 4x4: the inverse of its parent transforms (None without one)."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return None
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return np.linalg.inv(np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]))


def addPointOutputs(inputVolumeNode, grid, analyses) -> Dict[str, Any]:
    """Nodes for points explained on ``inputVolumeNode`` (``CTExplainLib.points`` analyses on its
    ``grid``): per explained point the top class's heat map and the nodule label map, under the
    input's transform, and one table row per point; all of them or, on a failure, none."""
    import slicer
    from CTExplainLib.points.markups import points_table

    before, base = nodeIDs(), inputVolumeNode.GetName()
    nodes: List[Any] = []
    points: Dict[str, Dict[str, Any]] = {}
    try:
        for analysis in analyses:
            entry: Dict[str, Any] = {"record": analysis.record, "heatMap": None, "nodule": None}
            if analysis.ok:
                top = int(np.argmax(analysis.classification.probabilities))
                entry["heatMap"] = addHeatMap(inputVolumeNode, f"{base} CTExplain point {analysis.point.id}", analysis.heat_map(top, grid))
                entry["nodule"] = slicer.util.addVolumeFromArray(analysis.nodule_labels(grid), ijkToRAS=ijkToRASArray(inputVolumeNode),
                                                                 name=f"{base} CTExplain nodule {analysis.point.id}",
                                                                 nodeClassName="vtkMRMLLabelMapVolumeNode")
                entry["nodule"].SetAndObserveTransformNodeID(inputVolumeNode.GetTransformNodeID())
                nodes += [entry["heatMap"], entry["nodule"]]
            points[analysis.point.id] = entry
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{base} CTExplain points")
        fillTable(table, [], columns=points_table(analyses))
        nodes.append(table)
    except Exception:
        removeNodesAddedSince(before)
        raise
    for node in nodes:
        node.SetAttribute(INPUT_ATTRIBUTE, inputVolumeNode.GetID())
    return {"input": inputVolumeNode, "table": table, "points": points, "nodes": nodes,
            "heatMaps": {label: p["heatMap"] for label, p in points.items() if p["heatMap"] is not None}}


def replaceOutputs(inputVolumeNode, results: Dict[str, Any]) -> None:
    """Earlier outputs of this input go; the top finding's heat map is shown over the input."""
    import slicer

    removeOutputs(inputVolumeNode, keep={node.GetID() for node in results["nodes"]})
    top = results["heatMaps"].get(results["topFinding"])
    slicer.util.setSliceViewerLayers(background=inputVolumeNode, foreground=top, foregroundOpacity=HEAT_MAP_OPACITY)
