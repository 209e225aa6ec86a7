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
import os
import re
import shutil
import subprocess
import sys
import time
import types
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
from CTExplainLib.errors import CTExplainError
from CTExplainLib.models_catalog import (
    DEFAULT_CLASSIFIER,
    DEMO_CLASSIFIER,
    DEMO_SEGMENTER,
    HEAD_SAMPLE,
    read_package_info,
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


# The tests check mechanics (alignment, scene bookkeeping), so they name the small 3D demo
# models rather than whatever the shipped defaults are.
DEMO = {"classifier": str(resolve_package(DEMO_CLASSIFIER)), "segmenter": str(resolve_package(DEMO_SEGMENTER))}


@pytest.fixture(scope="module")
def models():
    return load_package(resolve_package(DEMO_CLASSIFIER)), load_package(resolve_package(DEMO_SEGMENTER))


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
    return node, module.CTExplainLogic().process(node, **DEMO)


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
    results = module.CTExplainLogic().process(node, classifier=DEMO["classifier"], segmenter="none")
    with pytest.raises(AssertionError) as caught:
        check_outputs(slicer, node, results, reference)
    # It is the comparison of voxel values that fails, not the set-up checks on the input.
    assert "Not equal to tolerance" in str(caught.value) or "shape mismatch" in str(caught.value)


@pytest.fixture(scope="module")
def clean(env):
    slicer, module = env
    node = slicer.util.loadVolume(str(SAMPLE))
    return node, module.CTExplainLogic().process(node, **DEMO)


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
    second = module.CTExplainLogic().process(node, **DEMO)
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
    shutil.copytree(resolve_package(DEMO_CLASSIFIER), package)
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
        logic.process(node, **DEMO)
    assert node_ids(slicer) == before


def table_rows(tableNode) -> Dict[str, Dict[str, Any]]:
    table = tableNode.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return {table.GetColumnByName("Finding").GetValue(r): {n: table.GetColumnByName(n).GetValue(r) for n in names}
            for r in range(table.GetNumberOfRows())}


# 8
def test_background_run_gives_the_in_process_outputs(env):
    slicer, module = env
    node = slicer.util.loadVolume(str(SAMPLE))
    logic = module.CTExplainLogic()
    inProcess = logic.process(node, **DEMO)
    count = slicer.mrmlScene.GetNumberOfNodes()
    events = []
    run = logic.process(node, **DEMO, wait=False, progress=lambda stage, fraction: events.append((stage, fraction)))
    assert isinstance(run, module.CTExplainRun) and run.running
    assert run.wait(timeout=300), run.error
    assert not run.running and run.error is None and not run.tempFolder.exists()

    stages = [stage for stage, _ in events]
    fractions = [fraction for _, fraction in events]
    assert stages[0] == "load" and stages[-2:] == ["scene", "done"]
    assert {"preprocess", "classify+explain", "segment", "heat maps"} <= set(stages)
    assert fractions == sorted(fractions) and fractions[0] < 0.5 and fractions[-1] == 1.0

    background = run.outputs
    assert slicer.mrmlScene.GetNumberOfNodes() == count  # the re-run replaced the in-process outputs
    assert all(n.GetScene() is slicer.mrmlScene for n in background["nodes"])
    assert set(background["heatMaps"]) == set(inProcess["heatMaps"])
    m_in = matrix_of(node)
    for name, heat in background["heatMaps"].items():
        np.testing.assert_array_equal(matrix_of(heat), m_in)  # exactly the input's IJK-to-RAS
        np.testing.assert_allclose(slicer.util.arrayFromVolume(heat), slicer.util.arrayFromVolume(inProcess["heatMaps"][name]), atol=1e-5)
        assert slicer.util.arrayFromVolume(heat).dtype == np.float32
    np.testing.assert_array_equal(matrix_of(background["labelMap"]), m_in)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(background["labelMap"]), slicer.util.arrayFromVolume(inProcess["labelMap"]))
    assert slicer.util.arrayFromVolume(background["labelMap"]).dtype == slicer.util.arrayFromVolume(inProcess["labelMap"]).dtype
    assert background["probabilities"] == pytest.approx(inProcess["probabilities"], abs=1e-6)
    segments = background["segmentation"].GetSegmentation()
    assert sorted(segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())) == \
        sorted(inProcess["segmentation"].GetSegmentation().GetNthSegment(i).GetName()
               for i in range(inProcess["segmentation"].GetSegmentation().GetNumberOfSegments()))

    # The findings table: probabilities and the CAM-in-anatomy shares, the same from both paths,
    # and the same as the command line's result.json (the background run's record).
    rows, expected = table_rows(background["table"]), table_rows(inProcess["table"])
    assert rows.keys() == expected.keys() == set(background["probabilities"])
    for name, row in rows.items():
        assert set(row) == set(expected[name])
        assert {"CAM in lungs", "CAM in body", "CAM in background", "CAM in outside_body"} <= set(row)
        for column, value in row.items():
            if isinstance(value, float):
                assert value == pytest.approx(expected[name][column], abs=1e-6), column
            else:
                assert value == expected[name][column], column
        finding = next(f for f in background["record"]["findings"] if f["name"] == name)
        for region, share in finding["anatomy"]["energy_by_segment"].items():
            assert row[f"CAM in {region}"] == pytest.approx(share, abs=1e-12)
        assert sum(row[c] for c in row if c.startswith("CAM in ")) == pytest.approx(1.0)


def _descendants(pid: int):
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            children = [int(c) for c in task.read_text().split()]
            found += children
            todo += children
    return found


def _alive(pid: int) -> bool:
    from CTExplainLib.background import process_alive

    return process_alive(pid)


# 9
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process tree read from /proc")
def test_cancel_kills_the_process_tree_and_leaves_the_scene(env):
    slicer, module = env
    node = slicer.util.loadVolume(str(SAMPLE))
    before = node_ids(slicer)
    temp_root = Path(slicer.app.temporaryPath) / "CTExplain"
    folders_before = set(temp_root.iterdir()) if temp_root.is_dir() else set()
    events = []
    run = module.CTExplainLogic().process(node, **DEMO, wait=False, progress=lambda *event: events.append(event))
    assert run.tempFolder.is_dir()
    deadline = time.monotonic() + 120
    while not events and time.monotonic() < deadline:
        assert not run.poll(), run.error
        time.sleep(0.05)
    assert events, "no progress line within 120 s"
    pid = run.pid
    tree = [pid] + _descendants(pid)
    assert os.getpgid(pid) == pid != os.getpgid(0)
    run.cancel()
    assert run.cancelled and run.error == "cancelled" and run.poll() and run.outputs is None
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in tree)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert node_ids(slicer) == before
    assert not run.tempFolder.exists()
    assert (set(temp_root.iterdir()) if temp_root.is_dir() else set()) == folders_before
    run.cancel()  # a second cancel is harmless


def _unregistered_network_package(tmp_path: Path) -> Path:
    package = tmp_path / "unknown-network"
    shutil.copytree(resolve_package(DEMO_CLASSIFIER), package)
    metadata = json.loads((package / "ctexplain-model.json").read_text())
    metadata["network"] = "NotARegistryNet"
    (package / "ctexplain-model.json").write_text(json.dumps(metadata))
    return package


# 10
def test_background_failure_sets_the_error_and_leaves_the_scene(env, marked, tmp_path, monkeypatch):
    slicer, module = env
    node, _ = marked  # it has outputs from an earlier run: they must survive
    before = node_ids(slicer)
    logic = module.CTExplainLogic()
    run = logic.process(node, classifier=str(_unregistered_network_package(tmp_path)), wait=False)
    assert run.wait(timeout=300) is False
    assert "NotARegistryNet" in run.error and "registry" in run.error
    assert node_ids(slicer) == before and not run.tempFolder.exists()
    # A failure while its files become nodes (after some were added).
    monkeypatch.setattr(slicer.modules.segmentations, "logic", lambda: _FailingSegmentationsLogic())
    run = logic.process(node, **DEMO, wait=False)
    assert run.wait(timeout=300) is False
    assert "could not import the label map" in run.error
    assert node_ids(slicer) == before and not run.tempFolder.exists()


# 11
def test_finding_display_opacity_and_threshold(env, marked):
    slicer, module = env
    node, results = marked
    logic = module.CTExplainLogic()
    logic.showFinding(results, "demo finding B", 0.3)
    for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == node.GetID()
        assert composite.GetForegroundVolumeID() == results["heatMaps"]["demo finding B"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    logic.setHeatMapDisplay(results, 0.7, 0.25)
    for heat in results["heatMaps"].values():
        display = heat.GetDisplayNode()
        assert display.GetApplyThreshold() == 1
        assert (display.GetLowerThreshold(), display.GetUpperThreshold()) == pytest.approx((0.25, 1.0))
    assert all(c.GetForegroundOpacity() == pytest.approx(0.7) for c in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"))
    logic.setHeatMapDisplay(results, 0.5, 0.0)
    assert all(h.GetDisplayNode().GetApplyThreshold() == 0 for h in results["heatMaps"].values())
    parameterNode = logic.getParameterNode()
    logic.setDefaultParameters(parameterNode)
    assert parameterNode.GetParameter("Method") == "gradcam" and parameterNode.GetParameter("Opacity") == "0.5"
    classifiers, segmenters = logic.modelChoices()
    assert any("demo-chest-classifier-untrained" in label for label, _ in classifiers)
    assert segmenters[-1] == ("None", "none")


# 12
def test_missing_dependencies_are_found_without_importing_them(env):
    from CTExplainLib.dependencies import REQUIREMENTS, Requirement

    _, module = env
    fake = [Requirement("numpy", "numpy>=1.24"), Requirement("ctexplain_no_such_package_x", "no-such-package-x>=1.0")]
    assert module.CTExplainLogic.missingDependencies(fake) == [fake[1]]
    assert fake[1].name == "no-such-package-x"
    assert module.CTExplainLogic.missingDependencies() == []  # this environment has them all
    assert {r.name for r in REQUIREMENTS} >= {"torch", "monai", "SimpleITK", "numpy", "pydicom", "pylibjpeg",
                                               "pylibjpeg-openjpeg", "safetensors", "slicerio"}


@pytest.fixture
def missing_torch_and_monai(monkeypatch):
    from CTExplainLib import dependencies

    monkeypatch.setattr(dependencies, "is_installed", lambda module, find_spec=None: module not in ("torch", "monai"))


# torch through light-the-torch (as PyTorchUtils installs it) but without torchvision.
LTT = ["light-the-torch>=0.5", ("-m", "light_the_torch", ["install", "torch>=2.1"])]


def test_install_in_testing_mode_installs_without_asking_and_fails_loudly(env, missing_torch_and_monai, monkeypatch):
    """Under --testing confirmOkCancelDisplay answers False (slicer-api.md section 1): asking
    would silently install nothing. The module installs without asking (as PyTorchUtils does in
    testing mode) and, as the stand-in's pip installs nothing, says what is still missing."""
    slicer, module = env
    monkeypatch.setattr(slicer.app, "pipRequests", [])
    asked = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: asked.append(text) or False)
    with pytest.raises(Exception, match=r"still missing after installation: torch>=2\.1, monai>=1\.4"):
        module.CTExplainLogic().installDependencies()
    assert asked == []
    assert slicer.app.pipRequests == LTT + [["monai>=1.4"]]


def test_install_asks_once_and_never_lets_pytorchutils_ask_again_or_add_torchvision(
        env, missing_torch_and_monai, monkeypatch):
    """PyTorchUtilsLogic.installTorch asks a second time and always adds torchvision: it is not
    called; torch comes from light-the-torch alone after the module's one question."""
    slicer, module = env
    monkeypatch.setattr(slicer.app, "pipRequests", [])
    monkeypatch.setattr(slicer.app.commandOptions(), "testingEnabled", False)
    asked = []
    monkeypatch.setattr(slicer.app, "dialogResponder", lambda kind, text: asked.append(kind) or True)
    calls = []

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            calls.append(askConfirmation)
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    with pytest.raises(Exception, match="still missing"):  # the stand-in installs nothing
        module.CTExplainLogic().installDependencies()
    assert asked == ["confirmOkCancelDisplay"] and calls == []
    assert slicer.app.pipRequests == LTT + [["monai>=1.4"]]
    assert "torchvision" not in repr(slicer.app.pipRequests)


def test_install_declined_installs_nothing(env, missing_torch_and_monai, monkeypatch):
    slicer, module = env
    monkeypatch.setattr(slicer.app, "pipRequests", [])
    monkeypatch.setattr(slicer.app.commandOptions(), "testingEnabled", False)
    monkeypatch.setattr(slicer.app, "dialogResponder", lambda kind, text: kind == "confirmOkCancelDisplay" and False)
    assert module.CTExplainLogic().installDependencies() is False
    assert slicer.app.pipRequests == []


NO_HEAVY_PACKAGES = """
import importlib.abc, sys
BLOCKED = {"torch", "monai", "pydicom", "pylibjpeg", "openjpeg", "safetensors", "slicerio", "matplotlib", "tqdm"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import slicer_standin
slicer = slicer_standin.install(testing=False)   # a dialog would raise: none may be shown
module = slicer_standin.load_scripted_module(sys.argv[2])
logic = module.CTExplainLogic()
missing = [r.name for r in logic.missingDependencies()]
print(missing)
assert "torch" in missing and "monai" in missing and "numpy" not in missing, missing
classifiers, segmenters = logic.modelChoices()   # the catalog reads metadata only: no torch needed
assert "demo-chest-classifier-untrained (untrained demo)" in [label for label, path in classifiers], classifiers
assert segmenters[-1] == ("None", "none") and len(segmenters) > 1, segmenters
assert slicer.app.pipRequests == []
assert not BLOCKED & set(m.split(".")[0] for m in sys.modules), BLOCKED & set(sys.modules)
slicer_standin.uninstall()
print("ok")
"""


def test_load_ct_reads_dicom_as_the_core_and_files_with_slicer(env, data_dir, tmp_path):
    """The "Load CT..." path: any file of a DICOM series gives the series as the core loads it
    (voxels and IJK-to-RAS); a NIfTI goes through Slicer's reader; a non-CT file is an error."""
    from CTExplainLib.loading import load_volume

    slicer, module = env
    logic = module.CTExplainLogic()
    series = data_dir / "slicer-cthead"
    some_file = sorted(p for p in series.rglob("*") if p.is_file())[5]
    node = logic.loadCT(some_file)
    core = load_volume(series)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), core.array)
    np.testing.assert_allclose(matrix_of(node), core.ijk_to_ras(), atol=1e-9)
    nifti = logic.loadCT(SAMPLE)
    assert nifti.GetName().startswith("chest_ct") and slicer.util.arrayFromVolume(nifti).shape == (112, 101, 122)
    (tmp_path / "notes.txt").write_text("not a CT")
    with pytest.raises(Exception, match="notes.txt"):
        logic.loadCT(tmp_path / "notes.txt")
    for added in (node, nifti):
        slicer.mrmlScene.RemoveNode(added)


# 13
def test_module_loads_without_its_dependencies_and_installs_nothing_at_import():
    result = subprocess.run([sys.executable, "-c", NO_HEAVY_PACKAGES, str(Path(__file__).parent), str(MODULE_FILE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


# 7
def test_ui_file_has_every_widget_the_module_uses():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used and used <= set(widgets), used - set(widgets)
    assert widgets["inputSelector"] == "qMRMLNodeComboBox"
    assert {widgets[n] for n in ("classifierComboBox", "segmenterComboBox")} == {"QComboBox"}
    assert {widgets[n] for n in ("opacitySlider", "thresholdSlider")} == {"ctkSliderWidget"}
    selector = next(w for w in root.iter("widget") if w.get("name") == "inputSelector")
    node_types = [s.text for p in selector.iter("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
    assert node_types == ["vtkMRMLScalarVolumeNode"]
    assert widgets["loadButton"] == "QPushButton"
    assert {widgets[n] for n in ("applyButton", "methodComboBox", "deviceComboBox", "progressBar", "findingsTable")} == {
        "QPushButton", "QComboBox", "QProgressBar", "QTableWidget"}


def test_module_description(env):
    slicer, _ = env
    parent = slicer.modules.ctexplain
    assert parent.title == "CTExplain" and parent.categories == ["Explainability"]
    assert "TotalSegmentator" in parent.acknowledgementText and "Apache-2.0" in parent.acknowledgementText
    assert "UNTRAINED" in parent.acknowledgementText  # of the demo packages
    for source in ("CT-ICH", "10.13026/w8q8-ky94", "CC BY 4.0", "Inf-Net", "Kaggle"):
        assert source in parent.acknowledgementText, source
    shipped = [folder.name for folder in (REPO / "CTExplain" / "Resources" / "Models").iterdir() if folder.is_dir()]
    for name in shipped:  # every shipped model's data is cited by the package's name
        assert name in parent.acknowledgementText or name.startswith("demo-"), name


def test_automatic_choice_and_domain_check_in_the_module(env, data_dir):
    """Without a classifier the module chooses by the input's domain, and records why; an input
    no model fits is refused and leaves the scene as it was."""
    slicer, module = env
    head = slicer.util.loadVolume(str(HEAD_SAMPLE.path))
    results = module.CTExplainLogic().process(head)
    record = results["record"]
    assert record["classifier"]["name"] == "head-ct-ich-findings" and results["labelMap"] is None
    assert "the input is head CT" in record["model_choice"]["why"][0] and record["warnings"] == []
    labels = slicer.util.loadVolume(str(data_dir / "totalsegmentator" / "example_seg.nii.gz"))
    before = node_ids(slicer)
    with pytest.raises(CTExplainError, match="no installed classifier fits this input .*a label map"):
        module.CTExplainLogic().process(labels)
    assert node_ids(slicer) == before


# 6 (last: the self-test clears the scene)
def test_self_test_and_docstring_example(env):
    slicer, module = env
    slicer.selfTests["CTExplain"]()
    # The Logic docstring's console example runs as written.
    lines = [line.strip()[4:] for line in module.CTExplainLogic.__doc__.splitlines() if line.strip().startswith(">>> ")]
    assert len(lines) == 4
    namespace: Dict[str, Any] = {"slicer": slicer}
    exec("\n".join(lines), namespace)
    assert list(namespace["results"]["probabilities"]) == list(read_package_info(resolve_package(DEFAULT_CLASSIFIER)).class_names)
    assert namespace["volumeNode"].GetName().startswith("chest_ct")  # the self-test loaded one first
