"""CTExplain: class activation maps and segmentation of a CT volume, shown in 3D Slicer.

This file is GUI and scene glue only: every computation is in CTExplainLib (the same core as the
``ctexplain`` command line). CTExplainLib (and torch) are imported lazily, inside the functions
that need them, so that Slicer can list the module even before its dependencies are installed.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Set

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

LOG = logging.getLogger(__name__)

INPUT_ATTRIBUTE = "CTExplain.InputNodeID"  # marks output nodes with the node they explain
HEAT_MAP_COLOR_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
HEAT_MAP_OPACITY = 0.5
Progress = Callable[[str, float], None]


#
# CTExplain
#
class CTExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CTExplain"
        self.parent.categories = ["Explainability"]
        self.parent.dependencies = []
        self.parent.contributors = ["CTExplain contributors"]
        self.parent.helpText = (
            "Classifies a CT volume with a CTExplain model package, shows a class activation map "
            "(CAM, Grad-CAM or Grad-CAM++) for each finding over the CT, segments it, and lists "
            "each finding's probability and where its map lies in the anatomy. All outputs are on "
            "the input volume's own voxel grid."
        )
        self.parent.acknowledgementText = (
            "The sample CT is from TotalSegmentator (Wasserthal J. et al., Radiology: AI 2023, "
            "doi:10.1148/ryai.230024), Apache-2.0. The shipped demo models are UNTRAINED (random "
            "weights): their probabilities, maps and masks show the mechanics only and mean nothing."
        )


def ijkToRASArray(volumeNode) -> np.ndarray:
    """The node's IJK-to-RAS matrix as a 4x4 numpy array (the getter needs an out-argument)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(volumeNode):
    """A core Volume from a scalar volume node: a *copy* of its (K, J, I) voxels (so the node is
    never touched) and its IJK-to-RAS, turned into the core's LPS grid by Volume.from_ijk_to_ras."""
    from CTExplainLib.volume import Volume

    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    return Volume.from_ijk_to_ras(array, ijkToRASArray(volumeNode), metadata={"source": volumeNode.GetName()})


#
# CTExplainWidget (needs Qt: not exercised outside Slicer)
#
class CTExplainWidget(ScriptedLoadableModuleWidget):
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTExplainLogic()
        self.ui.methodComboBox.addItems(["gradcam", "gradcampp", "cam"])
        self.ui.deviceComboBox.addItems(["auto", "cpu", "cuda"])
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateApplyButton)
        self.layout.addStretch(1)
        self.updateApplyButton()

    def updateApplyButton(self, *unused) -> None:
        self.ui.applyButton.enabled = self.ui.inputSelector.currentNode() is not None

    def onProgress(self, stage: str, fraction: float) -> None:
        self.ui.progressBar.setValue(round(100 * fraction))
        self.ui.progressBar.setFormat(f"{stage} (%p%)")
        slicer.app.processEvents()  # wait=True runs in the GUI thread: keep the bar painted

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("CTExplain failed.", waitCursor=True):
            results = self.logic.process(
                self.ui.inputSelector.currentNode(),
                method=self.ui.methodComboBox.currentText,
                device=self.ui.deviceComboBox.currentText,
                wait=True,
                progress=self.onProgress,
            )
            self.onProgress("done", 1.0)
            self.showFindings(results["probabilities"])

    def showFindings(self, probabilities: Dict[str, float]) -> None:
        import qt

        table = self.ui.findingsTable
        table.setColumnCount(2)
        table.setHorizontalHeaderLabels(["Finding", "Probability"])
        table.setRowCount(len(probabilities))
        for row, (name, probability) in enumerate(probabilities.items()):
            table.setItem(row, 0, qt.QTableWidgetItem(name))
            table.setItem(row, 1, qt.QTableWidgetItem(f"{probability:.3f}"))


#
# CTExplainLogic
#
class CTExplainLogic(ScriptedLoadableModuleLogic):
    """Runs the CTExplain core on a volume node and puts its outputs in the scene.

    From Slicer's Python console::

        >>> from CTExplain import CTExplainLogic
        >>> from CTExplainLib.models_catalog import SAMPLE_CASES
        >>> volumeNode = slicer.util.loadVolume(str(SAMPLE_CASES[0]))
        >>> results = CTExplainLogic().process(volumeNode)
    """

    def process(self, inputVolumeNode, classifier: Optional[str] = None, segmenter: Optional[str] = None,
                method: str = "gradcam", device: str = "auto", wait: bool = True,
                progress: Optional[Progress] = None) -> Dict[str, Any]:
        """Explain ``inputVolumeNode``; returns the output nodes and the probabilities.

        classifier/segmenter: a model package path or name (None: the shipped demo models;
        segmenter "none": no segmentation). On failure the scene is left exactly as it was.
        """
        if not wait:
            raise NotImplementedError("CTExplain: process(wait=False) (a background process with progress and "
                                      "cancel) is not available yet; call it with wait=True")
        if inputVolumeNode is None or inputVolumeNode.GetClassName() != "vtkMRMLScalarVolumeNode":
            raise ValueError("CTExplain: the input must be a scalar volume node (a CT), got "
                             f"{inputVolumeNode.GetClassName() if inputVolumeNode is not None else None}")
        from CTExplainLib import pipeline

        scene = slicer.mrmlScene
        before = self._nodeIDs()
        try:
            classifierModel, segmenterModel = self._loadModels(classifier, segmenter)
            volume = volume_from_node(inputVolumeNode)
            stages = ["preprocess", "classify+explain"] + (["segment", "map labels"] if segmenterModel else []) + ["scene"]
            timer = pipeline.StageTimer(progress or (lambda stage, fraction: None), stages)
            analysis = pipeline.analyse(volume, classifierModel, segmenterModel,
                                        pipeline.ExplainOptions(method=method, device=device), timer)
            with timer.stage("scene"):
                results = self._addOutputs(inputVolumeNode, analysis, classifierModel)
        except Exception:
            # Whatever was added (including display nodes and half-built nodes) goes again.
            for nodeID in reversed([n for n in self._nodeIDs() if n not in before]):
                node = scene.GetNodeByID(nodeID)
                if node is not None:
                    scene.RemoveNode(node)
            raise
        keep = {node.GetID() for node in results["nodes"]}
        self.removeOutputs(inputVolumeNode, keep=keep)
        top = results["heatMaps"].get(results["topFinding"])
        slicer.util.setSliceViewerLayers(background=inputVolumeNode, foreground=top, foregroundOpacity=HEAT_MAP_OPACITY)
        LOG.info("CTExplain: %s explained; probabilities %s; seconds per stage %s",
                 inputVolumeNode.GetName(), results["probabilities"], timer.seconds)
        return results

    @staticmethod
    def _nodeIDs() -> List[str]:
        scene = slicer.mrmlScene
        return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]

    @staticmethod
    def _loadModels(classifier: Optional[str], segmenter: Optional[str]):
        from CTExplainLib.model_package import load_package
        from CTExplainLib.models_catalog import (
            DEFAULT_CLASSIFIER,
            DEFAULT_SEGMENTER,
            resolve_package,
        )

        classifierModel = load_package(resolve_package(classifier or DEFAULT_CLASSIFIER))
        if segmenter is not None and str(segmenter).lower() == "none":
            return classifierModel, None
        return classifierModel, load_package(resolve_package(segmenter or DEFAULT_SEGMENTER))

    def outputNodes(self, inputVolumeNode) -> List[Any]:
        """The nodes an earlier run made for this input (found by their attribute)."""
        scene, inputID = slicer.mrmlScene, inputVolumeNode.GetID()
        nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        return [n for n in nodes if n.GetAttribute(INPUT_ATTRIBUTE) == inputID]

    def removeOutputs(self, inputVolumeNode, keep: Set[str] = frozenset()) -> None:
        """Remove this input's outputs and their display/storage nodes (RemoveNode leaves those)."""
        scene = slicer.mrmlScene
        for node in self.outputNodes(inputVolumeNode):
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

    def _addOutputs(self, inputVolumeNode, analysis, classifierModel) -> Dict[str, Any]:
        from CTExplainLib.pipeline import finding_anatomy, select_findings

        scene, inputID, base = slicer.mrmlScene, inputVolumeNode.GetID(), inputVolumeNode.GetName()
        ijkToRAS = ijkToRASArray(inputVolumeNode)  # outputs share the input's grid exactly
        classification, segmentation = analysis.classification, analysis.segmentation
        nodes: List[Any] = []

        def tag(node):
            node.SetAttribute(INPUT_ATTRIBUTE, inputID)
            nodes.append(node)
            return node

        probabilities = {n: float(p) for n, p in zip(classification.class_names, classification.probabilities)}
        labels = segmentation.labels.array if segmentation is not None else None
        heatMaps: Dict[str, Any] = {}
        anatomy: Dict[str, Dict[str, Any]] = {}
        for index in select_findings(classification, classifierModel.metadata.threshold, None):
            name = classification.class_names[index]
            heat = classification.heat_map(index, analysis.volume.grid)  # float32 on the input grid
            node = tag(slicer.util.addVolumeFromArray(heat, ijkToRAS=ijkToRAS, name=f"{base} CTExplain {name}",
                                                      nodeClassName="vtkMRMLScalarVolumeNode"))
            display = node.GetDisplayNode()
            display.SetAndObserveColorNodeID(HEAT_MAP_COLOR_ID)
            display.AutoWindowLevelOff()  # else any Modified() recomputes the window from percentiles
            display.SetWindowLevelMinMax(0.0, 1.0)
            heatMaps[name] = node
            anatomy[name] = finding_anatomy(analysis, name, heat, labels, None)

        labelMap = segmentationNode = colorTable = None
        if segmentation is not None:
            colorTable = tag(scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{base} CTExplain colors"))
            colorTable.SetTypeToUser()  # names from the package, not the built-in "Labels" ("jake")
            colorTable.SetNumberOfColors(max(s.label for s in segmentation.segments) + 1 if segmentation.segments else 1)
            colorTable.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
            for segment in segmentation.segments:
                colorTable.SetColor(segment.label, segment.name, *segment.color, 1.0)
            array = labels if labels.dtype in (np.uint8, np.uint16) else labels.astype(np.uint16)  # never int64
            labelMap = tag(slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRAS, name=f"{base} CTExplain labels",
                                                          nodeClassName="vtkMRMLLabelMapVolumeNode"))
            labelMap.GetDisplayNode().SetAndObserveColorNodeID(colorTable.GetID())
            segmentationNode = tag(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{base} CTExplain segmentation"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolumeNode)
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelMap, segmentationNode):
                raise RuntimeError(f"CTExplain: could not import the label map of {base} into a segmentation")

        table = tag(scene.AddNewNodeByClass("vtkMRMLTableNode", f"{base} CTExplain findings"))
        self._fillTable(table, probabilities, anatomy)
        top = max(heatMaps, key=lambda n: probabilities[n]) if heatMaps else None
        return {"heatMaps": heatMaps, "labelMap": labelMap, "segmentation": segmentationNode, "colorTable": colorTable,
                "table": table, "probabilities": probabilities, "anatomy": anatomy, "topFinding": top, "nodes": nodes}

    @staticmethod
    def _fillTable(table, probabilities: Dict[str, float], anatomy: Dict[str, Dict[str, Any]]) -> None:
        """One row per finding: name, probability, and where its map lies (empty without a map)."""
        columns = [("Finding", vtk.vtkStringArray()), ("Probability", vtk.vtkDoubleArray()),
                   ("Dominant region", vtk.vtkStringArray()), ("Peak region", vtk.vtkStringArray()),
                   ("Peak RAS", vtk.vtkStringArray())]
        for name, probability in probabilities.items():
            stats = anatomy.get(name, {})
            lps = stats.get("peak_lps")
            peak = "" if lps is None else "%.1f, %.1f, %.1f" % (-lps[0], -lps[1], lps[2])  # LPS -> RAS
            values = [name, probability, stats.get("dominant_segment") or "", stats.get("peak_segment") or "", peak]
            for (_, column), value in zip(columns, values):
                column.InsertNextValue(value)
        for title, column in columns:
            column.SetName(title)
            table.AddColumn(column)


#
# CTExplainTest
#
class CTExplainTest(ScriptedLoadableModuleTest):
    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_sample_case()

    def test_sample_case(self) -> None:
        from CTExplainLib.model_package import load_package
        from CTExplainLib.models_catalog import (
            DEFAULT_SEGMENTER,
            SAMPLE_CASES,
            resolve_package,
        )

        self.delayDisplay("Loading the sample CT")
        inputNode = slicer.util.loadVolume(str(SAMPLE_CASES[0]))
        results = CTExplainLogic().process(inputNode)
        expected = ijkToRASArray(inputNode)
        for node in list(results["heatMaps"].values()) + [results["labelMap"]]:
            np.testing.assert_allclose(ijkToRASArray(node), expected)
        self.assertEqual(results["table"].GetNumberOfRows(), len(results["probabilities"]))
        self.assertEqual(slicer.util.arrayFromVolume(results["labelMap"]).dtype.kind, "u")
        packageNames = {c.name for c in load_package(resolve_package(DEFAULT_SEGMENTER)).metadata.classes[1:]}
        segmentation = results["segmentation"].GetSegmentation()
        segmentNames = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        self.assertTrue(segmentNames and segmentNames <= packageNames, segmentNames)
        self.delayDisplay("Test passed")
