"""CTExplain.py (the Slicer module) against the Slicer stand-in, with the shipped demo models.

The spatial checks never trust the module's own conversion: the reference is the core run on a
Volume that SimpleITK read from the same file (LPS, its own index-to-point), and positions are
compared as RAS points through each node's IJK-to-RAS matrix. A planted wrong conversion must
make the same checks fail.

Tests share one stand-in and run in file order: each stateful test uses its own input node, and
the self-test (which clears the scene) comes last.
"""
from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import SimpleITK as sitk
import slicer_standin
import vtk
from CTExplainLib import pipeline
from CTExplainLib.model_package import load_package
from CTExplainLib.models_catalog import (
    DEFAULT_CLASSIFIER,
    DEFAULT_SEGMENTER,
    resolve_package,
)
from CTExplainLib.volume import Grid, Volume

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "CTExplain" / "CTExplain.py"
UI_FILE = REPO / "CTExplain" / "Resources" / "UI" / "CTExplain.ui"
SAMPLE = REPO / "CTExplain" / "Resources" / "Samples" / "chest_ct.nii.gz"
F = np.diag([-1.0, -1.0, 1.0])
MARKER_IJK = (30, 40, 70)  # off-centre, so a flip or transpose moves it
MARKER_HU = 3000


@pytest.fixture(scope="module")
def env():
    slicer = slicer_standin.install(testing=True)
    module = slicer_standin.load_scripted_module(MODULE_FILE)
    yield slicer, module
    slicer_standin.uninstall()


@pytest.fixture(scope="module")
def models():
    return load_package(resolve_package(DEFAULT_CLASSIFIER)), load_package(resolve_package(DEFAULT_SEGMENTER))


def matrix_of(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def node_ids(slicer):
    scene = slicer.mrmlScene
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def load_marked(slicer):
    """A copy of the sample in the scene with a bright 3x3x3 block written into its voxels."""
    node = slicer.util.loadVolume(str(SAMPLE))
    i, j, k = MARKER_IJK
    slicer.util.arrayFromVolume(node)[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = MARKER_HU
    slicer.util.arrayFromVolumeModified(node)
    return node


@pytest.fixture(scope="module")
def reference(models) -> Dict[str, Any]:
    """The core on the marked sample as SimpleITK reads it: heat maps and labels on its grid."""
    image = sitk.ReadImage(str(SAMPLE))
    volume = Volume.from_sitk(image)
    i, j, k = MARKER_IJK
    volume.array[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = MARKER_HU
    analysis = pipeline.analyse(volume, *models, pipeline.ExplainOptions(), pipeline.StageTimer(lambda *a: None, []))
    heat = {name: analysis.classification.heat_map(n, volume.grid) for n, name in enumerate(analysis.classification.class_names)}
    return {"volume": volume, "heat": heat, "labels": analysis.segmentation.labels.array,
            "marker_lps": np.asarray(image.TransformIndexToPhysicalPoint(MARKER_IJK))}


@pytest.fixture(scope="module")
def marked(env):
    slicer, module = env
    node = load_marked(slicer)
    return node, module.CTExplainLogic().process(node)


def check_outputs(slicer, inputNode, results, reference) -> None:
    """Every output on the input's grid, holding the reference core's values at the same RAS points."""
    m_in = matrix_of(inputNode)
    i, j, k = MARKER_IJK
    ras = m_in @ np.array([i, j, k, 1.0])
    # The marker is where SimpleITK puts it (LPS -> RAS negates x and y), in the input and the reference.
    np.testing.assert_allclose(ras[:3], F @ reference["marker_lps"], atol=1e-4)
    assert slicer.util.arrayFromVolume(inputNode)[k, j, i] == MARKER_HU
    ref_index = np.round(reference["volume"].grid.point_to_index(F @ ras[:3])).astype(int)
    assert reference["volume"].array[ref_index[2], ref_index[1], ref_index[0]] == MARKER_HU

    volumes = [(results["heatMaps"][n], reference["heat"][n]) for n in results["heatMaps"]]
    if results["labelMap"] is not None:
        volumes.append((results["labelMap"], reference["labels"]))
    assert volumes
    for node, expected in volumes:
        np.testing.assert_allclose(matrix_of(node), m_in, atol=1e-9)
        actual = slicer.util.arrayFromVolume(node)
        np.testing.assert_allclose(actual, expected, atol=1e-6)  # shapes first: a transpose fails here
        # The marker's RAS point falls on the same voxel of the output, with the reference's value there.
        out_ijk = np.linalg.solve(matrix_of(node), ras)[:3]
        np.testing.assert_allclose(out_ijk, MARKER_IJK, atol=1e-6)
        assert actual[k, j, i] == pytest.approx(expected[tuple(ref_index[::-1])], abs=1e-6)

    segmentationNode = results["segmentation"]
    if segmentationNode is not None:
        segmentation = segmentationNode.GetSegmentation()
        names = {name: label for label, name in enumerate(["background", "lungs", "body"])}
        assert segmentation.GetNumberOfSegments() == len(set(np.unique(reference["labels"])) - {0})
        for n in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(n)
            image = slicer.vtkOrientedImageData()
            assert segmentationNode.GetBinaryLabelmapRepresentation(segmentId, image)
            m = vtk.vtkMatrix4x4()
            image.GetImageToWorldMatrix(m)
            np.testing.assert_allclose([[m.GetElement(r, c) for c in range(4)] for r in range(4)], m_in, atol=1e-9)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, inputNode)
            label = names[segmentation.GetNthSegment(n).GetName()]
            np.testing.assert_array_equal(mask > 0, reference["labels"] == label)


# 1
def test_outputs_on_the_input_grid_at_the_same_points(env, marked, reference):
    slicer, _ = env
    node, results = marked
    assert set(results["heatMaps"]) == {"demo finding A", "demo finding B", "demo finding C"}
    assert slicer.util.arrayFromVolume(results["labelMap"]).dtype in (np.uint8, np.uint16)
    assert slicer.util.arrayFromVolume(results["heatMaps"]["demo finding A"]).dtype == np.float32
    check_outputs(slicer, node, results, reference)


def _transposed(volumeNode):
    array = np.array(slicer_standin.installed().util.arrayFromVolume(volumeNode)).transpose(2, 1, 0).copy()
    return Volume.from_ijk_to_ras(array, matrix_of(volumeNode))


def _no_lps_flip(volumeNode):
    array = np.array(slicer_standin.installed().util.arrayFromVolume(volumeNode))
    m = matrix_of(volumeNode)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    k, j, i = array.shape
    return Volume(array, Grid((i, j, k), spacing, m[:3, 3], m[:3, :3] / spacing))  # RAS taken as LPS


# 2
@pytest.mark.parametrize("wrong", [_transposed, _no_lps_flip], ids=["transposed", "no-lps-flip"])
def test_planted_wrong_conversion_is_caught(env, reference, monkeypatch, wrong):
    slicer, module = env
    node = load_marked(slicer)
    monkeypatch.setattr(module, "volume_from_node", wrong)
    results = module.CTExplainLogic().process(node, segmenter="none")
    with pytest.raises(AssertionError) as caught:
        check_outputs(slicer, node, results, reference)
    # It is the comparison of voxel values that fails, not the set-up checks on the input.
    assert "Not equal to tolerance" in str(caught.value) or "shape mismatch" in str(caught.value)


@pytest.fixture(scope="module")
def clean(env):
    slicer, module = env
    node = slicer.util.loadVolume(str(SAMPLE))
    return node, module.CTExplainLogic().process(node)


# 3
def test_display_colors_segments_and_table(env, clean, models, tmp_path):
    slicer, _ = env
    node, results = clean
    top = results["heatMaps"][results["topFinding"]]
    for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == node.GetID()
        assert composite.GetForegroundVolumeID() == top.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    for heat in results["heatMaps"].values():
        display = heat.GetDisplayNode()
        display.Modified()  # with auto window/level on, this would recompute the window
        assert display.GetColorNodeID() == "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
        assert not display.GetAutoWindowLevel()
        assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
    colorTable = results["colorTable"]
    assert results["labelMap"].GetDisplayNode().GetColorNodeID() == colorTable.GetID()
    assert colorTable.GetColorName(1) == "lungs" and colorTable.GetColorName(2) == "body"
    segmentation = results["segmentation"].GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names and set(names) <= {c.name for c in models[1].metadata.classes[1:]}
    for output in results["nodes"]:
        assert output.GetAttribute("CTExplain.InputNodeID") == node.GetID()
        assert output.GetName().startswith(node.GetName() + " CTExplain")

    table = results["table"].GetTable()
    rows = {table.GetColumnByName("Finding").GetValue(r): table.GetColumnByName("Probability").GetValue(r)
            for r in range(table.GetNumberOfRows())}
    case = pipeline.explain_case(SAMPLE, tmp_path / "case", models[0], None, pipeline.ExplainOptions())
    assert case.ok, case.error
    findings = json.loads((tmp_path / "case" / "result.json").read_text())["findings"]
    assert len(rows) == len(findings) == 3
    for finding in findings:
        assert rows[finding["name"]] == pytest.approx(finding["probability"], abs=1e-5)
    assert table.GetColumnByName("Dominant region").GetValue(0) in {"lungs", "body", "background"}


# 4 (after 3: it replaces the outputs of `clean`)
def test_rerun_replaces_outputs_and_leaves_input_alone(env, clean):
    slicer, module = env
    node, first = clean
    count, array, matrix = slicer.mrmlScene.GetNumberOfNodes(), slicer.util.arrayFromVolume(node).copy(), matrix_of(node)
    mtime = node.GetMTime()
    second = module.CTExplainLogic().process(node)
    assert slicer.mrmlScene.GetNumberOfNodes() == count
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
    np.testing.assert_array_equal(matrix_of(node), matrix)
    assert node.GetMTime() == mtime
    ids = set(node_ids(slicer))
    for old in first["nodes"]:
        assert old.GetID() not in ids or old.GetScene() is None
    assert all(n.GetScene() is slicer.mrmlScene for n in second["nodes"])


def _mismatched_package(tmp_path: Path) -> Path:
    package = tmp_path / "wrong-weights"
    shutil.copytree(resolve_package(DEFAULT_CLASSIFIER), package)
    metadata = json.loads((package / "ctexplain-model.json").read_text())
    metadata["network_kwargs"]["in_channels"] = 1
    metadata["input"]["channels"] = metadata["input"]["channels"][:1]
    (package / "ctexplain-model.json").write_text(json.dumps(metadata))
    return package


class _FailingSegmentationsLogic:
    def ImportLabelmapToSegmentationNode(self, *args):
        return False


# 5
def test_failure_leaves_scene_as_before(env, marked, tmp_path, monkeypatch):
    slicer, module = env
    node, _ = marked  # an input with outputs already: they must survive a failed run
    before = node_ids(slicer)
    logic = module.CTExplainLogic()
    with pytest.raises(Exception, match="weights do not match"):
        logic.process(node, classifier=str(_mismatched_package(tmp_path)))
    assert node_ids(slicer) == before
    # A failure after output nodes were added (heat maps, label map, segmentation node).
    monkeypatch.setattr(slicer.modules.segmentations, "logic", lambda: _FailingSegmentationsLogic())
    with pytest.raises(RuntimeError, match="could not import the label map"):
        logic.process(node)
    assert node_ids(slicer) == before
    with pytest.raises(NotImplementedError, match="wait=True"):
        logic.process(node, wait=False)


# 7
def test_ui_file_has_every_widget_the_module_uses():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used and used <= set(widgets), used - set(widgets)
    assert widgets["inputSelector"] == "qMRMLNodeComboBox"
    selector = next(w for w in root.iter("widget") if w.get("name") == "inputSelector")
    node_types = [s.text for p in selector.iter("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
    assert node_types == ["vtkMRMLScalarVolumeNode"]
    assert {widgets[n] for n in ("applyButton", "methodComboBox", "deviceComboBox", "progressBar", "findingsTable")} == {
        "QPushButton", "QComboBox", "QProgressBar", "QTableWidget"}


def test_module_description(env):
    slicer, _ = env
    parent = slicer.modules.ctexplain
    assert parent.title == "CTExplain" and parent.categories == ["Explainability"]
    assert "TotalSegmentator" in parent.acknowledgementText and "Apache-2.0" in parent.acknowledgementText
    assert "UNTRAINED" in parent.acknowledgementText


# 6 (last: the self-test clears the scene)
def test_self_test_and_docstring_example(env):
    slicer, module = env
    slicer.selfTests["CTExplain"]()
    # The Logic docstring's console example runs as written.
    lines = [line.strip()[4:] for line in module.CTExplainLogic.__doc__.splitlines() if line.strip().startswith(">>> ")]
    assert len(lines) == 4
    namespace: Dict[str, Any] = {"slicer": slicer}
    exec("\n".join(lines), namespace)
    assert len(namespace["results"]["probabilities"]) == 3
    assert namespace["volumeNode"].GetName().startswith("chest_ct")  # the self-test loaded one first
