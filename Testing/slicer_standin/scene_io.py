"""Saving and loading a whole scene as a Slicer data bundle (``.mrb``): ``slicer.util.saveScene``
and ``slicer.util.loadScene`` (slicer-api.md MUST item 12).

The bundle is a zip holding ``<stem>/<stem>.mrml`` and ``<stem>/Data/``, as Slicer's. Each
non-singleton node becomes one element of the .mrml file (class, ID, name, attributes, node
references, HideFromEditors and its simple properties); the data of storable nodes goes to a file
in Data/: volumes .nrrd, segmentations .seg.nrrd, tables .csv, colour tables .csv (Slicer's
colour-table CSV: LabelValue, Name, Color_R/G/B/A in 0-255), point lists .mrk.json. Linear
transforms keep their matrix in the .mrml element (Slicer writes an .h5 file; the stand-in does
not). Singletons (built-in colours, slice composites, selection, parameter nodes) are not saved:
a fresh scene has the built-in ones under the same IDs.

**Hidden storable nodes are skipped** (Slicer 5.8/5.10's save skips nodes with HideFromEditors,
slicer-api.md section 2 "Colour tables are hidden from editors by default"): their element is
written but their data file is not, so after loading they exist with no content (an error is
logged when their file is missing) - a colour table created by code and left hidden comes back
with no names and no colours.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from typing import Dict, List, Optional

import numpy as np

from .errors import StandInLimitation
from .mrml_colors import vtkMRMLColorNode, vtkMRMLColorTableNode
from .mrml_core import vtkMRMLNode, vtkMRMLScene, vtkMRMLStorableNode, vtkMRMLStorageNode
from .mrml_markups import vtkMRMLMarkupsNode
from .mrml_transforms import vtkMRMLTransformNode

logger = logging.getLogger("slicer_standin")

# Base-node fields written as element attributes, not as properties.
_BASE = {"_id", "_name", "_scene", "_singletonTag", "_description", "_hideFromEditors", "_selectable", "_attributes",
         "_references", "_disableModified", "_modifiedPending", "_storableModifiedCount",
         "_names"}  # a colour table's names live in its data file, as its colours do


def _simple(value) -> bool:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, (bool, int, float, str)) for v in value)
    return False


def _properties(node: vtkMRMLNode) -> Dict[str, object]:
    """The node's own simple fields (display settings, locks, label formats, ...)."""
    values = {k: v for k, v in vars(node).items() if k not in _BASE and _simple(v)}
    if isinstance(node, vtkMRMLTransformNode):
        values["_toParent"] = node._toParent.ravel().tolist()
    return values


def _set_properties(node: vtkMRMLNode, values: Dict[str, object]) -> None:
    for key, value in values.items():
        if key == "_toParent" and isinstance(node, vtkMRMLTransformNode):
            node._toParent = np.reshape(np.asarray(value, dtype=float), (4, 4))
        elif hasattr(node, key):
            setattr(node, key, tuple(value) if isinstance(value, list) else value)


# The data file of each writer's file type (fileWriterFileType), as Slicer names them.
_EXTENSIONS = {"VolumeFile": ".nrrd", "SegmentationFile": ".seg.nrrd", "TableFile": ".csv", "MarkupsFile": ".mrk.json"}


def _data_extension(node: vtkMRMLNode, io) -> Optional[str]:
    if isinstance(node, vtkMRMLColorTableNode):
        return ".csv" if node.GetType() in (node.User, node.File) else None
    return _EXTENSIONS.get(io.fileWriterFileType(node))


# -- colour tables (Slicer >= 5.4 CSV colour table) --------------------------------------------
def write_color_table(node: vtkMRMLColorTableNode, fileName: str) -> None:
    with open(fileName, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["LabelValue", "Name", "Color_R", "Color_G", "Color_B", "Color_A"])
        for i in range(node.GetNumberOfColors()):
            rgba = [0.0, 0.0, 0.0, 0.0]
            node.GetColor(i, rgba)
            writer.writerow([i, node.GetColorName(i)] + [int(round(255 * c)) for c in rgba])


def read_color_table(node: vtkMRMLColorTableNode, fileName: str) -> None:
    with open(fileName, newline="") as handle:
        rows = list(csv.DictReader(handle))
    node.SetTypeToUser()
    node.SetNumberOfColors(max([int(r["LabelValue"]) for r in rows] + [-1]) + 1)
    for row in rows:
        node.SetColor(int(row["LabelValue"]), row["Name"],
                      *[int(row["Color_" + c]) / 255.0 for c in ("R", "G", "B", "A")])
    node.NamesInitialisedOn()


# -- saving -----------------------------------------------------------------------------------
def _write_data(node: vtkMRMLNode, path: str, io) -> None:
    if isinstance(node, vtkMRMLColorTableNode):
        write_color_table(node, path)
        return
    properties = {"nodeID": node.GetID(), "fileName": path}
    if not io.saveNodes(io.fileWriterFileType(node), properties):
        raise RuntimeError("could not write %s" % path)


def save_scene_bundle(scene: vtkMRMLScene, fileName: str, io) -> None:
    """Writes ``fileName`` (.mrb); raises on failure (saveNodes turns that into False)."""
    if not fileName.lower().endswith(".mrb"):
        raise StandInLimitation("the stand-in saves scenes as .mrb bundles only")
    stem = os.path.basename(fileName)[: -len(".mrb")]
    work = tempfile.mkdtemp(prefix="mrb_")
    try:
        folder = os.path.join(work, stem)
        os.makedirs(os.path.join(folder, "Data"))
        root = ET.Element("MRML", version="Slicer5.8.1")
        used: set = set()
        for i in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(i)
            if node.GetSingletonTag() is not None or isinstance(node, vtkMRMLStorageNode):
                continue
            element = ET.SubElement(root, "Node", {
                "class": node.GetClassName(), "id": node.GetID(), "name": node.GetName() or "",
                "hideFromEditors": str(node.GetHideFromEditors()), "description": node.GetDescription() or "",
                "attributes": json.dumps(node._attributes),
                "references": json.dumps({role: ids for role, ids in node._references.items() if role != "storage"}),
                "properties": json.dumps(_properties(node))})
            extension = _data_extension(node, io)
            if extension is None or not isinstance(node, vtkMRMLStorableNode):
                continue
            base = "".join(c if c.isalnum() or c in "-_." else "_" for c in (node.GetName() or node.GetID()))
            name, n = base + extension, 1
            while name in used:
                name, n = "%s_%d%s" % (base, n, extension), n + 1
            used.add(name)
            element.set("data", "Data/" + name)
            if node.GetHideFromEditors():
                continue  # the save skips hidden storable nodes: element yes, data file no
            _write_data(node, os.path.join(folder, "Data", name), io)
        ET.ElementTree(root).write(os.path.join(folder, stem + ".mrml"), encoding="unicode")
        with zipfile.ZipFile(fileName, "w", zipfile.ZIP_DEFLATED) as bundle:
            for directory, _, files in os.walk(folder):
                for f in files:
                    full = os.path.join(directory, f)
                    bundle.write(full, os.path.relpath(full, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- loading ----------------------------------------------------------------------------------
def _read_data(node: vtkMRMLNode, path: str) -> None:
    from .fileio import (
        qSlicerCoreIOManager,
        read_image,
        read_table,
        read_volume_into,
        vtkMRMLSegmentationNode,
        vtkMRMLTableNode,
        vtkMRMLVolumeNode,
        vtkSlicerSegmentationsModuleLogic,
    )
    from .mrml_markups import read_markups_json

    if isinstance(node, vtkMRMLSegmentationNode):
        image = read_image(path, singleFile=True)
        qSlicerCoreIOManager._readSegNrrd(image, set(image.GetMetaDataKeys()), node, vtkSlicerSegmentationsModuleLogic())
    elif isinstance(node, vtkMRMLVolumeNode):
        read_volume_into(node, path)
    elif isinstance(node, vtkMRMLTableNode):
        read_table(node, path)
    elif isinstance(node, vtkMRMLMarkupsNode):
        read_markups_json(node, path)
    elif isinstance(node, vtkMRMLColorTableNode):
        read_color_table(node, path)


def load_scene_bundle(scene: vtkMRMLScene, fileName: str, tempRoot: str) -> List[vtkMRMLNode]:
    """Adds the bundle's nodes to ``scene`` (IDs kept where free) and reads their data."""
    work = tempfile.mkdtemp(prefix="mrb_", dir=tempRoot)
    with zipfile.ZipFile(fileName) as bundle:
        bundle.extractall(work)
    mrml = [os.path.join(d, f) for d, _, files in os.walk(work) for f in files if f.endswith(".mrml")]
    if len(mrml) != 1:
        raise RuntimeError("%s: expected one .mrml file in the bundle, found %d" % (fileName, len(mrml)))
    folder = os.path.dirname(mrml[0])
    root = ET.parse(mrml[0]).getroot()
    created = []
    idMap: Dict[str, str] = {}
    for element in root.findall("Node"):
        node = scene.CreateNodeByClass(element.get("class"))
        if node is None:
            raise RuntimeError("%s: unknown node class %s" % (fileName, element.get("class")))
        node.UnRegister(None)
        node._id = element.get("id")
        node.SetName(element.get("name"))
        node.SetHideFromEditors(int(element.get("hideFromEditors", "0")))
        node.SetDescription(element.get("description") or None)
        node._attributes = json.loads(element.get("attributes", "{}"))
        _set_properties(node, json.loads(element.get("properties", "{}")))
        scene.AddNode(node)
        idMap[element.get("id")] = node.GetID()
        created.append((node, element))
    for node, element in created:
        for role, ids in json.loads(element.get("references", "{}")).items():
            node._references[role] = [idMap.get(i, i) for i in ids]
    # Data last: display nodes and colour tables are in place when voxels and segments arrive.
    for node, element in created:
        data = element.get("data")
        if not data:
            continue
        path = os.path.join(folder, data)
        if not os.path.exists(path):
            logger.error("Failed to read node %s (%s) from file: %s does not exist",
                         node.GetName(), node.GetID(), data)
            continue
        _read_data(node, path)
        node.Modified()
    return [node for node, _ in created]


__all__ = ["save_scene_bundle", "load_scene_bundle", "write_color_table", "read_color_table", "vtkMRMLColorNode"]
