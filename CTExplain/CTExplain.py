"""CTExplain: class activation maps and segmentation of a CT volume, shown in 3D Slicer.

This file is GUI and scene glue only: every computation is in CTExplainLib (the same core as the
``ctexplain`` command line). CTExplainLib (and torch) are imported lazily, inside the functions
that need them, so that Slicer can list the module even before its dependencies are installed.

Two ways to run, one result: ``process(wait=True)`` runs the core in Slicer's process (console,
batch mode, self-test); ``process(wait=False)`` runs the ``ctexplain`` command line in a child
process (the GUI: no frozen window, progress, Cancel) and loads its files back onto the input's
exact grid.
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

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

LOG = logging.getLogger(__name__)

INPUT_ATTRIBUTE = "CTExplain.InputNodeID"  # marks output nodes with the node they explain
HEAT_MAP_COLOR_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
HEAT_MAP_OPACITY = 0.5
METHODS = (("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcampp"), ("CAM", "cam"))
DEVICES = ("auto", "cpu", "cuda", "mps")
SCENE_FRACTION = 0.9  # a background run's progress: the child up to here, loading its files after
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
            "chest-ct-4class: Kaggle 'Chest CT-Scan images' (mohamedhanyyy), deduplicated. "
            "covid-infection-2d and covid-consolidation-2d: MedSeg COVID-19 CT segmentations as prepared by Inf-Net (Fan D.-P. "
            "et al., IEEE TMI 2020). lung-nodule-malignancy and lung-nodule-segmenter: LIDC-IDRI nodule "
            "crops with the readers' ratings and outlines (Armato S. G. et al., Med. Phys. 2011, "
            "doi:10.1118/1.3528204; TCIA, CC BY 3.0). The demo-* packages are UNTRAINED (random weights) and show the "
            "mechanics only. The sample CTs are TotalSegmentator's example_ct (Apache-2.0), patient "
            "050 of CT-ICH (CC BY 4.0), rebuilt to HU from its JPEGs with an assumed 0.35 x 0.35 x 5 mm "
            "spacing, and a crop of LIDC-IDRI-0001 around its nodule (CC BY 3.0)."
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


def comboData(combo) -> str:
    """The current item's data of a QComboBox, as a string ("" for none)."""
    data = combo.itemData(combo.currentIndex)
    return "" if data is None else str(data)


def pythonExecutable() -> str:
    """The Python for child processes: Slicer's ``PythonSlicer`` (on PATH inside Slicer, which is
    how slicer.util.pip_install finds it), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


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
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first is not None and first.GetClassName() == "vtkMRMLScalarVolumeNode":
                self._parameterNode.SetNodeReferenceID("InputVolume", first.GetID())

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
        self.showFindings()
        self.onDisplayChanged()

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
# CTExplainRun: a background run started by CTExplainLogic.process(wait=False)
#
class CTExplainRun:
    """A run of the core in a child process. Poll it from a timer (or ``wait()``); on success
    ``outputs`` is what ``process(wait=True)`` returns, on failure ``error`` says why, and the
    scene is left exactly as it was. ``cancel()`` kills the child's whole process tree.
    """

    def __init__(self, logic: "CTExplainLogic", inputVolumeNode, job, progress: Optional[Progress]) -> None:
        self.logic = logic
        self.inputVolumeNode = inputVolumeNode
        self.job = job  # CTExplainLib.background.BackgroundExplain
        self.progress = progress
        self.outputs: Optional[Dict[str, Any]] = None
        self.error: Optional[str] = None
        self.finished = False
        self.cancelled = False
        self.tempFolder = None

    @property
    def pid(self) -> Optional[int]:
        return self.job.pid

    @property
    def running(self) -> bool:
        return not self.finished

    def _report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)

    def onChildProgress(self, stage: str, fraction: float) -> None:
        if stage != "done":  # the child's end is not the run's end: its files are still to load
            self._report(stage, SCENE_FRACTION * fraction)

    def poll(self) -> bool:
        """True once the run has ended (done, failed or cancelled); never blocks on the child."""
        if self.finished:
            return True
        if not self.job.poll():
            return False
        try:
            if self.job.error is not None:
                self.error = self.job.error
            elif self.inputVolumeNode.GetScene() is None:
                self.error = "CTExplain: the input volume was removed from the scene during the run"
            else:
                self._report("scene", SCENE_FRACTION)
                self.outputs = self.logic._placeOutputs(self.inputVolumeNode, self.job.outputs)
                self._report("done", 1.0)
        except Exception as exc:  # the scene is already back as it was (see _placeOutputs)
            LOG.exception("CTExplain: could not load the results")
            self.error = f"CTExplain: could not load the results: {exc}"
        finally:
            self.job.cleanup()
            self.finished = True
        return True

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the run ends; True if it succeeded."""
        from CTExplainLib.background import poll_until

        poll_until(self.poll, timeout, lambda: TimeoutError(f"CTExplain: the run did not end within {timeout} s"))
        return self.error is None

    def cancel(self) -> None:
        """Kill the child process tree; nothing is added to the scene; the temporary folder goes."""
        if self.finished:
            return
        self.job.cancel()
        self.cancelled, self.finished, self.error = True, True, "cancelled"


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

        classifier/segmenter: a model package path or name (None: the shipped defaults,
        ``DEFAULT_CLASSIFIER`` and ``DEFAULT_SEGMENTER`` of ``CTExplainLib.models_catalog``;
        segmenter "none": no segmentation).

        wait=True: runs in this process and returns the results (output nodes, probabilities,
        anatomy); on failure it raises and the scene is left exactly as it was.
        wait=False: starts the ``ctexplain`` command line in a child process and returns a
        :class:`CTExplainRun` to poll; the outputs are added when it ends.
        """
        self._checkInput(inputVolumeNode)
        if not wait:
            return self._start(inputVolumeNode, classifier, segmenter, method, device, progress)
        from CTExplainLib import pipeline

        report = progress or (lambda stage, fraction: None)
        before = self._nodeIDs()
        try:
            classifierModel, segmenterModel = self._loadModels(classifier, segmenter)
            explained = pipeline.explain_in_memory(volume_from_node(inputVolumeNode), classifierModel, segmenterModel,
                                                   pipeline.ExplainOptions(method=method, device=device), report,
                                                   after=["scene"])
            timer = explained.timer
            with timer.stage("scene"):
                results = self._addOutputs(inputVolumeNode, explained.record, explained.heat_maps(), explained.labels)
        except Exception:
            self._removeNodesAddedSince(before)
            raise
        self._replaceOutputs(inputVolumeNode, results)
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
        from CTExplainLib.points.markups import explain_markups, points_table

        self._checkInput(inputVolumeNode)
        classifierModel, segmenterModel = self._loadModels(classifier or POINT_CLASSIFIER, segmenter or POINT_SEGMENTER)
        volume = volume_from_node(inputVolumeNode)
        analyses = explain_markups(volume, pointListNode, classifierModel, segmenterModel, method, device,
                                   world_to_volume=self._worldToVolume(inputVolumeNode))
        before, base, ijkToRAS = self._nodeIDs(), inputVolumeNode.GetName(), ijkToRASArray(inputVolumeNode)
        nodes: List[Any] = []
        points: Dict[str, Dict[str, Any]] = {}
        try:
            for analysis in analyses:
                entry: Dict[str, Any] = {"record": analysis.record, "heatMap": None, "nodule": None}
                if analysis.ok:
                    top = int(np.argmax(analysis.classification.probabilities))
                    entry["heatMap"] = self._heatMapNode(analysis.heat_map(top, volume.grid), ijkToRAS,
                                                         f"{base} CTExplain point {analysis.point.id}")
                    entry["nodule"] = slicer.util.addVolumeFromArray(analysis.nodule_labels(volume.grid), ijkToRAS=ijkToRAS,
                                                                     name=f"{base} CTExplain nodule {analysis.point.id}",
                                                                     nodeClassName="vtkMRMLLabelMapVolumeNode")
                    nodes += [entry["heatMap"], entry["nodule"]]
                points[analysis.point.id] = entry
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{base} CTExplain points")
            self._fillTable(table, [], points_table(analyses))
            nodes.append(table)
        except Exception:
            self._removeNodesAddedSince(before)
            raise
        for node in nodes:
            node.SetAttribute(INPUT_ATTRIBUTE, inputVolumeNode.GetID())
        return {"input": inputVolumeNode, "table": table, "points": points, "nodes": nodes,
                "heatMaps": {label: p["heatMap"] for label, p in points.items() if p["heatMap"] is not None}}

    @staticmethod
    def _worldToVolume(volumeNode) -> Optional[np.ndarray]:
        """World RAS -> the volume's own RAS: the inverse of its parent transform (None without one)."""
        transform = volumeNode.GetParentTransformNode()
        if transform is None:
            return None
        matrix = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(matrix)
        return np.linalg.inv(np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]))

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
    def _checkInput(inputVolumeNode) -> None:
        if inputVolumeNode is None or inputVolumeNode.GetClassName() != "vtkMRMLScalarVolumeNode":
            raise ValueError("CTExplain: the input must be a scalar volume node (a CT), got "
                             f"{inputVolumeNode.GetClassName() if inputVolumeNode is not None else None}")

    def _start(self, inputVolumeNode, classifier, segmenter, method, device, progress) -> CTExplainRun:
        import os

        from CTExplainLib.background import BackgroundExplain

        run = CTExplainRun(self, inputVolumeNode, None, progress)
        run.job = BackgroundExplain(volume_from_node(inputVolumeNode), classifier=classifier, segmenter=segmenter,
                                    method=method, device=device, python=pythonExecutable(),
                                    temp_root=os.path.join(slicer.app.temporaryPath, "CTExplain"),
                                    progress=run.onChildProgress)
        run.job.start()
        run.tempFolder = run.job.folder
        return run

    def _placeOutputs(self, inputVolumeNode, outputs) -> Dict[str, Any]:
        """A finished background run's files (CTExplainLib.background.CaseOutputs) as scene nodes."""
        before = self._nodeIDs()
        try:
            heatMaps = ((name, outputs.heat_map(name)) for name in outputs.heat_map_names())
            results = self._addOutputs(inputVolumeNode, outputs.record, heatMaps, outputs.labels())
        except Exception:
            self._removeNodesAddedSince(before)
            raise
        self._replaceOutputs(inputVolumeNode, results)
        return results

    def _replaceOutputs(self, inputVolumeNode, results: Dict[str, Any]) -> None:
        keep = {node.GetID() for node in results["nodes"]}
        self.removeOutputs(inputVolumeNode, keep=keep)
        top = results["heatMaps"].get(results["topFinding"])
        slicer.util.setSliceViewerLayers(background=inputVolumeNode, foreground=top, foregroundOpacity=HEAT_MAP_OPACITY)

    @staticmethod
    def _nodeIDs() -> List[str]:
        scene = slicer.mrmlScene
        return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]

    def _removeNodesAddedSince(self, before: Sequence[str]) -> None:
        """Whatever was added (including display nodes and half-built nodes) goes again."""
        scene, known = slicer.mrmlScene, set(before)
        for nodeID in reversed([n for n in self._nodeIDs() if n not in known]):
            node = scene.GetNodeByID(nodeID)
            if node is not None:
                scene.RemoveNode(node)

    @staticmethod
    def _loadModels(classifier: Optional[str], segmenter: Optional[str]):
        from CTExplainLib.model_package import load_package
        from CTExplainLib.models_catalog import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER, chosen_segmenter, resolve_models

        classifierPath, segmenterPath = resolve_models(classifier or DEFAULT_CLASSIFIER,
                                                       chosen_segmenter(segmenter or None, DEFAULT_SEGMENTER))
        return load_package(classifierPath), load_package(segmenterPath) if segmenterPath is not None else None

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

    def _addOutputs(self, inputVolumeNode, record: Dict[str, Any], heatMaps: Iterable[Tuple[str, np.ndarray]],
                    labels: Optional[np.ndarray]) -> Dict[str, Any]:
        """Nodes for one run, the same from both paths: ``record`` is result.json's shape (findings
        with probabilities and anatomy, segments); arrays are (K, J, I) on the input's grid."""
        from CTExplainLib.writing import label_array

        scene, inputID, base = slicer.mrmlScene, inputVolumeNode.GetID(), inputVolumeNode.GetName()
        ijkToRAS = ijkToRASArray(inputVolumeNode)  # outputs share the input's grid exactly
        nodes: List[Any] = []

        def tag(node):
            node.SetAttribute(INPUT_ATTRIBUTE, inputID)
            nodes.append(node)
            return node

        heatMapNodes: Dict[str, Any] = {}
        for name, heat in heatMaps:
            heatMapNodes[name] = tag(self._heatMapNode(heat, ijkToRAS, f"{base} CTExplain {name}"))

        labelMap = segmentationNode = colorTable = None
        if labels is not None:
            segments = record.get("segments", [])
            colorTable = tag(scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{base} CTExplain colors"))
            colorTable.SetTypeToUser()  # names from the package, not the built-in "Labels" ("jake")
            colorTable.SetNumberOfColors(max([int(s["label"]) for s in segments] + [0]) + 1)
            colorTable.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
            for segment in segments:
                colorTable.SetColor(int(segment["label"]), segment["name"], *[float(c) for c in segment["color"]], 1.0)
            labelMap = tag(slicer.util.addVolumeFromArray(label_array(labels), ijkToRAS=ijkToRAS,  # uint8/16, never int64
                                                          name=f"{base} CTExplain labels", nodeClassName="vtkMRMLLabelMapVolumeNode"))
            labelMap.GetDisplayNode().SetAndObserveColorNodeID(colorTable.GetID())
            segmentationNode = tag(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{base} CTExplain segmentation"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolumeNode)
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelMap, segmentationNode):
                raise RuntimeError(f"CTExplain: could not import the label map of {base} into a segmentation")

        findings = record.get("findings", [])
        probabilities = {f["name"]: float(f["probability"]) for f in findings}
        anatomy = {f["name"]: f["anatomy"] for f in findings if f.get("anatomy") is not None}
        table = tag(scene.AddNewNodeByClass("vtkMRMLTableNode", f"{base} CTExplain findings"))
        self._fillTable(table, findings)
        top = max(heatMapNodes, key=lambda n: probabilities[n]) if heatMapNodes else None
        return {"input": inputVolumeNode, "heatMaps": heatMapNodes, "labelMap": labelMap, "segmentation": segmentationNode,
                "colorTable": colorTable, "table": table, "probabilities": probabilities, "anatomy": anatomy,
                "topFinding": top, "record": record, "nodes": nodes}

    @staticmethod
    def _heatMapNode(heat: np.ndarray, ijkToRAS: np.ndarray, name: str):
        node = slicer.util.addVolumeFromArray(np.asarray(heat, dtype=np.float32), ijkToRAS=ijkToRAS, name=name,
                                              nodeClassName="vtkMRMLScalarVolumeNode")
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(HEAT_MAP_COLOR_ID)
        display.AutoWindowLevelOff()  # else any Modified() recomputes the window from percentiles
        display.SetWindowLevelMinMax(0.0, 1.0)
        return node

    @staticmethod
    def _fillTable(table, findings: Sequence[Dict[str, Any]], columns=None) -> None:
        """The columns of ``CTExplainLib.findings_table`` (or ``columns`` of that form) as VTK arrays of ``table``."""
        from CTExplainLib.findings_table import findings_table

        for title, kind, values in columns if columns is not None else findings_table(findings):
            column = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
            for value in values:
                column.InsertNextValue(value)
            column.SetName(title)
            table.AddColumn(column)

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

    # -- dependencies ---------------------------------------------------------------------
    @staticmethod
    def missingDependencies(requirements=None) -> List[Any]:
        """The core's Python packages that are not installed (found without importing them)."""
        from CTExplainLib import dependencies

        return dependencies.missing(dependencies.REQUIREMENTS if requirements is None else requirements)

    def installDependencies(self, requirements=None) -> bool:
        """Ask, then install what is missing: torch through the PyTorch extension's PyTorchUtils
        when it is there (else pip), the rest with slicer.util.pip_install. True if all present."""
        from CTExplainLib import dependencies

        missing = self.missingDependencies(requirements)
        if not missing:
            return True
        names = ", ".join(r.name for r in missing)
        if not slicer.util.confirmOkCancelDisplay(
                f"CTExplain needs Python packages that are not installed: {names}.\n\n"
                "Install them now? This downloads them and can take several minutes.", windowTitle="CTExplain"):
            return False
        torch, others = dependencies.split_torch(missing)
        if torch is not None and not self._installTorch(torch):
            return False
        if others:
            slicer.util.pip_install([r.pip for r in others])
        still = self.missingDependencies(missing)
        if still:
            LOG.error("CTExplain: still missing after installation: %s", ", ".join(r.name for r in still))
        return not still

    @staticmethod
    def _installTorch(requirement) -> bool:
        from CTExplainLib.dependencies import version_specifier

        try:
            import PyTorchUtils  # the PyTorch extension (slicer-api.md section 6)
        except ImportError:
            slicer.util.pip_install([requirement.pip])
            return True
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return True
        return torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=version_specifier(requirement)) is not None


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
