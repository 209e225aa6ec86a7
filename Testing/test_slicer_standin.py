"""The Slicer stand-in (Testing/slicer_standin) against slicer-api.md, one group per MUST item
(and the markups point lists).

Each test pins a behaviour of real Slicer that a naive mock would get wrong, so that module code
passing against the stand-in also runs in Slicer. Geometry is checked against SimpleITK's own
header numbers and index-to-physical mapping, not against the stand-in's helpers.
"""
from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import List

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer_standin

F = np.diag([-1.0, -1.0, 1.0])
BUILTIN_COLOR_IDS = [
    "vtkMRMLColorTableNodeGrey", "vtkMRMLColorTableNodeRainbow", "vtkMRMLColorTableNodeIron",
    "vtkMRMLColorTableNodeOcean", "vtkMRMLColorTableNodeInvertedGrey", "vtkMRMLColorTableNodefMRI",
    "vtkMRMLColorTableNodeLabels", "vtkMRMLColorTableNodeRandom", "vtkMRMLColorTableNodeWarm1",
    "vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeFileHotToColdRainbow.txt",
    "vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileViridis.txt",
    "vtkMRMLColorTableNodeFileMagma.txt", "vtkMRMLColorTableNodeFilePlasma.txt",
    "vtkMRMLColorTableNodeFileCividis.txt", "vtkMRMLColorTableNodeFileGenericColors.txt",
    "vtkMRMLColorTableNodeFileGenericAnatomyColors.txt", "vtkMRMLPETProceduralColorNodePET-Heat",
    "vtkMRMLPETProceduralColorNodePET-Rainbow2", "vtkMRMLProceduralColorNodeRedGreenBlue",
    "vtkMRMLProceduralColorNodeRandomIntegers",
]


@pytest.fixture
def slicer():
    module = slicer_standin.install(testing=True)
    yield module
    slicer_standin.uninstall()


@pytest.fixture(scope="session")
def ct_path(data_dir: Path) -> Path:
    return data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"


@pytest.fixture(scope="session")
def left_handed_path(data_dir: Path) -> Path:
    # A real TotalSegmentator mask whose NIfTI axes are left-handed (det(D) = -1).
    return data_dir / "totalsegmentator" / "example_seg_dicom.nii.gz"


def matrix_of(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    assert node.GetIJKToRASMatrix(m) is None
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def section3_ijk_to_ras(path: Path) -> np.ndarray:
    """slicer-api.md section 3 from SimpleITK's header numbers: [[F.D.diag(s), F.o], [0, 0, 0, 1]]."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    d = np.reshape(reader.GetDirection(), (3, 3))
    m = np.eye(4)
    m[:3, :3] = F @ d @ np.diag(reader.GetSpacing())
    m[:3, 3] = F @ np.asarray(reader.GetOrigin())
    return m


def ras_of_sitk_index(image: sitk.Image, index) -> np.ndarray:
    """ITK's own index -> LPS point, turned into RAS."""
    lps = np.asarray(image.TransformIndexToPhysicalPoint([int(v) for v in index]))
    return F @ lps


def composite_nodes(slicer) -> List:
    return slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")


# ---- 1. arrayFromVolume: live (K, J, I) view, exact class names, AttributeError without image ----
def test_array_from_volume_is_a_live_kji_view(slicer):
    source = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    node = slicer.util.addVolumeFromArray(source)
    array = slicer.util.arrayFromVolume(node)
    image = node.GetImageData()
    assert array.shape == (2, 3, 4) and image.GetDimensions() == (4, 3, 2)
    assert array.dtype == np.int16 and image.GetScalarType() == vtk.VTK_SHORT
    # a[k, j, i] is the voxel at IJK (i, j, k).
    assert image.GetScalarComponentAsDouble(3, 1, 0, 0) == source[0, 1, 3]
    # No copy: writing the numpy array writes the vtkImageData scalars.
    array[1, 2, 3] = 999
    assert image.GetScalarComponentAsDouble(3, 2, 1, 0) == 999
    assert np.shares_memory(array, numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()))


def test_array_from_volume_matches_simpleitk_without_transpose(slicer, ct_path):
    node = slicer.util.loadVolume(str(ct_path))
    array = slicer.util.arrayFromVolume(node)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))
    assert array.dtype == reference.dtype == np.int16  # scalar type kept (SetOutputScalarTypeToNative)
    np.testing.assert_array_equal(array, reference)


def test_array_from_volume_rejects_other_class_names_and_missing_images(slicer):
    class MyScalarVolume(slicer.vtkMRMLScalarVolumeNode):
        pass

    subclass = MyScalarVolume()
    subclass.SetAndObserveImageData(vtk.vtkImageData())
    subclass.GetImageData().SetDimensions(2, 2, 2)
    subclass.GetImageData().AllocateScalars(vtk.VTK_SHORT, 1)
    # An exact GetClassName() match, not IsA: a subclass of a scalar volume is refused.
    assert subclass.IsA("vtkMRMLScalarVolumeNode")
    with pytest.raises(RuntimeError, match="Unsupported volume type: MyScalarVolume"):
        slicer.util.arrayFromVolume(subclass)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(AttributeError):
        slicer.util.arrayFromVolume(empty)


# ---- 2. update/addVolumeFromArray ----------------------------------------------------------
def test_add_volume_from_array_deep_copies(slicer):
    source = np.zeros((3, 4, 5), dtype=np.float32)
    node = slicer.util.addVolumeFromArray(source)
    source[:] = 7
    assert not slicer.util.arrayFromVolume(node).any()


def test_int64_is_rejected_although_pip_vtk_would_map_it(slicer):
    # VTK 9.2-9.6 (Slicer) map int64 to VTK_LONG_LONG, which updateVolumeFromArray rejects.
    with pytest.raises(RuntimeError, match="Unsupported numpy array type: long long"):
        slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), dtype=np.int64))
    node = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), dtype=np.uint64))
    assert slicer.util.arrayFromVolume(node).dtype == np.uint64


@pytest.mark.parametrize("dtype", [np.bool_, np.float16])
def test_types_without_a_vtk_type_raise_type_error(slicer, dtype):
    with pytest.raises(TypeError):
        slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), dtype=dtype))


def test_torch_tensors_raise_type_error(slicer):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError):
        slicer.util.addVolumeFromArray(torch.zeros((2, 2, 2)))


def test_1d_and_2d_inputs_become_float64_slices(slicer):
    line = slicer.util.addVolumeFromArray(np.arange(5, dtype=np.uint8))
    assert slicer.util.arrayFromVolume(line).shape == (1, 1, 5)
    assert slicer.util.arrayFromVolume(line).dtype == np.float64
    # Converted before the type check: even int64 passes once it is 2-D.
    plane = slicer.util.addVolumeFromArray(np.ones((3, 4), dtype=np.int64))
    assert slicer.util.arrayFromVolume(plane).shape == (1, 3, 4)
    assert slicer.util.arrayFromVolume(plane).dtype == np.float64
    with pytest.raises(RuntimeError, match="Unsupported numpy array shape"):
        slicer.util.addVolumeFromArray(np.zeros((1, 2, 2, 2, 2)))


def test_4d_input_is_components_last(slicer):
    rgb = np.random.default_rng(0).integers(0, 255, size=(2, 3, 4, 3)).astype(np.uint8)
    node = slicer.util.addVolumeFromArray(rgb, nodeClassName="vtkMRMLVectorVolumeNode")
    assert node.GetImageData().GetNumberOfScalarComponents() == 3
    assert node.GetImageData().GetDimensions() == (4, 3, 2)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), rgb)


def test_image_geometry_stays_identity_and_event_fires(slicer):
    events = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def on_image(caller, event, calldata):
        events.append((caller, calldata))

    ijk_to_ras = np.diag([0.5, 0.7, 2.0, 1.0])
    ijk_to_ras[:3, 3] = (10, 20, 30)
    node = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.int16), ijk_to_ras)
    node.AddObserver(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, on_image)
    assert slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent == 18001
    slicer.util.updateVolumeFromArray(node, np.ones((5, 6, 7), np.int16))
    assert events == [(node, node)]
    image = node.GetImageData()
    assert image.GetOrigin() == (0.0, 0.0, 0.0) and image.GetSpacing() == (1.0, 1.0, 1.0)
    assert image.GetDimensions() == (7, 6, 5)
    np.testing.assert_allclose(matrix_of(node), ijk_to_ras)  # the geometry lives on the node


# ---- 3. geometry on the node only ------------------------------------------------------------
def test_ijk_to_ras_needs_an_output_matrix(slicer):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(TypeError):
        node.GetIJKToRASMatrix()
    np.testing.assert_array_equal(matrix_of(node), np.eye(4))


def test_set_ijk_to_ras_splits_into_column_norms_and_unit_columns(slicer):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    angle = np.radians(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1]])
    m = np.eye(4)
    m[:3, :3] = rotation @ np.diag([0.5, 2.0, 3.0])
    m[:3, 3] = (-12.5, 40.0, 7.25)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
    np.testing.assert_allclose(node.GetSpacing(), (0.5, 2.0, 3.0))
    np.testing.assert_allclose(node.GetOrigin(), (-12.5, 40.0, 7.25))
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)  # filled in place
    np.testing.assert_allclose(directions, rotation, atol=1e-12)
    nested = [[0.0] * 3 for _ in range(3)]
    node.GetIJKToRASDirections(nested)
    np.testing.assert_allclose(nested, rotation, atol=1e-12)
    np.testing.assert_allclose(matrix_of(node), m, atol=1e-12)

    # A shear is not orthonormalised: the directions are just the unit columns.
    shear = np.eye(4)
    shear[:3, :3] = [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(shear))
    node.GetIJKToRASDirections(directions)
    np.testing.assert_allclose(directions[:, 1], np.array([1.0, 1.0, 0.0]) / np.sqrt(2))
    np.testing.assert_allclose(matrix_of(node), shear, atol=1e-12)

    zero = np.diag([1.0, 0.0, 1.0, 1.0])
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(zero))
    node.GetIJKToRASDirections(directions)
    assert np.isnan(directions[:, 1]).all()
    node.SetIJKToRASMatrix(None)  # ignored


def test_nine_scalar_directions_are_row_major_and_setters_fire_only_on_change(slicer):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    modified = []
    node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: modified.append(event))
    # (ir, jr, kr, ia, ja, ka, is, js, ks): I points to A, J to R, K to S.
    node.SetIJKToRASDirections(0, 1, 0, 1, 0, 0, 0, 0, 1)
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)
    np.testing.assert_array_equal(directions[:, 0], [0, 1, 0])
    count = len(modified)
    node.SetSpacing(1, 1, 1)
    node.SetOrigin((0, 0, 0))
    assert len(modified) == count
    node.SetSpacing(1, 1, 2)
    assert len(modified) == count + 1


def test_ijk_to_ras_argument_accepts_only_4x4_array_or_vtk_matrix(slicer):
    array = np.zeros((2, 2, 2), np.int16)
    with pytest.raises(AttributeError):
        slicer.util.addVolumeFromArray(array, ijkToRAS=np.eye(4).tolist())
    with pytest.raises(TypeError):
        slicer.util.addVolumeFromArray(array, ijkToRAS=np.eye(3))  # a vtkMatrix3x3 reaches SetIJKToRASMatrix
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 0, 2.0)
    node = slicer.util.addVolumeFromArray(array, ijkToRAS=matrix)
    assert node.GetSpacing() == (2.0, 1.0, 1.0)


# ---- 4. LPS -> RAS, no transpose, right-handed flip ---------------------------------------
def test_loaded_ijk_to_ras_is_the_section3_formula(slicer, ct_path, data_dir):
    for path, load in ((ct_path, slicer.util.loadVolume),
                       (data_dir / "dcmqi-ct3slice" / "liver_seg.nrrd", slicer.util.loadLabelVolume)):
        node = load(str(path))
        m = matrix_of(node)
        np.testing.assert_allclose(m, section3_ijk_to_ras(path), atol=1e-6)
        # The voxel a[k, j, i] sits at IJKToRAS . [i, j, k, 1], where ITK puts that index.
        image = sitk.ReadImage(str(path))
        shape = slicer.util.arrayFromVolume(node).shape
        for k, j, i in [(0, 0, 0), (shape[0] - 1, shape[1] // 2, shape[2] - 1)]:
            np.testing.assert_allclose((m @ [i, j, k, 1])[:3], ras_of_sitk_index(image, (i, j, k)), atol=1e-6)


def test_oblique_header_negates_rows_not_columns_both_ways(slicer, ct_path, tmp_path):
    # The shared files all have diagonal directions, where negating rows or columns agree:
    # the real CT voxels get an oblique header here so that the two differ.
    image = sitk.ReadImage(str(ct_path))
    a, b = np.radians(30), np.radians(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    image.SetDirection(tuple((rz @ rx).ravel()))
    image.SetOrigin((12.5, -30.0, 44.0))
    oblique = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(oblique))
    node = slicer.util.loadVolume(str(oblique))
    m = matrix_of(node)
    np.testing.assert_allclose(m, section3_ijk_to_ras(oblique), atol=1e-6)
    np.testing.assert_allclose((m @ [100, 7, 29, 1])[:3], ras_of_sitk_index(image, (100, 7, 29)), atol=1e-6)
    saved = tmp_path / "saved.nrrd"
    assert slicer.util.saveNode(node, str(saved))
    written = sitk.ReadImage(str(saved))
    np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))


def test_left_handed_files_are_flipped_along_k(slicer, left_handed_path):
    image = sitk.ReadImage(str(left_handed_path))
    assert np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) < 0
    node = slicer.util.loadLabelVolume(str(left_handed_path))
    array = slicer.util.arrayFromVolume(node)
    reference = sitk.GetArrayFromImage(image)
    np.testing.assert_array_equal(array, reference[::-1])
    k_count = reference.shape[0]
    expected = section3_ijk_to_ras(left_handed_path) @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, k_count - 1], [0, 0, 0, 1]], dtype=float)
    m = matrix_of(node)
    np.testing.assert_allclose(m, expected, atol=1e-6)
    assert np.linalg.det(m[:3, :3]) > 0
    # Same voxel, same place: new slice k' is old slice K-1-k'.
    for k_new in (0, 7, k_count - 1):
        np.testing.assert_allclose((m @ [3, 5, k_new, 1])[:3],
                                   ras_of_sitk_index(image, (3, 5, k_count - 1 - k_new)), atol=1e-6)


def test_set_ijk_coordinate_system_to_right_handed_keeps_voxel_positions(slicer, ct_path):
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))
    node = slicer.util.addVolumeFromArray(voxels, np.diag([3.0, 3.0, -3.0, 1.0]))
    before = matrix_of(node)
    assert node.SetIJKCoordinateSystemToRightHanded() is True
    after = matrix_of(node)
    assert np.linalg.det(after[:3, :3]) > 0
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels[::-1])
    k_last = voxels.shape[0] - 1
    np.testing.assert_allclose(after @ [5, 6, 0, 1], before @ [5, 6, k_last, 1])
    assert node.SetIJKCoordinateSystemToRightHanded() is False


def test_dicom_file_loads_its_series_unless_single_file(slicer, data_dir):
    first = data_dir / "slicer-cthead" / "CTHead1.dcm"
    series = slicer.util.loadVolume(str(first))
    assert slicer.util.arrayFromVolume(series).shape[0] == 93
    single = slicer.util.loadVolume(str(first), {"singleFile": True})
    assert slicer.util.arrayFromVolume(single).shape[0] == 1
    assert (series.GetName(), single.GetName()) == ("CTHead1", "CTHead1_1")


# ---- 5. loadVolume -----------------------------------------------------------------------------
def test_load_volume_returns_node_or_raises_and_return_node_gives_a_pair(slicer, ct_path, tmp_path, caplog):
    node = slicer.util.loadVolume(str(ct_path))
    assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
    missing = tmp_path / "missing.nii.gz"
    with pytest.raises(RuntimeError, match="Failed to load node from file: " + str(missing)):
        slicer.util.loadVolume(str(missing))
    with caplog.at_level(logging.WARNING):
        ok, pair_node = slicer.util.loadVolume(str(ct_path), {}, returnNode=True)
        failed, nothing = slicer.util.loadVolume(str(missing), {}, returnNode=True)
    assert ok and pair_node.IsA("vtkMRMLScalarVolumeNode")
    assert not failed and nothing is None
    assert "deprecated" in caplog.text


def test_load_volume_name_is_text_before_first_dot_made_unique(slicer, ct_path):
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "example_ct_sm")
    first = slicer.util.loadVolume(str(ct_path))
    second = slicer.util.loadVolume(str(ct_path))
    assert (first.GetName(), second.GetName()) == ("example_ct_sm_1", "example_ct_sm_2")


def test_load_volume_mutates_the_callers_properties(slicer, ct_path):
    properties = {"show": False}
    slicer.util.loadVolume(ct_path, properties)
    assert properties == {"show": False, "fileName": str(ct_path)}
    # The shared mutable default dict is written too.
    slicer.util.loadVolume(str(ct_path))
    assert slicer.util.loadVolume.__defaults__[0] == {"fileName": str(ct_path)}
    slicer.util.loadLabelVolume(str(ct_path))
    assert slicer.util.loadLabelVolume.__defaults__[0]["labelmap"] is True


def test_show_sets_background_or_label_and_clears_foreground_everywhere(slicer, ct_path, data_dir):
    other = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.int16), name="other")
    composites = composite_nodes(slicer)
    assert [c.GetID() for c in composites] == ["vtkMRMLSliceCompositeNodeRed", "vtkMRMLSliceCompositeNodeYellow",
                                               "vtkMRMLSliceCompositeNodeGreen"]
    slicer.util.setSliceViewerLayers(foreground=other, foregroundOpacity=0.5)
    ct = slicer.util.loadVolume(str(ct_path))
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == ct.GetID()
        assert composite.GetForegroundVolumeID() is None  # SecondaryVolumeID is empty
    label = slicer.util.loadLabelVolume(str(data_dir / "totalsegmentator" / "example_seg.nii.gz"))
    for composite in composites:
        assert composite.GetLabelVolumeID() == label.GetID()
        assert composite.GetBackgroundVolumeID() == ct.GetID()  # still the active volume
    slicer.util.setSliceViewerLayers(foreground=other)
    slicer.util.loadVolume(str(ct_path), {"show": False})
    assert all(c.GetForegroundVolumeID() == other.GetID() for c in composites)


def test_labelmap_property_and_colour_nodes(slicer, ct_path, data_dir):
    ct = slicer.util.loadVolume(str(ct_path))
    label = slicer.util.loadVolume(str(data_dir / "totalsegmentator" / "example_seg.nii.gz"), {"labelmap": True})
    assert label.GetClassName() == "vtkMRMLLabelMapVolumeNode"
    assert label.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileGenericColors.txt"
    assert ct.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert slicer.util.arrayFromVolume(label).dtype == np.uint8


# ---- 6. auto window/level, built-in colour IDs ----------------------------------------------
def test_auto_window_level_overwrites_until_turned_off(slicer, ct_path):
    display = slicer.util.loadVolume(str(ct_path)).GetDisplayNode()
    assert display.GetAutoWindowLevel() == 1
    auto = (display.GetWindow(), display.GetLevel())
    assert auto != (256.0, 128.0)  # computed from the voxels (0.1-99.9 percentiles)
    display.SetWindowLevel(100, 50)
    assert (display.GetWindow(), display.GetLevel()) == auto
    display.SetWindow(10)
    display.SetWindowLevelMinMax(0, 1)
    assert (display.GetWindow(), display.GetLevel()) == auto
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0, 1)
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    display.SetOpacity(0.5)  # another Modified(): the levels stay now
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)


def test_auto_window_level_follows_new_voxels(slicer, ct_path):
    node = slicer.util.loadVolume(str(ct_path))
    display = node.GetDisplayNode()
    wide = display.GetWindow()
    voxels = slicer.util.arrayFromVolume(node)
    voxels[:] = np.clip(voxels, -100, 100)
    slicer.util.arrayFromVolumeModified(node)
    assert display.GetWindow() <= 200 < wide
    slicer.util.updateVolumeFromArray(node, np.linspace(0, 1, 1000).reshape(10, 10, 10))
    assert display.GetWindow() <= 1.0


def test_builtin_colour_ids_exist_and_unknown_ids_resolve_to_none(slicer, caplog):
    for nodeID in BUILTIN_COLOR_IDS:
        assert slicer.mrmlScene.GetNodeByID(nodeID) is not None, nodeID
    assert slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeGrey").GetName() == "Grey"
    assert slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt").GetName() == "ColdToHotRainbow"
    display = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.float32)).GetDisplayNode()
    with caplog.at_level(logging.WARNING):
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeNoSuchTable")
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeNoSuchTable"
    assert display.GetColorNode() is None
    assert caplog.text == ""
    # The recommended heat map recipe.
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0, 1)
    assert display.GetColorNode().GetNumberOfColors() > 0
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)


# ---- 7. CreateDefaultDisplayNodes -------------------------------------------------------------
def test_create_default_display_nodes(slicer, caplog):
    scalar = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.float32))
    first = scalar.GetDisplayNode().GetID()
    count = slicer.mrmlScene.GetNumberOfNodes()
    scalar.CreateDefaultDisplayNodes()
    assert scalar.GetDisplayNode().GetID() == first and slicer.mrmlScene.GetNumberOfNodes() == count
    assert scalar.GetDisplayNode().GetClassName() == "vtkMRMLScalarVolumeDisplayNode"
    assert scalar.GetDisplayNode().GetColorNode().GetName() == "Grey"

    label = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode")
    assert label.GetDisplayNode().GetClassName() == "vtkMRMLLabelMapVolumeDisplayNode"
    labels = label.GetDisplayNode().GetColorNode()
    assert labels.GetID() == "vtkMRMLColorTableNodeLabels"
    assert [labels.GetColorName(i) for i in (1, 2, 3)] == ["jake", "Peach", "Brain"]
    assert labels.GetColorIndexByName("Peach") == 2

    outside = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScalarVolumeNode")
    outside.UnRegister(None)
    with caplog.at_level(logging.ERROR):
        outside.CreateDefaultDisplayNodes()
    assert outside.GetDisplayNode() is None and "scene is invalid" in caplog.text


# ---- 8. ImportLabelmapToSegmentationNode --------------------------------------------------------
def import_labels(slicer, labelmap):
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    ok = slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
    s = segmentation.GetSegmentation()
    names = [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())]
    return ok, segmentation, names


def label_volume_without_colours(slicer, array, name):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)  # no display node: no colour table
    return node


def test_segments_are_named_from_colour_table_node_name_or_label_value(slicer):
    voxels = np.zeros((3, 4, 5), np.uint8)
    voxels[0, 0, 0], voxels[1, 1, 1], voxels[2, 2, 2] = 1, 2, 2
    ok, segmentation, names = import_labels(
        slicer, slicer.util.addVolumeFromArray(voxels, nodeClassName="vtkMRMLLabelMapVolumeNode"))
    assert ok and names == ["jake", "Peach"]  # the default Labels table; 0 is skipped
    assert segmentation.GetDisplayNode() is not None

    table = slicer.mrmlScene.CreateNodeByClass("vtkMRMLColorTableNode")
    table.UnRegister(None)
    table.SetTypeToUser()
    table.SetNumberOfColors(3)
    table.SetColor(1, "lung", 0.2, 0.4, 0.8, 1.0)
    table.SetColor(2, "nodule", 1.0, 0.0, 0.0, 1.0)
    slicer.mrmlScene.AddNode(table)
    labelmap = slicer.util.addVolumeFromArray(voxels, nodeClassName="vtkMRMLLabelMapVolumeNode")
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    assert import_labels(slicer, labelmap)[2] == ["lung", "nodule"]

    assert import_labels(slicer, label_volume_without_colours(slicer, voxels, "two"))[2] == ["Label_1", "Label_2"]
    single = np.where(voxels > 0, 7, 0).astype(np.uint8)
    assert import_labels(slicer, label_volume_without_colours(slicer, single, "tumour"))[2] == ["tumour"]


def test_labels_the_colour_table_lacks_get_empty_segment_names(slicer):
    """GetColorName gives "" for a value without an entry, so the Label_<v> fallback is never
    reached when a colour table is there: such segments have an empty name and the table's
    (absent) colour, not an invented one (section 2 "Segment name")."""
    voxels = np.zeros((3, 4, 5), np.uint8)
    voxels[0, 0, 0], voxels[1, 1, 1], voxels[2, 2, 2] = 1, 3, 9  # 3 inside the table, 9 beyond it
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "two names")
    table.SetTypeToUser()
    table.SetNumberOfColors(5)
    table.SetColor(1, "lung", 0.2, 0.4, 0.8, 1.0)
    assert table.GetColorName(3) == "" and table.GetColorName(9) == "" and table.GetColorName(1) == "lung"
    labelmap = slicer.util.addVolumeFromArray(voxels, nodeClassName="vtkMRMLLabelMapVolumeNode")
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    ok, segmentation, names = import_labels(slicer, labelmap)
    assert ok and names == ["lung", "", ""]
    s = segmentation.GetSegmentation()
    assert [s.GetNthSegment(i).GetLabelValue() for i in range(3)] == [1, 3, 9]
    assert s.GetNthSegment(0).GetColor() == pytest.approx((0.2, 0.4, 0.8))


def test_segment_ids_are_random_and_found_by_name(slicer):
    voxels = np.zeros((2, 2, 2), np.uint8)
    voxels[0, 0, 0] = 1
    ids = []
    for _ in range(2):
        _, segmentation, _ = import_labels(slicer, label_volume_without_colours(slicer, voxels, "mask"))
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
        assert segment_id not in ("Segment_1", "mask", "Label_1", "1")
        assert segmentation.GetSegmentation().GetSegmentIdBySegmentName("mask") == segment_id
        ids.append(segment_id)
    assert ids[0] != ids[1]


def test_float_labelmaps_are_cast_with_a_warning_and_empty_ones_fail(slicer, caplog):
    voxels = np.zeros((2, 3, 4), np.float32)
    voxels[0, 1, 2], voxels[1, 2, 3] = 1.0, 2.0
    with caplog.at_level(logging.WARNING):
        ok, segmentation, names = import_labels(slicer, label_volume_without_colours(slicer, voxels, "f"))
    assert ok and names == ["Label_1", "Label_2"]
    assert "floating-point" in caplog.text
    s = segmentation.GetSegmentation()
    assert [s.GetNthSegment(i).GetLabelValue() for i in range(2)] == [1, 2]
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    with caplog.at_level(logging.ERROR):
        assert import_labels(slicer, empty)[0] is False


def test_real_label_file_imports_with_generic_colours_and_same_voxels(slicer, data_dir):
    path = data_dir / "dcmqi-ct3slice" / "liver_seg.nrrd"
    labelmap = slicer.util.loadLabelVolume(str(path))
    ok, segmentation, names = import_labels(slicer, labelmap)
    assert ok and names == ["1"]  # GenericColors.txt names its entries by number
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("1")
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, labelmap)
    np.testing.assert_array_equal(mask, slicer.util.arrayFromVolume(labelmap) == 1)


# ---- 9. scene ---------------------------------------------------------------------------------
def test_ids_and_names(slicer):
    scene = slicer.mrmlScene
    a = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    b = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert [a.GetID(), b.GetID(), label.GetID()] == ["vtkMRMLScalarVolumeNode1", "vtkMRMLScalarVolumeNode2",
                                                     "vtkMRMLLabelMapVolumeNode1"]
    assert [a.GetName(), b.GetName(), label.GetName(), segmentation.GetName()] == [
        "Volume", "Volume_1", "LabelMapVolume", "Segmentation"]
    named = [scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT") for _ in range(2)]
    assert [n.GetName() for n in named] == ["CT", "CT"]  # not made unique
    assert scene.AddNewNodeByClass("vtkMRMLNoSuchNode") is None
    assert scene.AddNewNodeByClass("vtkMRMLVolumeNode") is None  # abstract


def test_isa_follows_inheritance(slicer):
    scene = slicer.mrmlScene
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    scalar = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    for base in ("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeNode", "vtkMRMLDisplayableNode", "vtkMRMLNode"):
        assert label.IsA(base)
    assert not scalar.IsA("vtkMRMLLabelMapVolumeNode")
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is label
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    assert slicer.util.getFirstNodeByClassByName("vtkMRMLVolumeNode", "LabelMapVolume") is label
    assert slicer.util.getFirstNodeByClassByName("vtkMRMLVolumeNode", "labelmapvolume") is None


def test_get_node_raises_and_prefers_the_last_duplicate(slicer):
    first = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    second = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    assert slicer.util.getNode("CT") is second
    assert slicer.util.getNode(first.GetID()) is first
    assert slicer.util.getNodes("C*", useLists=True)["CT"] == [first, second]
    with pytest.raises(slicer.util.MRMLNodeNotFoundException):
        slicer.util.getNode("no such node")


def test_remove_node_leaves_display_nodes_and_clear_resets(slicer):
    scene = slicer.mrmlScene
    events = []
    scene.AddObserver(scene.StartCloseEvent, lambda caller, event: events.append("start"))
    scene.AddObserver(scene.EndCloseEvent, lambda caller, event: events.append("end"))
    volume = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.float32))
    display_id = volume.GetDisplayNode().GetID()
    scene.RemoveNode(volume)
    assert scene.GetNodeByID(volume.GetID()) is None
    assert scene.GetNodeByID(display_id) is not None
    scene.Clear()
    assert events == ["start", "end"]
    assert scene.GetNodeByID(display_id) is None
    assert scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is not None  # singletons stay
    assert scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode").GetID() == "vtkMRMLScalarVolumeNode1"


def test_node_added_event_passes_the_node(slicer):
    added = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def on_added(caller, event, calldata):
        added.append(calldata)

    slicer.mrmlScene.AddObserver(slicer.mrmlScene.NodeAddedEvent, on_added)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    assert added == [node]


# ---- 10. testing-mode dialogs, saveNode, setSliceViewerLayers ----------------------------------
def test_testing_mode_dialogs(slicer, caplog):
    assert slicer.app.testingEnabled() and slicer.app.commandOptions().testingEnabled
    assert slicer.app.layoutManager() is None
    with caplog.at_level(logging.INFO):
        # Slicer returns `True == qt.QMessageBox.Ok`, i.e. False, under --testing (section 1).
        assert slicer.util.confirmOkCancelDisplay("Install PyTorch?") is False
        assert slicer.util.confirmYesNoDisplay("Sure?") is False
        assert slicer.util.confirmRetryCloseDisplay("Retry?") is False
        assert slicer.util.errorDisplay("it broke") is None
    assert "Install PyTorch?" in caplog.text
    assert any(r.levelno == logging.ERROR and r.getMessage() == "it broke" for r in caplog.records)


def test_outside_testing_a_confirmation_would_block(caplog):
    slicer = slicer_standin.install(testing=False)
    try:
        assert not slicer.app.testingEnabled()
        with pytest.raises(slicer_standin.ModalDialogWouldBlock):
            slicer.util.confirmOkCancelDisplay("Install PyTorch?")
        with caplog.at_level(logging.ERROR):
            assert slicer.util.errorDisplay("no main window") is None  # only logged
        assert "no main window" in caplog.text
        slicer.app.dialogResponder = lambda kind, text: False
        assert slicer.util.confirmOkCancelDisplay("Install PyTorch?") is False
        slicer.app.dialogResponder = lambda kind, text: True  # the user presses OK
        assert slicer.util.confirmOkCancelDisplay("Install PyTorch?") is True
    finally:
        slicer_standin.uninstall()


def test_save_node_returns_false_instead_of_raising(slicer, tmp_path, caplog):
    node = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.int16))
    with caplog.at_level(logging.ERROR):
        assert slicer.util.saveNode(node, str(tmp_path / "no" / "such" / "dir" / "x.nrrd")) is False
        assert slicer.util.saveNode(node, str(tmp_path / "x.unknownextension")) is False
    assert "Failed to save" in caplog.text
    properties = {"fileType": "NoFile"}  # ignored: Slicer tests hasattr(properties, "fileType")
    assert slicer.util.saveNode(node, str(tmp_path / "x.nrrd"), properties) is True
    assert properties["nodeID"] == node.GetID() and properties["fileName"] == str(tmp_path / "x.nrrd")


def test_save_node_writes_the_inverse_conversion(slicer, left_handed_path, tmp_path):
    node = slicer.util.loadLabelVolume(str(left_handed_path))
    out = tmp_path / "roundtrip.nii.gz"
    assert slicer.util.saveNode(node, str(out))
    written = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), slicer.util.arrayFromVolume(node))
    np.testing.assert_allclose(section3_ijk_to_ras(out), matrix_of(node), atol=1e-5)
    # Every voxel is where the original file put it.
    original = sitk.ReadImage(str(left_handed_path))
    k_count = original.GetSize()[2]
    np.testing.assert_allclose(ras_of_sitk_index(written, (4, 9, 0)),
                               ras_of_sitk_index(original, (4, 9, k_count - 1)), atol=1e-4)
    assert node.GetStorageNode().GetFileName() == str(out)


def test_set_slice_viewer_layers_acts_on_every_composite_node(slicer):
    extra = slicer.vtkMRMLSliceCompositeNode()
    extra.SetLayoutName("Compare1")
    slicer.mrmlScene.AddNode(extra)
    ct = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.int16), name="ct")
    heat = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.float32), name="heat")
    label = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode")
    slicer.util.setSliceViewerLayers(background=ct, foreground=heat.GetID(), label=label, foregroundOpacity=0.5,
                                     labelOpacity=0.3, fit=True)  # fit: no layout manager, silently skipped
    composites = composite_nodes(slicer)
    assert len(composites) == 4
    for composite in composites:
        assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetLabelVolumeID()) == (
            ct.GetID(), heat.GetID(), label.GetID())
        assert (composite.GetForegroundOpacity(), composite.GetLabelOpacity()) == (0.5, 0.3)
    slicer.util.setSliceViewerLayers(foreground=None)
    assert all(c.GetForegroundVolumeID() is None and c.GetBackgroundVolumeID() == ct.GetID() for c in composites)


# ---- parameter node, scripted module flow, table node, observers -------------------------------
def test_parameter_node_is_a_singleton(slicer):
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

    class CTExplainDemoLogic(ScriptedLoadableModuleLogic):
        pass

    node = CTExplainDemoLogic().getParameterNode()
    assert CTExplainDemoLogic().getParameterNode() is node
    assert node.GetID() == "vtkMRMLScriptedModuleNodeCTExplainDemo"
    assert (node.GetName(), node.GetAttribute("ModuleName"), node.GetSingletonTag()) == (
        "CTExplainDemo", "CTExplainDemo", "CTExplainDemo")
    modified = []
    node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: modified.append(1))
    node.SetParameter("Threshold", "0.5")
    node.SetParameter("Threshold", "0.5")
    assert len(modified) == 1 and node.GetParameter("Threshold") == "0.5" and node.GetParameter("Missing") == ""
    with pytest.raises(TypeError):
        node.SetParameter("Threshold", 0.5)
    slicer.mrmlScene.Clear()
    again = CTExplainDemoLogic().getParameterNode()
    assert again is node and again.GetParameter("Threshold") == "" and again.GetAttribute("ModuleName") == "CTExplainDemo"


MODULE_SOURCE = '''
import logging
import slicer
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

CALLS = []


class StandInDemo(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Stand-in demo"
        self.parent.categories = ["Testing"]


class StandInDemoWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)


class StandInDemoLogic(ScriptedLoadableModuleLogic):
    def process(self, volume):
        return slicer.util.arrayFromVolume(volume).sum()


class StandInDemoTest(ScriptedLoadableModuleTest):
    def setUp(self):
        CALLS.append("setUp")
        slicer.mrmlScene.Clear()

    def tearDown(self):
        CALLS.append("tearDown")

    def test_a(self):
        CALLS.append("test_a")
        import numpy as np
        volume = slicer.util.addVolumeFromArray(np.ones((2, 2, 2), np.int16))
        self.assertEqual(StandInDemoLogic().process(volume), 8)

    def test_b(self):
        CALLS.append("test_b")
'''


def test_scripted_module_registration_and_test_flow(slicer, tmp_path):
    (tmp_path / "Resources" / "Icons").mkdir(parents=True)
    (tmp_path / "Resources" / "Icons" / "StandInDemo.png").write_bytes(b"")
    (tmp_path / "StandInDemo.py").write_text(textwrap.dedent(MODULE_SOURCE))
    module = slicer_standin.load_scripted_module(tmp_path / "StandInDemo.py")
    parent = slicer.modules.standindemo
    assert parent.title == "Stand-in demo" and parent.path == str(tmp_path / "StandInDemo.py")
    assert parent.icon.path.endswith("Resources/Icons/StandInDemo.png")
    assert slicer.modules.StandInDemoInstance.resourcePath("UI/StandInDemo.ui") == str(
        tmp_path / "Resources" / "UI" / "StandInDemo.ui")
    # Reload and Test / SelfTests: setUpClass, then setUp-test-tearDown per name containing "test".
    slicer.selfTests["StandInDemo"]()
    assert module.CALLS == ["setUp", "test_a", "tearDown", "setUp", "test_b", "tearDown"]
    # CTest: each test_* method through unittest.
    del module.CALLS[:]
    slicer.testing.runUnitTest([str(tmp_path)], "StandInDemo")
    assert module.CALLS.count("setUp") == 2
    widget = module.StandInDemoWidget()
    assert widget.moduleName == "StandInDemo" and widget.parent.visible


def test_missing_test_class_is_an_assertion_error(slicer, tmp_path):
    (tmp_path / "NoTests.py").write_text(textwrap.dedent('''
        from slicer.ScriptedLoadableModule import *
        class NoTests(ScriptedLoadableModule):
            pass
    '''))
    slicer_standin.load_scripted_module(tmp_path / "NoTests.py")
    with pytest.raises(AssertionError, match="Test case class not found"):
        slicer.selfTests["NoTests"]()


def test_table_node_strings_and_numbers(slicer, tmp_path):
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    names = table.AddColumn()
    names.SetName("finding")
    scores = vtk.vtkDoubleArray()
    scores.SetName("probability")
    table.AddColumn(scores)
    for finding, probability in (("nodule", "0.75"), ("effusion", "0.125")):
        row = table.AddEmptyRow()
        assert table.SetCellText(row, 0, finding) and table.SetCellText(row, 1, probability)
    assert (table.GetNumberOfRows(), table.GetNumberOfColumns()) == (2, 2)
    assert [table.GetCellText(r, 0) for r in range(2)] == ["nodule", "effusion"]
    assert [table.GetCellText(r, 1) for r in range(2)] == ["0.75", "0.125"]
    assert table.SetCellText(0, 1, "not a number") is False
    np.testing.assert_array_equal(slicer.util.arrayFromTableColumn(table, "probability"), [0.75, 0.125])
    assert slicer.util.saveNode(table, str(tmp_path / "result.csv"))
    loaded = slicer.util.loadTable(str(tmp_path / "result.csv"))
    assert loaded.GetCellText(1, 0) == "effusion" and loaded.GetColumnName(1) == "probability"


def test_vtk_observation_mixin(slicer):
    from slicer.util import VTKObservationMixin

    class Watcher(VTKObservationMixin):
        def __init__(self):
            VTKObservationMixin.__init__(self)
            self.calls = 0

        def onModified(self, caller, event):
            self.calls += 1

    watcher = Watcher()
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    watcher.addObserver(node, vtk.vtkCommand.ModifiedEvent, watcher.onModified)
    with pytest.warns(UserWarning, match="already has observer"):
        watcher.addObserver(node, vtk.vtkCommand.ModifiedEvent, watcher.onModified)
    node.SetParameter("a", "1")
    assert watcher.calls == 1 and watcher.hasObserver(node, vtk.vtkCommand.ModifiedEvent, watcher.onModified)
    watcher.removeObservers()
    node.SetParameter("a", "2")
    assert watcher.calls == 1 and watcher.Observations == []


def test_install_is_fresh_and_uninstall_removes_modules(ct_path):
    import sys

    first = slicer_standin.install()
    first.util.loadVolume(str(ct_path))
    second = slicer_standin.install()
    try:
        assert second is not first and second.mrmlScene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 0
        assert second.util.loadVolume.__defaults__[0] == {}
        assert sys.modules["slicer.util"] is second.util and sys.modules["vtk"] is vtk
        from slicer import vtkMRMLScalarVolumeNode  # noqa: F401  (star-imported into slicer)
    finally:
        slicer_standin.uninstall()
    assert "slicer" not in sys.modules and "slicer.util" not in sys.modules


# ==== parent transforms, point lists, scene save/reload (MUST items 11 and 12) ====
# A rigid motion: 30 degrees about S, then a shift (what an unhardened registration leaves).
ANGLE = np.deg2rad(30.0)
MOTION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0.0, 12.5],
                   [np.sin(ANGLE), np.cos(ANGLE), 0.0, -40.0],
                   [0.0, 0.0, 1.0, 7.0],
                   [0.0, 0.0, 0.0, 1.0]])


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


# ---- 11. parent transforms (local vs world, hardening, labelmap import) --------------------------------------------------------------------
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
