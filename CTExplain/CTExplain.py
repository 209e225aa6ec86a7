"""CTExplain: class activation maps and segmentation of a CT volume, shown in 3D Slicer.

This file is GUI and scene glue only: computations are in CTExplainLib (the same core as the
``ctexplain`` command line), and what needs MRML but no widget (output nodes, background runs,
installing dependencies) is in CTExplainSlicerLib beside it. Both are imported lazily, inside the
functions that need them, so that Slicer can list the module before its dependencies are installed.

Two ways to run, one result: ``process(wait=True)`` runs the core in Slicer's process (console,
batch mode, self-test); ``process(wait=False)`` runs the ``ctexplain`` command line in a child
process (the GUI: no frozen window, progress, Cancel) and loads its files back onto the input's
exact grid. Outputs go under the input's parent transform, so they are shown where it is.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CTExplainSlicerLib.nodes import HEAT_MAP_OPACITY, ijkToRASArray, volume_from_node  # noqa: F401 (public API)
from CTExplainSlicerLib.run import CTExplainRun  # noqa: F401 (what process(wait=False) returns)

LOG = logging.getLogger(__name__)

METHODS = (("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcampp"), ("CAM", "cam"))
DEVICES = ("auto", "cpu", "cuda", "mps")
OTHER_FOLDER = "<other folder>"  # item data of the "Other folder..." entry of the model selectors
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
            "each finding's probability and where its map lies in the anatomy (the share of its "
            "energy in each segment and outside the body). All outputs are on the input volume's "
            "own voxel grid. Inference runs in a separate process: Cancel stops it and leaves the "
            "scene as it was. Missing Python packages (PyTorch, MONAI, ...) are installed on the "
            "first run, after asking."
        )
        self.parent.acknowledgementText = (
            "The shipped models are research models trained on small public data sets, not for "
            "clinical use; each package names its training data, licence and validation metrics in "
            "its metadata. head-ct-ich-findings: PhysioNet CT-ICH (Hssayeni, M. D., et al. (2020). "
            "Computed Tomography Images for Intracranial Hemorrhage Detection and Segmentation "
            "(version 1.3.1). PhysioNet. doi:10.13026/w8q8-ky94), CC BY 4.0. chest-ct-segmenter: "
            "TotalSegmentator's test fixtures (Wasserthal J. et al., Radiology: AI 2023, "
            "doi:10.1148/ryai.230024), Apache-2.0, whose liver mask is TotalSegmentator's output, and "
            "LIDC-IDRI (Armato S. G. et al., Med. Phys. 2011, doi:10.1118/1.3528204; TCIA, CC BY 3.0) "
            "with threshold lung masks. "
            "lung-nodule-segmenter, lung-nodule-malignancy and lung-nodule-characteristics: LIDC-IDRI nodule crops with the readers' outlines "
            "and ratings (via PabloLION/ct-slicing; same citation and licence). "
            "chest-ct-4class: Kaggle 'Chest CT-Scan images' (mohamedhanyyy), deduplicated. "
            "covid-infection-2d and covid-consolidation-2d: MedSeg COVID-19 CT segmentations as prepared by Inf-Net (Fan D.-P. "
            "et al., IEEE TMI 2020). lung-nodule-malignancy and lung-nodule-segmenter: LIDC-IDRI nodule "
            "crops with the readers' ratings and outlines (Armato S. G. et al., Med. Phys. 2011, "
            "doi:10.1118/1.3528204; TCIA, CC BY 3.0). The demo-* packages are UNTRAINED (random weights) and show the "
            "mechanics only. The sample CTs are TotalSegmentator's example_ct (Apache-2.0), patient "
            "050 of CT-ICH (CC BY 4.0), rebuilt to HU from its JPEGs with an assumed 0.35 x 0.35 x 5 mm "
            "spacing, and a crop of LIDC-IDRI-0001 around its nodule (CC BY 3.0)."
        )


def comboData(combo) -> str:
    """The current item's data of a QComboBox, as a string ("" for none)."""
    data = combo.itemData(combo.currentIndex)
    return "" if data is None else str(data)


#
# CTExplainWidget (needs Qt: not exercised outside Slicer; everything it does goes through the logic)
#
class CTExplainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        # State first: without a parent, ScriptedLoadableModuleWidget.__init__ calls setup() at once.
        VTKObservationMixin.__init__(self)
        self.logic: Optional[CTExplainLogic] = None
        self.run: Optional[CTExplainRun] = None
        self.results: Optional[Dict[str, Any]] = None
        self._parameterNode = None
        self._updatingGUI = False
        self._dependenciesReady = False
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTExplainLogic()
        for label, method in METHODS:
            self.ui.methodComboBox.addItem(label, method)
        self.ui.deviceComboBox.addItems(list(DEVICES))
        self.fillModelSelectors()
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)

        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for combo in (self.ui.classifierComboBox, self.ui.segmenterComboBox):
            combo.connect("currentIndexChanged(int)", lambda index, combo=combo: self.onModelSelected(combo))
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onDisplayChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onDisplayChanged)
        self.ui.findingsTable.connect("itemSelectionChanged()", self.onFindingSelected)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadButton.connect("clicked(bool)", self.onLoadButton)
        self.pointsSelector = slicer.qMRMLNodeComboBox()  # point mode: nodules marked with Markups
        self.pointsSelector.nodeTypes = ["vtkMRMLMarkupsFiducialNode"]
        self.pointsSelector.noneEnabled, self.pointsSelector.addEnabled, self.pointsSelector.removeEnabled = True, False, False
        self.pointsSelector.setMRMLScene(slicer.mrmlScene)
        self.pointsSelector.setToolTip("Explain the CT at these marked points (lung nodules) instead of as a whole")
        self.layout.addWidget(self.pointsSelector)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for event in (slicer.mrmlScene.NodeAddedEvent, slicer.mrmlScene.EndImportEvent):
            self.addObserver(slicer.mrmlScene, event, self.updateInputFilter)
        self.updateInputFilter()
        self.layout.addStretch(1)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.results = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node (raw Set/GetParameter: slicer-api.md section 2) --------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.GetNodeReference("InputVolume"):
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            first = next((node for node in volumes if self.logic.isInputCandidate(node)), None)
            if first is not None:
                self._parameterNode.SetNodeReferenceID("InputVolume", first.GetID())

    def updateInputFilter(self, *unused) -> None:
        """The input selector lists CTs, not CTExplain's own heat maps (label maps are already
        out: showChildNodeTypes is false in the .ui file)."""
        self.ui.inputSelector.sortFilterProxyModel().hiddenNodeIDs = self.logic.hiddenInputIDs()

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self.logic.setDefaultParameters(parameterNode)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            self.ui.inputSelector.setCurrentNode(node.GetNodeReference("InputVolume"))
            for combo, name in ((self.ui.classifierComboBox, "Classifier"), (self.ui.segmenterComboBox, "Segmenter"),
                                (self.ui.methodComboBox, "Method")):
                index = combo.findData(node.GetParameter(name))
                if index >= 0:
                    combo.setCurrentIndex(index)
            self.ui.deviceComboBox.setCurrentText(node.GetParameter("Device"))
            self.ui.opacitySlider.value = float(node.GetParameter("Opacity") or HEAT_MAP_OPACITY)
            self.ui.thresholdSlider.value = float(node.GetParameter("Threshold") or 0.0)
        finally:
            self._updatingGUI = False
        self.updateButtons()

    def updateParameterNodeFromGUI(self, *unused) -> None:
        node = self._parameterNode
        if node is None or self._updatingGUI:
            return
        wasModifying = node.StartModify()
        current = self.ui.inputSelector.currentNode()
        node.SetNodeReferenceID("InputVolume", current.GetID() if current is not None else None)
        node.SetParameter("Classifier", comboData(self.ui.classifierComboBox))
        node.SetParameter("Segmenter", comboData(self.ui.segmenterComboBox))
        node.SetParameter("Method", comboData(self.ui.methodComboBox) or "gradcam")
        node.SetParameter("Device", self.ui.deviceComboBox.currentText)
        node.SetParameter("Opacity", str(self.ui.opacitySlider.value))
        node.SetParameter("Threshold", str(self.ui.thresholdSlider.value))
        node.EndModify(wasModifying)
        self.updateButtons()

    def updateButtons(self) -> None:
        running = self.run is not None
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.toolTip = "Stop the run; the scene stays as it was." if running else \
            "Classify, explain and segment the input CT (in a separate process)."
        self.ui.applyButton.enabled = running or self.ui.inputSelector.currentNode() is not None
        for widget in (self.ui.inputSelector, self.ui.classifierComboBox, self.ui.segmenterComboBox,
                       self.ui.methodComboBox, self.ui.deviceComboBox):
            widget.enabled = not running

    # -- model selectors ------------------------------------------------------------------
    def fillModelSelectors(self) -> None:
        """Packages found by the core (shipped, ~/.ctexplain/models, $CTEXPLAIN_MODELS), plus "Other folder..."."""
        classifiers, segmenters = self.logic.modelChoices()
        for combo, choices in ((self.ui.classifierComboBox, classifiers), (self.ui.segmenterComboBox, segmenters)):
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for label, data in choices:
                combo.addItem(label, data)
            combo.addItem("Other folder...", OTHER_FOLDER)
            combo.blockSignals(wasBlocked)
        self.updateGUIFromParameterNode()

    def onModelSelected(self, combo) -> None:
        if comboData(combo) == OTHER_FOLDER and not self._updatingGUI:
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "CTExplain model package folder")
            wasBlocked = combo.blockSignals(True)
            if folder:
                combo.insertItem(combo.count - 1, folder, folder)
                combo.setCurrentIndex(combo.count - 2)
            else:
                combo.setCurrentIndex(0)
            combo.blockSignals(wasBlocked)
        self.updateParameterNodeFromGUI()

    # -- running ------------------------------------------------------------------------
    def onLoadButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Load CT", "",
            "CT volumes (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd);;Any file of a DICOM series (*)")
        if not path:
            return
        try:
            node = self.logic.loadCT(path)
        except Exception as exc:
            slicer.util.errorDisplay(f"CTExplain could not load {path}:\n{exc}")
            return
        self.ui.inputSelector.setCurrentNode(node)

    def onApplyButton(self) -> None:
        if self.run is not None:
            self.cancelRun()
            self.onProgress("cancelled", 0.0)
            return
        if not self._dependenciesReady:
            try:
                self._dependenciesReady = self.logic.installDependencies()
            except Exception as exc:
                slicer.util.errorDisplay(f"CTExplain could not install its Python packages:\n\n{exc}")
                return
            if not self._dependenciesReady:
                return
            self.fillModelSelectors()
        node = self._parameterNode
        if self.pointsSelector.currentNode() is not None:
            try:
                self.results = self.logic.processPoints(self.ui.inputSelector.currentNode(), self.pointsSelector.currentNode(),
                                                        method=node.GetParameter("Method") or "gradcam",
                                                        device=node.GetParameter("Device") or "auto")
            except Exception as exc:
                slicer.util.errorDisplay(f"CTExplain failed at the points:\n\n{exc}")
                return
            self.showFindings()
            return
        try:
            self.run = self.logic.process(
                self.ui.inputSelector.currentNode(),
                classifier=node.GetParameter("Classifier") or None,
                segmenter=node.GetParameter("Segmenter") or None,
                method=node.GetParameter("Method") or "gradcam",
                device=node.GetParameter("Device") or "auto",
                wait=False,
                progress=self.onProgress,
            )
        except Exception as exc:
            slicer.util.errorDisplay(f"CTExplain could not start:\n\n{exc}")
            return
        self.timer.start()
        self.updateButtons()

    def onTimer(self) -> None:
        run = self.run
        if run is None:
            self.timer.stop()
            return
        if not run.poll():
            return
        self.timer.stop()
        self.run = None
        self.updateButtons()
        if run.error is not None:
            self.onProgress("failed", 0.0)
            slicer.util.errorDisplay(f"CTExplain failed:\n\n{run.error}")
            return
        self.results = run.outputs
        self.updateInputFilter()  # the new heat maps got their attribute after being added
        self.showFindings()
        self.onDisplayChanged()
        self.showWarnings(self.results["record"].get("warnings", []))

    def showWarnings(self, warnings: Sequence[str]) -> None:
        """The domain check's (and other) warnings: in the status and in a message box."""
        if warnings:
            self.ui.progressBar.setFormat(f"done, {len(warnings)} warning(s): {warnings[0]}")
            slicer.util.warningDisplay("CTExplain warns about this result:\n\n" + "\n\n".join(warnings), windowTitle="CTExplain")

    def cancelRun(self) -> None:
        if self.run is not None:
            self.run.cancel()
            self.run = None
        if hasattr(self, "timer"):
            self.timer.stop()
        if hasattr(self, "ui"):
            self.updateButtons()

    def onProgress(self, stage: str, fraction: float) -> None:
        self.ui.progressBar.setValue(round(100 * fraction))
        self.ui.progressBar.setFormat(f"{stage} (%p%)")

    # -- results ------------------------------------------------------------------------
    def showFindings(self) -> None:
        """The findings table node's columns in the widget's table, one row per finding."""
        table = self.results["table"]
        widget = self.ui.findingsTable
        columns = table.GetNumberOfColumns()
        widget.clear()
        widget.setColumnCount(columns)
        widget.setRowCount(table.GetNumberOfRows())
        widget.setHorizontalHeaderLabels([table.GetColumnName(c) for c in range(columns)])
        numeric = [table.GetColumnName(c) == "Probability" or table.GetColumnName(c).startswith("CAM in ")
                   for c in range(columns)]
        for row in range(table.GetNumberOfRows()):
            for column in range(columns):
                text = table.GetCellText(row, column)
                if numeric[column]:
                    value = float(text) if text else float("nan")
                    text = "" if np.isnan(value) else f"{value:.3f}"
                widget.setItem(row, column, qt.QTableWidgetItem(text))
        widget.resizeColumnsToContents()

    def onFindingSelected(self) -> None:
        if self.results is None:
            return
        selected = self.ui.findingsTable.selectedItems()
        if selected:
            name = self.ui.findingsTable.item(selected[0].row(), 0).text()
            if "points" in self.results:
                self.logic.showPoint(self.results, name, self.ui.opacitySlider.value)
                return
            self.logic.showFinding(self.results, name, self.ui.opacitySlider.value)

    def onDisplayChanged(self, *unused) -> None:
        self.updateParameterNodeFromGUI()
        if self.results is not None:
            self.logic.setHeatMapDisplay(self.results, self.ui.opacitySlider.value, self.ui.thresholdSlider.value)


#
# CTExplainLogic
#
class CTExplainLogic(ScriptedLoadableModuleLogic):
    """Runs the CTExplain core on a volume node and puts its outputs in the scene.

    From Slicer's Python console::

        >>> from CTExplain import CTExplainLogic
        >>> from CTExplainLib.models_catalog import CHEST_SAMPLE
        >>> volumeNode = slicer.util.loadVolume(str(CHEST_SAMPLE.path))
        >>> results = CTExplainLogic().process(volumeNode)
    """

    def process(self, inputVolumeNode, classifier: Optional[str] = None, segmenter: Optional[str] = None,
                method: str = "gradcam", device: str = "auto", wait: bool = True,
                progress: Optional[Progress] = None):
        """Explain ``inputVolumeNode``.

        classifier/segmenter: a model package path or name (None: the installed packages whose
        training domain fits the input, see ``CTExplainLib.trust.choice``; segmenter "none": no
        segmentation).

        wait=True: runs in this process and returns the results (output nodes, probabilities,
        anatomy); on failure it raises and the scene is left exactly as it was.
        wait=False: starts the ``ctexplain`` command line in a child process and returns a
        :class:`CTExplainRun` to poll; the outputs are added when it ends.
        """
        from CTExplainSlicerLib import nodes

        self._checkInput(inputVolumeNode)
        if not wait:
            return CTExplainRun(inputVolumeNode, volume_from_node(inputVolumeNode), classifier, segmenter, method,
                                device, progress)
        from CTExplainLib import pipeline

        report = progress or (lambda stage, fraction: None)
        before = nodes.nodeIDs()
        try:
            volume = volume_from_node(inputVolumeNode)
            classifierModel, segmenterModel, choice = self._loadModels(volume, classifier, segmenter)
            explained = pipeline.explain_in_memory(volume, classifierModel, segmenterModel,
                                                   pipeline.ExplainOptions(method=method, device=device), report,
                                                   after=["scene"])
            if choice:
                explained.record["model_choice"] = choice
            timer = explained.timer
            with timer.stage("scene"):
                results = nodes.addOutputs(inputVolumeNode, explained.record, explained.heat_maps(), explained.labels)
        except Exception:
            nodes.removeNodesAddedSince(before)
            raise
        nodes.replaceOutputs(inputVolumeNode, results)
        report("done", 1.0)
        LOG.info("CTExplain: %s explained; probabilities %s; seconds per stage %s",
                 inputVolumeNode.GetName(), results["probabilities"], timer.seconds)
        return results

    def processPoints(self, inputVolumeNode, pointListNode, classifier: Optional[str] = None, segmenter: Optional[str] = None,
                      method: str = "gradcam", device: str = "auto") -> Dict[str, Any]:
        """Explain ``inputVolumeNode`` at each control point of ``pointListNode`` (a
        vtkMRMLMarkupsFiducialNode, read at world positions) with the point models
        (``CTExplainLib.points.markups``; default lung-nodule-malignancy and lung-nodule-segmenter).

        Returns {"input", "table" (one row per point), "points" {label: {"heatMap", "nodule",
        "record"}}, "heatMaps", "nodes"}; ``showPoint(results, label)`` shows one. Console::

            >>> marks = slicer.util.getNode("F")  # the Markups point list
            >>> results = CTExplainLogic().processPoints(volumeNode, marks)
            >>> CTExplainLogic().showPoint(results, "F-1")
        """
        from CTExplainLib.models_catalog import POINT_CLASSIFIER, POINT_SEGMENTER
        from CTExplainLib.points.markups import explain_markups
        from CTExplainSlicerLib.nodes import addPointOutputs, worldToLocal

        self._checkInput(inputVolumeNode)
        classifierModel, segmenterModel, _ = self._loadModels(None, classifier or POINT_CLASSIFIER, segmenter or POINT_SEGMENTER)
        volume = volume_from_node(inputVolumeNode)
        analyses = explain_markups(volume, pointListNode, classifierModel, segmenterModel, method, device,
                                   world_to_volume=worldToLocal(inputVolumeNode))
        return addPointOutputs(inputVolumeNode, volume.grid, analyses)

    def showPoint(self, results: Dict[str, Any], label: str, opacity: Optional[float] = None) -> None:
        """Show one point's heat map (foreground) and nodule (label layer) over its input."""
        point = results["points"][label]
        slicer.util.setSliceViewerLayers(background=results["input"], foreground=point["heatMap"], label=point["nodule"],
                                         foregroundOpacity=HEAT_MAP_OPACITY if opacity is None else opacity)

    @staticmethod
    def loadCT(path, name: Optional[str] = None):
        """A scalar volume node for a CT file or DICOM series: volume files through Slicer's own
        reader; DICOM (a folder or any file in one) through the core loader, as ``ctexplain
        explain`` reads it (series choice, slice order, HU, gaps and tilt handled there)."""
        from CTExplainLib.discovery import case_name
        from CTExplainLib.loading import load_volume
        from CTExplainLib.loading.image_file import volume_file_format

        path = Path(path)
        name = name or case_name(path)
        if path.is_file() and volume_file_format(path) is not None:
            node = slicer.util.loadVolume(str(path), {"name": name})
            if node is None:
                raise ValueError(f"{path}: Slicer could not read this volume")
            return node
        volume = load_volume(path)
        for warning in volume.metadata.get("warnings", []):
            LOG.warning("%s: %s", path, warning)
        return slicer.util.addVolumeFromArray(volume.array, ijkToRAS=volume.ijk_to_ras(), name=name,
                                              nodeClassName="vtkMRMLScalarVolumeNode")

    @staticmethod
    def isInputCandidate(node) -> bool:
        """A scalar volume (not a label map) that is not one of CTExplain's own heat maps."""
        from CTExplainSlicerLib.nodes import isInputCandidate

        return isInputCandidate(node)

    @staticmethod
    def hiddenInputIDs() -> List[str]:
        """The scalar volumes the input selector must not offer: CTExplain's heat maps."""
        from CTExplainSlicerLib.nodes import outputVolumeIDs

        return outputVolumeIDs()

    def _checkInput(self, inputVolumeNode) -> None:
        if inputVolumeNode is None or inputVolumeNode.GetClassName() != "vtkMRMLScalarVolumeNode":
            raise ValueError("CTExplain: the input must be a scalar volume node (a CT), got "
                             f"{inputVolumeNode.GetClassName() if inputVolumeNode is not None else None}")
        if not self.isInputCandidate(inputVolumeNode):
            raise ValueError(f"CTExplain: {inputVolumeNode.GetName()} is a CTExplain output (a heat map), not a CT")

    @staticmethod
    def _loadModels(volume, classifier: Optional[str], segmenter: Optional[str]):
        """The classifier, the segmenter (or None) and the model choice's record ({} when both were given)."""
        from CTExplainLib.model_package import load_package
        from CTExplainLib.models_catalog import find_packages, resolve_package
        from CTExplainLib.trust.choice import model_chooser, read_candidates

        fixed = resolve_package(classifier) if classifier else None
        chooseSegmenter = not segmenter
        fixedSegmenter = resolve_package(segmenter) if segmenter and segmenter.lower() != "none" else None
        if fixed is not None and not chooseSegmenter:
            return load_package(fixed), load_package(fixedSegmenter) if fixedSegmenter is not None else None, {}
        choose = model_chooser(read_candidates(find_packages()), fixed, fixedSegmenter, chooseSegmenter, load_package)
        classifierModel, segmenterModel, _, choice = choose(volume)
        return classifierModel, segmenterModel, choice

    @staticmethod
    def _nodeIDs() -> List[str]:
        from CTExplainSlicerLib.nodes import nodeIDs

        return nodeIDs()

    def _addOutputs(self, inputVolumeNode, record: Dict[str, Any], heatMaps, labels) -> Dict[str, Any]:
        """Output nodes for ``record`` (result.json's shape) and (K, J, I) arrays on the input's grid."""
        from CTExplainSlicerLib.nodes import addOutputs

        return addOutputs(inputVolumeNode, record, heatMaps, labels)

    def outputNodes(self, inputVolumeNode) -> List[Any]:
        """The nodes an earlier run made for this input (found by their attribute)."""
        from CTExplainSlicerLib.nodes import outputNodes

        return outputNodes(inputVolumeNode)

    def removeOutputs(self, inputVolumeNode) -> None:
        """Remove this input's outputs and their display/storage nodes."""
        from CTExplainSlicerLib.nodes import removeOutputs

        removeOutputs(inputVolumeNode)

    # -- display ----------------------------------------------------------------------------
    def showFinding(self, results: Dict[str, Any], name: str, opacity: Optional[float] = None) -> None:
        """Show one finding's heat map as the foreground over its input, in every slice view."""
        slicer.util.setSliceViewerLayers(background=results["input"], foreground=results["heatMaps"][name],
                                         foregroundOpacity=HEAT_MAP_OPACITY if opacity is None else opacity)

    def setHeatMapDisplay(self, results: Dict[str, Any], opacity: float, threshold: float) -> None:
        """Foreground opacity, and heat-map values below ``threshold`` hidden (display threshold)."""
        slicer.util.setSliceViewerLayers(foregroundOpacity=opacity)
        for node in results["heatMaps"].values():
            display = node.GetDisplayNode()
            if display is None:  # removed from the scene since
                continue
            display.SetLowerThreshold(float(threshold))
            display.SetUpperThreshold(1.0)
            display.SetApplyThreshold(1 if threshold > 0 else 0)

    def setDefaultParameters(self, parameterNode) -> None:
        for name, value in (("Method", "gradcam"), ("Device", "auto"), ("Opacity", str(HEAT_MAP_OPACITY)),
                            ("Threshold", "0.0")):
            if not parameterNode.GetParameter(name):
                parameterNode.SetParameter(name, value)

    def modelChoices(self) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
        """(label, package path) for classifiers and for segmenters (with "none"); "" means the default.

        The catalog reads package metadata only, so the choices are there before torch is
        installed; "Default" stands in if it cannot be imported at all.
        """
        try:
            from CTExplainLib.models_catalog import model_choices
        except ImportError:
            return [("Default", "")], [("Default", ""), ("None", "none")]
        classifiers, segmenters = model_choices()
        return classifiers or [("Default", "")], segmenters

    # -- dependencies (CTExplainSlicerLib.dependencies) -----------------------------------
    @staticmethod
    def missingDependencies(requirements=None) -> List[Any]:
        """The core's Python packages that are not installed (found without importing them)."""
        from CTExplainSlicerLib.dependencies import missingDependencies

        return missingDependencies(requirements)

    def installDependencies(self, requirements=None) -> bool:
        """Ask once (in testing mode: install without asking), then install what is missing. True
        if all present, False if the user declined; raises if packages are still missing."""
        from CTExplainSlicerLib.dependencies import installDependencies

        return installDependencies(requirements)


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
            CHEST_SAMPLE,
            DEFAULT_SEGMENTER,
            resolve_package,
        )

        self.delayDisplay("Loading the sample CT")
        inputNode = slicer.util.loadVolume(str(CHEST_SAMPLE.path))
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

    def test_transformed_input(self) -> None:
        """Under a parent transform, the outputs follow the input; the label colour table is kept
        for the scene's save (real MRML here, where the test suite has a stand-in)."""
        from CTExplainLib.models_catalog import CHEST_SAMPLE, DEMO_CLASSIFIER, DEMO_SEGMENTER, resolve_package

        inputNode = slicer.util.loadVolume(str(CHEST_SAMPLE.path))
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, 25.0)
        transform.SetMatrixTransformToParent(matrix)
        inputNode.SetAndObserveTransformNodeID(transform.GetID())
        results = CTExplainLogic().process(inputNode, classifier=str(resolve_package(DEMO_CLASSIFIER)),
                                           segmenter=str(resolve_package(DEMO_SEGMENTER)))
        for node in list(results["heatMaps"].values()) + [results["labelMap"], results["segmentation"]]:
            self.assertEqual(node.GetTransformNodeID(), transform.GetID(), node.GetName())
        self.assertEqual(results["colorTable"].GetHideFromEditors(), 0)
        self.assertNotIn(inputNode.GetID(), CTExplainLogic.hiddenInputIDs())
        self.assertTrue(set(n.GetID() for n in results["heatMaps"].values()) <= set(CTExplainLogic.hiddenInputIDs()))
        self.delayDisplay("Test passed")

    def test_background_run(self) -> None:
        """process(wait=False) gives the outputs of wait=True; Cancel leaves the scene as it was."""
        from CTExplainLib.models_catalog import CHEST_SAMPLE

        inputNode = slicer.util.loadVolume(str(CHEST_SAMPLE.path))
        logic = CTExplainLogic()
        before = logic._nodeIDs()
        run = logic.process(inputNode, segmenter="none", wait=False)
        run.cancel()
        self.assertEqual(logic._nodeIDs(), before)
        run = logic.process(inputNode, segmenter="none", wait=False)
        self.assertTrue(run.wait(timeout=600), run.error)
        inProcess = logic.process(inputNode, segmenter="none")
        for name, node in run.outputs["heatMaps"].items():
            np.testing.assert_allclose(ijkToRASArray(node), ijkToRASArray(inputNode))
            np.testing.assert_allclose(slicer.util.arrayFromVolume(node),
                                       slicer.util.arrayFromVolume(inProcess["heatMaps"][name]), atol=1e-5)
        self.delayDisplay("Test passed")
