"""CTExplain.py in a scene as Slicer 5.8 really has it (slicer-api.md, corrected): the input under
a parent transform, colour tables hidden (and so not saved) by default, label values a colour
table lacks named "", an input selector that would list heat maps. Stand-in tests.

The reference is the core (what ``ctexplain explain`` writes) on the same file, read with
SimpleITK: positions are compared as world RAS points computed here from the transform matrix.
The tests share one stand-in and run in file order; the scene save/reload test, which installs
fresh stand-ins, comes last.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer_standin
import vtk
from CTExplainLib import pipeline
from CTExplainLib.model_package import load_package
from CTExplainLib.models_catalog import DEMO_CLASSIFIER, DEMO_SEGMENTER, resolve_package

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "CTExplain" / "CTExplain.py"
SAMPLE = REPO / "CTExplain" / "Resources" / "Samples" / "chest_ct.nii.gz"
pytestmark = pytest.mark.slow  # two pipeline runs (module and CLI) in the fixtures

DEMO = {"classifier": str(resolve_package(DEMO_CLASSIFIER)), "segmenter": str(resolve_package(DEMO_SEGMENTER))}
F = np.diag([-1.0, -1.0, 1.0])
ANGLE = np.deg2rad(25.0)  # an unhardened registration: a turn about A and a shift
MOTION = np.array([[np.cos(ANGLE), 0.0, np.sin(ANGLE), 30.0],
                   [0.0, 1.0, 0.0, -12.0],
                   [-np.sin(ANGLE), 0.0, np.cos(ANGLE), 45.0],
                   [0.0, 0.0, 0.0, 1.0]])


def matrix_of(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def to_world(node) -> np.ndarray:
    """The node's parent transform chain as a 4x4 (identity without one)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture(scope="module")
def cli_case(tmp_path_factory):
    """The core on the same file, as ``ctexplain explain`` writes it: result.json and heat maps."""
    out = tmp_path_factory.mktemp("cli") / "case"
    classifier, segmenter = load_package(resolve_package(DEMO_CLASSIFIER)), load_package(resolve_package(DEMO_SEGMENTER))
    case = pipeline.explain_case(SAMPLE, out, classifier, segmenter, pipeline.ExplainOptions())
    assert case.ok, case.error
    record = json.loads((out / "result.json").read_text())
    heat = {f["name"]: sitk.ReadImage(str(out / f["heat_map"])) for f in record["findings"] if f.get("heat_map")}
    return {"record": record, "heat": heat, "labels": sitk.ReadImage(str(out / "labels.nrrd"))}


@pytest.fixture(scope="module")
def transformed(env):
    """The sample under a rigid transform (not hardened), explained by the module."""
    slicer, module = env
    node = slicer.util.loadVolume(str(SAMPLE))
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    m = vtk.vtkMatrix4x4()
    m.DeepCopy(MOTION.ravel())
    transform.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(transform.GetID())
    return node, module.CTExplainLogic().process(node, **DEMO)


def test_outputs_sit_under_the_input_transform_and_meet_the_cli_at_the_same_world_points(env, transformed, cli_case):
    slicer, _ = env
    node, results = transformed
    shown = MOTION @ matrix_of(node)  # where the input's voxels are shown (world RAS)
    np.testing.assert_allclose(to_world(node) @ matrix_of(node), shown, atol=1e-9)
    outputs = list(results["heatMaps"].values()) + [results["labelMap"]]
    for output in outputs:
        assert output.GetTransformNodeID() == node.GetTransformNodeID(), output.GetName()
        np.testing.assert_allclose(to_world(output) @ matrix_of(output), shown, atol=1e-9, err_msg=output.GetName())
    assert results["segmentation"].GetTransformNodeID() == node.GetTransformNodeID()

    for name, image in cli_case["heat"].items():
        cli = sitk.GetArrayFromImage(image)
        heat = results["heatMaps"][name]
        for index in [np.unravel_index(np.argmax(cli), cli.shape), (40, 50, 60), (100, 20, 90)]:
            k, j, i = (int(v) for v in index)
            # The CLI's voxel as a point of the file (LPS), shown after the transform (world RAS).
            point = MOTION @ np.append(F @ np.asarray(image.TransformIndexToPhysicalPoint((i, j, k))), 1.0)
            ijk = np.rint(np.linalg.inv(to_world(heat) @ matrix_of(heat)) @ point).astype(int)
            assert slicer.util.arrayFromVolume(heat)[ijk[2], ijk[1], ijk[0]] == pytest.approx(cli[k, j, i], abs=1e-3)

    # The segmentation, read back on the (transformed) input's grid, holds the CLI's labels.
    labels = sitk.GetArrayFromImage(cli_case["labels"])
    segmentation = results["segmentation"]
    for segment_index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(segment_index)
        value = segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, node)
        assert np.array_equal(mask > 0, labels == value), segmentation.GetSegmentation().GetSegment(segment_id).GetName()


def test_peak_ras_in_the_table_is_the_cli_peak_where_it_is_shown(transformed, cli_case):
    _, results = transformed
    table = results["table"].GetTable()
    shown = {table.GetColumnByName("Finding").GetValue(r): table.GetColumnByName("Peak RAS").GetValue(r)
             for r in range(table.GetNumberOfRows())}
    checked = 0
    for finding in cli_case["record"]["findings"]:
        lps = (finding.get("anatomy") or {}).get("peak_lps")
        if lps is None:
            continue
        world = (MOTION @ np.append(F @ np.asarray(lps, dtype=float), 1.0))[:3]
        got = [float(v) for v in re.split(r",\s*", shown[finding["name"]])]
        np.testing.assert_allclose(got, world, atol=0.051, err_msg=finding["name"])
        checked += 1
    assert checked == len(cli_case["record"]["findings"]) > 0


def test_every_label_value_gets_a_segment_name(env):
    """A label value that the run's segments do not name (a planted inconsistency) would get an
    empty segment name in Slicer; the module names it instead."""
    slicer, module = env
    node = slicer.util.loadVolume(str(SAMPLE), {"name": "unnamed labels"})
    labels = np.zeros(slicer.util.arrayFromVolume(node).shape, np.uint8)
    labels[10:20, 10:20, 10:20], labels[30:40, 30:40, 30:40] = 1, 3
    record = {"findings": [], "segments": [{"label": 1, "name": "lungs", "color": [0.85, 0.33, 0.1]}]}
    results = module.CTExplainLogic()._addOutputs(node, record, [], labels)
    segmentation = results["segmentation"].GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [(s.GetLabelValue(), s.GetName()) for s in segments] == [(1, "lungs"), (3, "label 3")]
    assert segments[0].GetColor() == pytest.approx((0.85, 0.33, 0.1), abs=1 / 255)  # 8-bit lookup table
    assert segments[1].GetColor() != pytest.approx(segments[0].GetColor())
    assert results["colorTable"].GetColorName(3) == "label 3"


def test_input_selector_candidates_exclude_the_module_outputs(env, transformed):
    slicer, module = env
    node, results = transformed
    logic = module.CTExplainLogic()
    heat = next(iter(results["heatMaps"].values()))
    with pytest.raises(ValueError, match="is a CTExplain output"):
        logic.process(heat, **DEMO)
    heat_ids = {h.GetID() for h in results["heatMaps"].values()}
    assert heat_ids and heat_ids <= set(logic.hiddenInputIDs())
    assert node.GetID() not in logic.hiddenInputIDs()
    assert logic.isInputCandidate(node) and not logic.isInputCandidate(results["labelMap"])
    assert not logic.isInputCandidate(heat)
    # The .ui selector: scalar volumes only (label maps are a child class) - heat maps are hidden by ID.
    ui = (REPO / "CTExplain" / "Resources" / "UI" / "CTExplain.ui").read_text()
    selector = ui[ui.index('name="inputSelector"'):ui.index("</widget>", ui.index('name="inputSelector"'))]
    assert "<string>vtkMRMLScalarVolumeNode</string>" in selector
    assert re.search(r'name="showChildNodeTypes">\s*<bool>false</bool>', selector)
    source = MODULE_FILE.read_text()
    assert "sortFilterProxyModel().hiddenNodeIDs = self.logic.hiddenInputIDs()" in source


# Last: it replaces the shared stand-in with fresh ones.
def test_saved_and_reloaded_scene_keeps_segment_names_and_colours(env, transformed, tmp_path):
    slicer, _ = env
    node, results = transformed
    classes = load_package(resolve_package(DEMO_SEGMENTER)).metadata.classes
    expected = {index: (c.name, tuple(c.color)) for index, c in enumerate(classes) if index > 0}
    present = {int(v) for v in np.unique(slicer.util.arrayFromVolume(results["labelMap"])) if v}
    assert present, "the demo segmenter labelled nothing"
    ids = {"labels": results["labelMap"].GetID(), "segmentation": results["segmentation"].GetID(), "input": node.GetID()}
    path = tmp_path / "explained.mrb"
    assert slicer.util.saveScene(str(path))

    fresh = slicer_standin.install(testing=True)  # a new Slicer session
    try:
        fresh.util.loadScene(str(path))
        labelMap = fresh.mrmlScene.GetNodeByID(ids["labels"])
        table = labelMap.GetDisplayNode().GetColorNode()
        for value in present:
            rgba = [0.0] * 4
            assert table.GetColor(value, rgba)
            assert table.GetColorName(value) == expected[value][0]
            np.testing.assert_allclose(rgba[:3], expected[value][1], atol=1 / 255)
        segmentation = fresh.mrmlScene.GetNodeByID(ids["segmentation"]).GetSegmentation()
        segments = {segmentation.GetNthSegment(i).GetLabelValue(): segmentation.GetNthSegment(i)
                    for i in range(segmentation.GetNumberOfSegments())}
        assert set(segments) == present
        for value, segment in segments.items():
            assert segment.GetName() == expected[value][0]
            np.testing.assert_allclose(segment.GetColor(), expected[value][1], atol=1 / 255)
        # Still shown where the CT is: the outputs kept their parent transform.
        reloaded = fresh.mrmlScene.GetNodeByID(ids["input"])
        assert labelMap.GetTransformNodeID() == reloaded.GetTransformNodeID() is not None
    finally:
        slicer_standin.uninstall()
