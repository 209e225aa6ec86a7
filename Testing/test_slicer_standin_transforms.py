"""The Slicer stand-in's parent transforms, point lists and scene save/reload (slicer-api.md
MUST items 11 and 12, "Markups point lists").

Each test pins the difference a module can get wrong: local vs world coordinates under a parent
transform, and what a saved-and-reloaded scene keeps. World positions are computed here from
the transform matrix by hand, never through the stand-in's own helpers.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import vtk

import slicer_standin

F = np.diag([-1.0, -1.0, 1.0])
# A rigid motion: 30 degrees about S, then a shift (what an unhardened registration leaves).
ANGLE = np.deg2rad(30.0)
MOTION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0.0, 12.5],
                   [np.sin(ANGLE), np.cos(ANGLE), 0.0, -40.0],
                   [0.0, 0.0, 1.0, 7.0],
                   [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture
def slicer():
    module = slicer_standin.install(testing=True)
    yield module
    slicer_standin.uninstall()


@pytest.fixture(scope="session")
def ct_path(data_dir: Path) -> Path:
    return data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"


def matrix_of(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    result.DeepCopy(m.ravel())
    return result


def add_transform(slicer, m: np.ndarray, name: str = "registration"):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtk_matrix(m))
    return node


def world(m: np.ndarray, point) -> np.ndarray:
    return (m @ np.append(np.asarray(point, dtype=float), 1.0))[:3]


# ---- 11. parent transforms --------------------------------------------------------------------
def test_transform_nodes_nest_and_keep_local_and_world_apart(slicer, ct_path):
    volume = slicer.util.loadVolume(str(ct_path))
    local = matrix_of(volume)
    outer = add_transform(slicer, np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, 5.0], [0] * 4, [0] * 4, [0] * 4]))
    inner = add_transform(slicer, MOTION)
    assert inner.SetAndObserveTransformNodeID(outer.GetID())
    assert not outer.SetAndObserveTransformNodeID(inner.GetID())  # no cycles
    assert volume.SetAndObserveTransformNodeID(inner.GetID())
    assert volume.GetParentTransformNode() is inner and volume.GetTransformNodeID() == inner.GetID()

    expected = MOTION.copy()
    expected[0, 3] += 5.0  # the outer shift applies after the inner motion
    got = vtk.vtkMatrix4x4()
    inner.GetMatrixTransformToWorld(got)
    np.testing.assert_allclose(np.array([[got.GetElement(r, c) for c in range(4)] for r in range(4)]), expected)
    np.testing.assert_allclose(matrix_of(volume), local)  # IJK-to-RAS stays local
    ijk = (10, 20, 5)
    out = [0.0, 0.0, 0.0]
    volume.TransformPointToWorld(world(local, ijk), out)
    np.testing.assert_allclose(out, world(expected @ local, ijk))
    bounds_world, bounds_local = [0.0] * 6, [0.0] * 6
    volume.GetRASBounds(bounds_world)
    volume.GetBounds(bounds_local)
    assert not np.allclose(bounds_world, bounds_local)


def test_hardening_bakes_the_transform_into_the_volume(slicer, ct_path):
    volume = slicer.util.loadVolume(str(ct_path))
    local = matrix_of(volume)
    volume.SetAndObserveTransformNodeID(add_transform(slicer, MOTION).GetID())
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    slicer.vtkSlicerTransformLogic.hardenTransform(volume)
    assert volume.GetParentTransformNode() is None
    np.testing.assert_allclose(matrix_of(volume), MOTION @ local, atol=1e-9)
    after = [0.0] * 6
    volume.GetRASBounds(after)
    np.testing.assert_allclose(after, bounds, atol=1e-9)


def test_labelmap_import_follows_both_parent_transforms(slicer, ct_path):
    """A labelmap under the CT's transform imported into a segmentation under the same transform
    lands on the CT's voxels; into an untransformed segmentation it moves to world coordinates."""
    ct = slicer.util.loadVolume(str(ct_path))
    transform = add_transform(slicer, MOTION)
    ct.SetAndObserveTransformNodeID(transform.GetID())
    labels = np.zeros(slicer.util.arrayFromVolume(ct).shape, np.uint8)
    labels[10:14, 30:40, 50:60] = 1
    labelmap = slicer.util.addVolumeFromArray(labels, ijkToRAS=matrix_of(ct), nodeClassName="vtkMRMLLabelMapVolumeNode")
    labelmap.SetAndObserveTransformNodeID(transform.GetID())

    same = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    same.SetAndObserveTransformNodeID(transform.GetID())
    same.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, same)
    segment = same.GetSegmentation().GetNthSegmentID(0)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(same, segment, ct), labels)
    np.testing.assert_allclose(same.GetReferenceImageGeometry()[0], matrix_of(ct), atol=1e-9)

    untransformed = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, untransformed)
    image = slicer.vtkOrientedImageData()
    untransformed.GetBinaryLabelmapRepresentation(untransformed.GetSegmentation().GetNthSegmentID(0), image)
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    corner = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)]) @ np.array([50, 30, 10, 1.0])
    np.testing.assert_allclose(corner[:3], world(MOTION @ matrix_of(ct), (50, 30, 10)), atol=1e-6)
    # Read back on the transformed CT's grid, the mask is still on the same voxels.
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(
        untransformed, untransformed.GetSegmentation().GetNthSegmentID(0), ct), labels)


# ---- markups point lists -----------------------------------------------------------------------
def test_point_list_positions_are_local_and_world_goes_through_the_transform(slicer):
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    assert points.GetName() == "F" and points.IsA("vtkMRMLMarkupsNode") and points.IsA("vtkMRMLDisplayableNode")
    assert points.AddControlPoint(vtk.vtkVector3d(10.0, -20.0, 30.0)) == 0
    assert points.AddControlPoint([1.0, 2.0, 3.0], "nodule") == 1
    assert points.GetNumberOfControlPoints() == 2
    assert [points.GetNthControlPointLabel(i) for i in range(2)] == ["F-1", "nodule"]
    assert [points.GetNthControlPointID(i) for i in range(2)] == ["1", "2"]

    points.SetAndObserveTransformNodeID(add_transform(slicer, MOTION).GetID())
    out = [0.0, 0.0, 0.0]
    points.GetNthControlPointPosition(0, out)
    assert out == [10.0, -20.0, 30.0] and points.GetNthControlPointPosition(0) == (10.0, -20.0, 30.0)
    assert points.GetNthControlPointPositionWorld(0, out) == 1
    np.testing.assert_allclose(out, world(MOTION, (10.0, -20.0, 30.0)))
    np.testing.assert_allclose(list(points.GetNthControlPointPositionWorld(1)), world(MOTION, (1, 2, 3)))
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(points), [[10, -20, 30], [1, 2, 3]])
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(points, world=True),
                               [world(MOTION, (10, -20, 30)), world(MOTION, (1, 2, 3))])

    # A point placed in world coordinates is stored in local ones.
    index = points.AddControlPointWorld(vtk.vtkVector3d(0.0, 0.0, 0.0))
    np.testing.assert_allclose(points.GetNthControlPointPosition(index), world(np.linalg.inv(MOTION), (0, 0, 0)))
    slicer.util.updateMarkupsControlPointsFromArray(points, np.array([[5.0, 5.0, 5.0]]), world=True)
    assert points.GetNumberOfControlPoints() == 1
    np.testing.assert_allclose(list(points.GetNthControlPointPositionWorld(0)), [5, 5, 5], atol=1e-9)
    slicer.vtkSlicerTransformLogic.hardenTransform(points)
    np.testing.assert_allclose(points.GetNthControlPointPosition(0), [5, 5, 5], atol=1e-9)


def test_point_list_file_is_lps_and_reads_back(slicer, tmp_path, caplog):
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    points.AddControlPoint(-12.0, 34.0, 56.0)
    path = tmp_path / "nodules.mrk.json"
    assert slicer.util.saveNode(points, str(path))
    document = json.loads(path.read_text())
    markup = document["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    assert markup["controlPoints"][0]["position"] == [12.0, -34.0, 56.0]  # RAS -> LPS
    assert markup["controlPoints"][0]["label"] == "nodules-1"
    loaded = slicer.util.loadMarkups(str(path))
    assert loaded.GetClassName() == "vtkMRMLMarkupsFiducialNode" and loaded.GetName() == "nodules_1"
    assert loaded.GetNthControlPointPosition(0) == (-12.0, 34.0, 56.0)
    with caplog.at_level(logging.ERROR):
        assert loaded.GetNthControlPointPositionWorld(5, [0.0] * 3) == 0


# ---- 12. scene save and reload -----------------------------------------------------------------
def label_scene(slicer, ct_path, hidden: bool):
    ct = slicer.util.loadVolume(str(ct_path))
    ct.SetAndObserveTransformNodeID(add_transform(slicer, MOTION).GetID())
    labels = np.zeros(slicer.util.arrayFromVolume(ct).shape, np.uint8)
    labels[10:14, 30:40, 50:60], labels[20:22, 5:9, 5:9] = 1, 2
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "organ colours")
    assert table.GetHideFromEditors() == 1  # colour nodes start hidden (section 2)
    if not hidden:
        table.HideFromEditorsOff()
    table.SetTypeToUser()
    table.SetNumberOfColors(3)
    table.SetColor(0, "background", 0, 0, 0, 0)
    table.SetColor(1, "liver", 0.8, 0.4, 0.2, 1.0)
    table.SetColor(2, "left lung", 0.2, 0.6, 1.0, 1.0)
    labelmap = slicer.util.addVolumeFromArray(labels, ijkToRAS=matrix_of(ct), name="labels",
                                              nodeClassName="vtkMRMLLabelMapVolumeNode")
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    labelmap.SetAndObserveTransformNodeID(ct.GetTransformNodeID())
    return ct, labels, labelmap


@pytest.mark.parametrize("hidden", [True, False])
def test_saved_scene_reloads_without_hidden_colour_tables(ct_path, tmp_path, hidden, caplog):
    slicer = slicer_standin.install(testing=True)
    try:
        ct, labels, labelmap = label_scene(slicer, ct_path, hidden)
        ct_matrix, ct_voxels, ct_id = matrix_of(ct), slicer.util.arrayFromVolume(ct).copy(), ct.GetID()
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        points.AddControlPoint(1.0, 2.0, 3.0)
        points.SetAndObserveTransformNodeID(ct.GetTransformNodeID())
        assert slicer.util.saveScene(str(tmp_path / "scene.mrb"))
        labelmap_id, table_id = labelmap.GetID(), labelmap.GetDisplayNode().GetColorNodeID()
    finally:
        slicer_standin.uninstall()

    slicer = slicer_standin.install(testing=True)  # a fresh scene
    try:
        with caplog.at_level(logging.ERROR):
            assert slicer.util.loadScene(str(tmp_path / "scene.mrb")) is None
        ct = slicer.mrmlScene.GetNodeByID(ct_id)
        np.testing.assert_allclose(matrix_of(ct), ct_matrix, atol=1e-6)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), ct_voxels)
        transform = ct.GetParentTransformNode()
        m = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToParent(m)
        np.testing.assert_allclose([[m.GetElement(r, c) for c in range(4)] for r in range(4)], MOTION)
        labelmap = slicer.mrmlScene.GetNodeByID(labelmap_id)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), labels)
        table = labelmap.GetDisplayNode().GetColorNode()
        assert table is not None and table.GetID() == table_id
        points = slicer.util.getNode("F")
        np.testing.assert_allclose(list(points.GetNthControlPointPositionWorld(0)), world(MOTION, (1, 2, 3)))
        names = [table.GetColorName(v) for v in (1, 2)]
        if hidden:  # skipped by the save: the table comes back empty, the label map nameless
            assert names == ["", ""] and table.GetNumberOfColors() == 0
            assert "does not exist" in caplog.text
        else:
            assert names == ["liver", "left lung"]
            rgba = [0.0] * 4
            table.GetColor(2, rgba)
            np.testing.assert_allclose(rgba, [0.2, 0.6, 1.0, 1.0], atol=1 / 255)
    finally:
        slicer_standin.uninstall()
