"""CTExplainBatch.py run as Slicer would run it (``Slicer --no-main-window --python-script``), with
the stand-in as ``slicer``, writes the same files as ``ctexplain explain`` for the same inputs.

The script runs in a child Python that installs the stand-in (not in testing mode: a dialog would
raise) and executes the file as ``__main__``, as Slicer's executeFile does; its exit status is
the one the script gave to ``slicer.util.exit``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from CTExplainLib import cli
from CTExplainLib.models_catalog import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER, read_package_info, resolve_package

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "CTExplain" / "Scripts" / "CTExplainBatch.py"
SAMPLE = REPO / "CTExplain" / "Resources" / "Samples" / "chest_ct.nii.gz"

RUNNER = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
import slicer_standin
slicer = slicer_standin.install(testing=False)
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
code = slicer.app.exitCode
slicer_standin.uninstall()
sys.exit(99 if code is None else code)   # 99: the script never called slicer.util.exit
"""


def run_batch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, str(REPO / "Testing"), str(SCRIPT), "--", *args],
                          capture_output=True, text=True, timeout=600)


def geometry(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array(image.GetOrigin()), np.array(image.GetSpacing()), np.array(image.GetDirection())


def assert_same_geometry(actual: sitk.Image, expected: sitk.Image) -> None:
    assert actual.GetSize() == expected.GetSize()
    for a, e in zip(geometry(actual), geometry(expected)):
        np.testing.assert_allclose(a, e, atol=1e-6)


def segment_masks(path: Path, reference: sitk.Image) -> Dict[str, np.ndarray]:
    """Each segment of a single-layer .seg.nrrd as a mask on ``reference``'s grid (in physical space:
    Slicer may crop a segmentation to its extent)."""
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    offset = np.array(reference.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))
    assert np.allclose(offset, np.round(offset), atol=1e-4), offset
    i, j, k = np.round(offset).astype(int)
    full = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint16)
    array = sitk.GetArrayFromImage(image)
    full[k:k + array.shape[0], j:j + array.shape[1], i:i + array.shape[2]] = array
    masks = {}
    n = 0
    while image.HasMetaDataKey(f"Segment{n}_Name"):
        label = int(image.GetMetaData(f"Segment{n}_LabelValue"))
        masks[image.GetMetaData(f"Segment{n}_Name")] = full == label
        n += 1
    return masks


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("batch")
    inputs = [str(SAMPLE), str(data_dir / "slicer-cthead")]
    # The chest models for both (without them the head CT's raw values would fit no installed model).
    models = ["--model", DEFAULT_CLASSIFIER, "--segmenter", DEFAULT_SEGMENTER]
    batch = run_batch(*inputs, "--out", str(out / "batch"), "--device", "cpu", *models)
    status = cli.main(["explain", *inputs, "--out", str(out / "cli"), "--device", "cpu", "--no-progress", *models])
    return batch, status, out


def test_batch_succeeds_and_exits_0(outputs):
    batch, status, out = outputs
    assert batch.returncode == 0, batch.stdout + batch.stderr
    assert status == 0
    assert sorted(p.name for p in (out / "batch").iterdir()) == sorted(p.name for p in (out / "cli").iterdir()) == [
        "chest_ct", "slicer-cthead", "summary.csv", "summary.html"]


@pytest.mark.parametrize("case", ["chest_ct", "slicer-cthead"])
def test_batch_writes_the_same_files_as_the_cli(outputs, case):
    batch, _, out = outputs
    assert batch.returncode == 0, batch.stderr
    ours, theirs = out / "batch" / case, out / "cli" / case
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    names = {p.name for p in theirs.iterdir()}
    assert {"labels.nrrd", "segmentation.seg.nrrd", "result.json"} <= names
    heat_maps = sorted(n for n in names if n.startswith("heatmap_"))
    assert len(heat_maps) == len(read_package_info(resolve_package(DEFAULT_CLASSIFIER)).class_names)

    for name in heat_maps + ["labels.nrrd"]:
        actual, expected = sitk.ReadImage(str(ours / name)), sitk.ReadImage(str(theirs / name))
        assert_same_geometry(actual, expected)
        assert actual.GetPixelID() == expected.GetPixelID(), name
        if name == "labels.nrrd":
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(actual), sitk.GetArrayViewFromImage(expected))
        else:
            np.testing.assert_allclose(sitk.GetArrayViewFromImage(actual), sitk.GetArrayViewFromImage(expected), atol=1e-5)

    reference = sitk.ReadImage(str(theirs / "labels.nrrd"))
    ours_segments = segment_masks(ours / "segmentation.seg.nrrd", reference)
    theirs_segments = segment_masks(theirs / "segmentation.seg.nrrd", reference)
    present = {name for name, mask in theirs_segments.items() if mask.any()}
    assert present and set(ours_segments) == present  # Slicer's import makes segments of present labels only
    for name in present:
        np.testing.assert_array_equal(ours_segments[name], theirs_segments[name], err_msg=name)

    for name in sorted(n for n in names if n.endswith(".png")):
        a, b = (np.asarray(Image.open(folder / name)).astype(int) for folder in (ours, theirs))
        assert a.shape == b.shape and np.abs(a - b).mean() < 0.5, name

    mine, cli_record = (json.loads((folder / "result.json").read_text()) for folder in (ours, theirs))
    assert mine["method"] == cli_record["method"] and mine["segments"] == cli_record["segments"]
    assert mine["classifier"] == cli_record["classifier"] and mine["segmenter"] == cli_record["segmenter"]
    for key in ("size", "spacing", "origin", "direction"):
        np.testing.assert_allclose(mine["input_grid"][key], cli_record["input_grid"][key], atol=1e-6)
    assert [f["name"] for f in mine["findings"]] == [f["name"] for f in cli_record["findings"]]
    for a, b in zip(mine["findings"], cli_record["findings"]):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
        assert (a["heat_map"], a["montage"], a["above_threshold"]) == (b["heat_map"], b["montage"], b["above_threshold"])
        assert a["anatomy"]["energy_by_segment"] == pytest.approx(b["anatomy"]["energy_by_segment"], abs=1e-6)
        assert a["anatomy"]["peak_segment"] == b["anatomy"]["peak_segment"]


def test_a_failing_case_gives_exit_status_1(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    batch = run_batch(str(notes), str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert batch.returncode == 1, batch.stdout + batch.stderr
    errors = [line for line in batch.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "notes.txt" in batch.stderr and "missing.nii.gz" in batch.stderr
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


def test_bad_arguments_give_exit_status_1(tmp_path):
    assert run_batch("--out").returncode == 1
