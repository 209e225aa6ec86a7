"""Point mode (``ctexplain explain CT --point X Y Z`` / ``--points FILE.csv``) on the shipped
LIDC-IDRI-0001 nodule sample and the full series it was cut from: one result per point, maps
and the nodule on the input's grid, and one-line errors for points and points files that
cannot be used, with nothing half-written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib import cli
from CTExplainLib.errors import CTExplainError, InputError
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import load_package
from CTExplainLib.models_catalog import NODULE_SAMPLE, POINT_CLASSIFIER, POINT_SEGMENTER, locate_package
from CTExplainLib.points import run as point_run
from CTExplainLib.points.crop import crop_input
from CTExplainLib.points.outline import outline_nodule
from CTExplainLib.points.points_file import MarkedPoint, points_for_cases, read_points_file
from CTExplainLib.points.run import explain_points
from CTExplainLib.trust import faithfulness
from CTExplainLib.volume import LPS_TO_RAS, Grid

NODULE = NODULE_SAMPLE.points[0]  # nodules.csv centre of LIDC-IDRI-0001's nodule (LPS mm)
# Voxels (i, j, k) of the sample: the table under the patient (390 HU) and the air in a corner.
TABLE_IJK = (116, 350, 12)
AIR_IJK = (280, 5, 12)


def run(args: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    status = cli.main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def point_models() -> Tuple[Path, Path]:
    try:
        return locate_package(POINT_CLASSIFIER)[0], locate_package(POINT_SEGMENTER)[0]
    except CTExplainError:
        pytest.skip(f"{POINT_CLASSIFIER} / {POINT_SEGMENTER} are not installed (Resources/Models or CTEXPLAIN_MODELS)")


@pytest.fixture(scope="module")
def sample_grid() -> Grid:
    return Grid.of_image(sitk.ReadImage(str(NODULE_SAMPLE.path)))


@pytest.fixture(scope="module")
def cohort_run(point_models, sample_grid: Grid, tmp_path_factory: pytest.TempPathFactory):
    """One CLI run: the sample at its nodule, the table, the air and a point outside the image
    (from a points file), plus the nodule again by --point."""
    root = tmp_path_factory.mktemp("points")
    table, air = (sample_grid.index_to_point(ijk) for ijk in (TABLE_IJK, AIR_IJK))
    rows = [("nodule", NODULE), ("table", table), ("air", air), ("outside", (NODULE[0], NODULE[1], NODULE[2] + 500.0))]
    csv = root / "points.csv"
    csv.write_text("id,x,y,z\n" + "".join(f"{name},{p[0]},{p[1]},{p[2]}\n" for name, p in rows))
    calls = []
    original = point_run.load_volume

    def counted(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    point_run.load_volume = counted
    try:
        status = cli.main(["explain", str(NODULE_SAMPLE.path), "--points", str(csv), "--point", *map(str, NODULE),
                           "--model", str(point_models[0]), "--segmenter", str(point_models[1]),
                           "--out", str(root / "out"), "--device", "cpu", "--no-progress"])
    finally:
        point_run.load_volume = original
    folder = root / "out" / NODULE_SAMPLE.name
    return status, folder, json.loads((folder / "result.json").read_text()), calls


@pytest.mark.slow
def test_one_entry_per_point_and_the_ct_is_loaded_once(cohort_run, capsys) -> None:
    status, folder, record, calls = cohort_run
    assert status == cli.EXIT_CASE_FAILED  # three of the points cannot be used
    assert len(calls) == 1
    assert [p["id"] for p in record["points"]] == ["1", "nodule", "table", "air", "outside"]
    ok = {p["id"]: p["ok"] for p in record["points"]}
    assert ok == {"1": True, "nodule": True, "table": False, "air": False, "outside": False}
    errors = {p["id"]: p["error"] for p in record["points"]}
    assert "outside the body" in errors["table"] and "on the table" in errors["table"]
    assert "in the air" in errors["air"]
    assert "outside the image" in errors["outside"]
    for name in ("table", "air", "outside"):
        assert "\n" not in errors[name] and f"point {name} at (" in errors[name] and "LPS" in errors[name]
        assert not (folder / f"point_{name}").exists()
    # The same point given twice gives the same answer.
    assert record["points"][0]["findings"] == record["points"][1]["findings"] or all(
        abs(a["probability"] - b["probability"]) < 1e-6 for a, b in zip(record["points"][0]["findings"], record["points"][1]["findings"]))


@pytest.mark.slow
def test_maps_and_nodule_on_the_input_grid(cohort_run, point_models, sample_grid: Grid) -> None:
    _, folder, record, _ = cohort_run
    entry = record["points"][1]
    classifier = load_package(point_models[0])
    assert [f["name"] for f in entry["findings"]] == classifier.metadata.class_names
    heat_image = sitk.ReadImage(str(folder / entry["findings"][0]["heat_map"]))
    nodule_image = sitk.ReadImage(str(folder / entry["nodule"]["label_map"]))
    for image in (heat_image, nodule_image):
        assert Grid.of_image(image).same_as(sample_grid)
    heat, nodule = sitk.GetArrayFromImage(heat_image), sitk.GetArrayFromImage(nodule_image)
    (i0, j0, k0), (i1, j1, k1) = entry["crop"]["start"], entry["crop"]["stop"]
    inside = np.zeros(heat.shape, bool)
    inside[k0:k1, j0:j1, i0:i1] = True
    assert heat[inside].max() > 0.5 and not heat[~inside].any()  # zero outside the crop
    # The nodule is at the point, has the reported size, and the map's share in it is reported.
    i, j, k = np.rint(sample_grid.point_to_index(NODULE)).astype(int)
    assert nodule[k, j, i] == 1 and set(np.unique(nodule)) == {0, 1}
    volume_ml = nodule.sum() * np.prod(sample_grid.spacing) / 1000.0
    assert abs(volume_ml - entry["nodule"]["volume_ml"]) < 0.1 * entry["nodule"]["volume_ml"]
    assert 5.0 < entry["nodule"]["diameter_mm"] < 40.0  # the readers' diameter: 23.4 mm
    share = float((heat * nodule).sum() / heat.sum())
    assert abs(share - entry["findings"][0]["energy_in_nodule"]) < 0.05
    assert 0 < entry["nodule"]["share_of_crop"] < 1
    assert (folder / entry["montage"]).is_file()
    # Faithfulness of every class's map on the crop, measured by default ("auto" is fast for point models).
    for finding in entry["findings"]:
        faithful = finding["faithfulness"]
        assert faithful["mode"] == "fast" and faithful["verdict"] in ("faithful", "no better than random")
        assert len(faithful["deletion_curve"]) == faithfulness.MODES["fast"].steps + 1


@pytest.mark.slow
def test_cli_probability_is_the_models_at_the_crop(cohort_run, point_models) -> None:
    """The CLI's probability is the classifier's on the crop policy's input at the segmenter's nodule."""
    _, _, record, _ = cohort_run
    import torch

    classifier, segmenter = (load_package(p) for p in point_models)
    volume = load_volume(NODULE_SAMPLE.path)
    mask = outline_nodule(segmenter, volume, NODULE, torch.device("cpu"))
    tensor = crop_input(volume, classifier.metadata.input, NODULE, mask).model_input.batch()
    with torch.no_grad():
        probability = torch.sigmoid(classifier.network(tensor).float())[0, 0].item()
    assert abs(probability - record["points"][1]["findings"][0]["probability"]) < 1e-5


@pytest.mark.slow
def test_ras_points_and_in_memory_entry_agree(cohort_run, point_models, tmp_path: Path, capsys) -> None:
    _, _, record, _ = cohort_run
    ras = LPS_TO_RAS @ np.asarray(NODULE)
    status, out, err = run(["explain", str(NODULE_SAMPLE.path), "--point", *map(str, ras), "--ras",
                          "--model", str(point_models[0]), "--segmenter", str(point_models[1]),
                          "--out", str(tmp_path), "--device", "cpu", "--no-progress"], capsys)
    assert status == 0, err
    again = json.loads((tmp_path / NODULE_SAMPLE.name / "result.json").read_text())["points"][0]
    faithful = again["findings"][0]["faithfulness"]  # the summary shows the top finding's map's faithfulness
    assert f"1:{again['findings'][0]['name']}" in out and f"{faithful['verdict']} {faithful['score']:+.3f}" in out
    np.testing.assert_allclose(again["lps"], NODULE, atol=1e-9)
    assert abs(again["findings"][0]["probability"] - record["points"][1]["findings"][0]["probability"]) < 1e-6
    classifier, segmenter = (load_package(p) for p in point_models)
    memory = explain_points(load_volume(NODULE_SAMPLE.path), classifier, segmenter, [MarkedPoint("m", NODULE)], device="cpu")[0]
    assert abs(float(memory.classification.probabilities[0]) - again["findings"][0]["probability"]) < 1e-6


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_points_file_errors_name_the_file_and_row(tmp_path: Path) -> None:
    cases = {
        "empty.csv": ("", "is empty"),
        "header.csv": ("x,y,z\n", "no points"),
        "missing.csv": ("x,y\n1,2\n", "no column z"),
        "text.csv": ("x,y,z\n1,2,3\n1,two,3\n", "row 3: column y is 'two', not a number"),
        "nan.csv": ("x,y,z\n1,nan,3\n", "row 2: column y"),
        "extra.csv": ("x,y,z\n1,2,3,4\n", "row 2: has more fields"),
        "twice.csv": ("id,x,y,z\na,1,2,3\na,4,5,6\n", "row 3: id 'a' is used already by row 2"),
    }
    for name, (text, problem) in cases.items():
        path = write(tmp_path / name, text)
        with pytest.raises(InputError) as caught:
            read_points_file(path, ras=False)
        message = str(caught.value)
        assert message.startswith(str(path)) and problem in message and "\n" not in message, message
    with pytest.raises(InputError, match="cannot read"):
        read_points_file(tmp_path / "absent.csv", ras=False)
    good = read_points_file(write(tmp_path / "good.csv", "image,id,x,y,z\nct_a.nii.gz,n 1,1,2,3\n,,4,5,6\n"), ras=True)
    assert good == [MarkedPoint("n_1", (-1.0, -2.0, 3.0), "ct_a.nii.gz", 2), MarkedPoint("2", (-4.0, -5.0, 6.0), None, 3)]


def test_points_go_to_the_input_they_name(tmp_path: Path) -> None:
    a, b = tmp_path / "ct_a.nii.gz", tmp_path / "series_b"
    points = [MarkedPoint("1", (0, 0, 0), "ct_a", 2), MarkedPoint("2", (1, 1, 1), "series_b", 3), MarkedPoint("3", (2, 2, 2))]
    chosen = points_for_cases(points, [a, b], tmp_path / "p.csv")
    assert [p.id for p in chosen[a]] == ["1", "3"] and [p.id for p in chosen[b]] == ["2", "3"]
    with pytest.raises(InputError, match=r"p\.csv: row 2: point 1: image 'ct_c' is not among the inputs given \(ct_a\.nii\.gz, series_b\)"):
        points_for_cases([MarkedPoint("1", (0, 0, 0), "ct_c", 2)], [a, b], tmp_path / "p.csv")


def test_bad_points_files_stop_before_anything_is_written(point_models, tmp_path: Path, capsys) -> None:
    ct = tmp_path / "inputs" / "chest.nii.gz"
    ct.parent.mkdir()
    shutil.copy(NODULE_SAMPLE.path, ct)
    before = ct.read_bytes()
    bad = {
        "missing.csv": ("x,y\n1,2\n", "no column z"),
        "text.csv": ("x,y,z\n1,2,abc\n", "row 2: column z is 'abc'"),
        "other.csv": ("image,x,y,z\nchest,1,2,3\nelsewhere.nii.gz,1,2,3\n", "row 3: point 2: image 'elsewhere.nii.gz' is not among"),
        "empty.csv": ("", "is empty"),
    }
    for name, (text, problem) in bad.items():
        out = tmp_path / f"out_{name}"
        status, _, err = run(["explain", str(ct), "--points", str(write(tmp_path / name, text)), "--out", str(out),
                              "--model", str(point_models[0]), "--segmenter", str(point_models[1]), "--no-progress"], capsys)
        assert status == cli.EXIT_CASE_FAILED
        lines = err.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and problem in lines[0], err
        assert not out.exists()  # nothing written
    assert ct.read_bytes() == before


def test_point_mode_needs_point_models(tmp_path: Path, capsys) -> None:
    chest = locate_package("chest-ct-4class")[0]
    status, _, err = run(["explain", str(NODULE_SAMPLE.path), "--point", *map(str, NODULE), "--model", str(chest),
                          "--segmenter", "none", "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert status == cli.EXIT_CASE_FAILED and "is not a point model" in err and not (tmp_path / "o" / NODULE_SAMPLE.name).exists()


class PointList:
    """What the logic reads of a vtkMRMLMarkupsFiducialNode (slicer-api.md, "Markups point
    lists"): control points in node-local RAS under a parent transform (local -> world, 4x4)."""

    def __init__(self, to_world: np.ndarray) -> None:
        self.to_world = np.asarray(to_world, dtype=float)
        self.local: List[np.ndarray] = []
        self.labels: List[str] = []

    def AddControlPoint(self, ras, label: str) -> int:
        self.local.append(np.asarray(ras, dtype=float))
        self.labels.append(label)
        return len(self.local) - 1

    def GetNumberOfControlPoints(self) -> int:
        return len(self.local)

    def GetNthControlPointPosition(self, index: int, out: list) -> None:
        out[:] = list(self.local[index])

    def GetNthControlPointPositionWorld(self, index: int, out: list) -> int:
        out[:] = list(self.to_world[:3, :3] @ self.local[index] + self.to_world[:3, 3])
        return 1

    def GetNthControlPointLabel(self, index: int) -> str:
        return self.labels[index]


SECOND = (NODULE[0] + 2.0, NODULE[1] - 2.0, NODULE[2])


@pytest.fixture(scope="module")
def two_points(point_models, tmp_path_factory: pytest.TempPathFactory):
    """The CLI at the nodule and 2.8 mm from it; the same two points marked in a point list under
    a rotated, shifted parent transform."""
    out = tmp_path_factory.mktemp("two")
    status = cli.main(["explain", str(NODULE_SAMPLE.path), "--point", *map(str, NODULE), "--point", *map(str, SECOND),
                       "--model", str(point_models[0]), "--segmenter", str(point_models[1]),
                       "--out", str(out), "--device", "cpu", "--no-progress"])
    assert status == 0
    folder = out / NODULE_SAMPLE.name
    angle = np.radians(20.0)
    to_world = np.array([[np.cos(angle), -np.sin(angle), 0, 15.0], [np.sin(angle), np.cos(angle), 0, -7.0], [0, 0, 1, 5.0], [0, 0, 0, 1]])
    marks = PointList(to_world)
    for n, lps in enumerate((NODULE, SECOND), 1):
        world = LPS_TO_RAS @ np.asarray(lps)
        marks.AddControlPoint(np.linalg.solve(to_world[:3, :3], world - to_world[:3, 3]), f"F-{n}")
    return folder, json.loads((folder / "result.json").read_text())["points"], marks


@pytest.mark.slow
def test_marked_points_give_the_clis_rows_maps_and_voxels(point_models, two_points) -> None:
    """Two points marked on the sample, the list under a parent transform: the rows carry the
    CLI's probabilities, the maps and nodules are the CLI's files on the input's grid, and each
    world position lands on the CLI's LPS point's voxel (the local one would not)."""
    from CTExplainLib.points.markups import explain_markups, marked_points, points_table

    folder, cli_points, marks = two_points
    volume = load_volume(NODULE_SAMPLE.path)
    grid = volume.grid
    for point, lps, local in zip(marked_points(marks), (NODULE, SECOND), marks.local):
        voxel = np.rint(grid.point_to_index(point.lps))
        assert np.array_equal(voxel, np.rint(grid.point_to_index(lps)))
        assert not np.array_equal(voxel, np.rint(grid.point_to_index(LPS_TO_RAS @ local)))  # a transform ignored misses
    classifier, segmenter = (load_package(p) for p in point_models)
    analyses = explain_markups(volume, marks, classifier, segmenter, device="cpu")
    table = {title: values for title, _, values in points_table(analyses)}
    assert table["Point"] == ["F-1", "F-2"] and table["Error"] == ["", ""]
    for row, (analysis, entry) in enumerate(zip(analyses, cli_points)):
        assert abs(table["Probability"][row] - entry["findings"][0]["probability"]) < 1e-6
        assert abs(table["Diameter mm"][row] - entry["nodule"]["diameter_mm"]) < 1e-6
        assert abs(table["Energy in nodule"][row] - entry["findings"][0]["energy_in_nodule"]) < 1e-6
        assert table["Faithfulness"][row] == entry["findings"][0]["faithfulness"]["verdict"]
        assert abs(table["Faithfulness score"][row] - entry["findings"][0]["faithfulness"]["score"]) < 1e-6
        heat = analysis.heat_map(0, grid)
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / entry["findings"][0]["heat_map"])))
        assert heat.shape == grid.shape and np.abs(heat - written).max() < 1e-6
        nodule = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / entry["nodule"]["label_map"])))
        assert np.array_equal(analysis.nodule_labels(grid), nodule)


@pytest.mark.slow
def test_module_logic_marks_rows_and_shows_a_points_map(point_models, two_points) -> None:
    """The Slicer module's processPoints in the stand-in: the two points marked in a real
    vtkMRMLMarkupsFiducialNode under a vtkMRMLLinearTransformNode (local positions, so only the
    world ones meet the CLI's points) give a findings-table row per point with the CLI's
    probabilities, and per point a heat-map node and a nodule label-map node on the input's grid
    holding the CLI's files; choosing a row shows that point's pair."""
    import slicer_standin
    import vtk

    folder, cli_points, double = two_points
    slicer = slicer_standin.install(testing=True)
    try:
        module = slicer_standin.load_scripted_module(Path(__file__).resolve().parents[1] / "CTExplain" / "CTExplain.py")
        ct = slicer.util.loadVolume(str(NODULE_SAMPLE.path))
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(double.to_world[r, c]))
        transform.SetMatrixTransformToParent(matrix)
        marks = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
        marks.SetAndObserveTransformNodeID(transform.GetID())
        for local, label in zip(double.local, double.labels):
            marks.AddControlPoint(*local, label)
        logic = module.CTExplainLogic()
        results = logic.processPoints(ct, marks, classifier=str(point_models[0]), segmenter=str(point_models[1]), device="cpu")
        table = results["table"]
        assert table.GetNumberOfRows() == 2
        titles = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
        for row, entry in enumerate(cli_points):
            label = table.GetCellText(row, titles.index("Point"))
            assert label == f"F-{row + 1}"
            assert abs(float(table.GetCellText(row, titles.index("Probability"))) - entry["findings"][0]["probability"]) < 1e-6
            point = results["points"][label]
            heat = slicer.util.arrayFromVolume(point["heatMap"])
            written = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / entry["findings"][0]["heat_map"])))
            assert heat.shape == written.shape and np.abs(heat - written).max() < 1e-6
            nodule = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / entry["nodule"]["label_map"])))
            assert np.array_equal(slicer.util.arrayFromVolume(point["nodule"]), nodule)
            assert point["nodule"].IsA("vtkMRMLLabelMapVolumeNode")
        logic.showPoint(results, "F-2")
        composite = slicer.mrmlScene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        composite = [composite.GetItemAsObject(i) for i in range(composite.GetNumberOfItems())]
        assert composite and all(c.GetForegroundVolumeID() == results["points"]["F-2"]["heatMap"].GetID()
                                 and c.GetLabelVolumeID() == results["points"]["F-2"]["nodule"].GetID() for c in composite)
    finally:
        slicer_standin.uninstall()


def test_a_crop_around_a_nodule_is_not_taken_for_outside_the_body(point_models, data_dir: Path) -> None:
    """LIDC's nodule crops are 30 mm wide: no body outline in view, so its largest soft-tissue
    region is the chest wall and the nodule lay 'outside the body'; narrow crops skip that test.
    The same nodule's point on a whole-body-wide field keeps it (test_one_entry_per_point...)."""
    import csv

    with open(data_dir / "lidc-nodules" / "nodules.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["patient_id"] == "LIDC-IDRI-0005" and r["nodule_id"] == "1")
    volume = load_volume(data_dir / "lidc-nodules" / "image" / "LIDC-IDRI-0005_R_1.nii.gz")
    point = MarkedPoint("n", (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])))
    models = load_package(point_models[0]), load_package(point_models[1])
    assert point_run.PointCase(volume).body() is None
    record = explain_points(volume, *models, [point], device="cpu")[0].record
    assert record["ok"], record["error"]
    assert record["nodule"]["share_of_crop"] > 0
