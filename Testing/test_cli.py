"""The ``ctexplain`` command line: many cases, bad ones reported, good ones still written."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from CTExplainLib import cli
from CTExplainLib.cli import main
from CTExplainLib.demo_models import DEMO_DOMAIN, LUNG, demo_classifier, demo_segmenter, untrained_package
from CTExplainLib.model_package import METADATA_FILE, WEIGHTS_FILE, InputSpec
from CTExplainLib.models_catalog import SAMPLES, SampleCase, locate_package, read_package_info
from CTExplainLib.pipeline import slug


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("packages")
    return demo_classifier(folder / "classifier"), demo_segmenter(folder / "segmenter")


def run(args: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def make_bad_inputs(data_dir: Path, root: Path) -> dict:
    """One input per kind of bad input of the acceptance list, keyed by what is wrong."""
    bad = {}
    bad["missing"] = root / "does-not-exist.nii.gz"
    (root / "empty").mkdir()
    bad["empty"] = root / "empty"
    raw = (data_dir / "totalsegmentator" / "example_ct_sm.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(raw[: len(raw) // 3])
    bad["truncated"] = root / "truncated.nii.gz"
    (root / "notes.nii.gz").write_bytes(gzip.compress(b"these are not voxels\n"))
    bad["not-an-image"] = root / "notes.nii.gz"
    four_d = sitk.JoinSeries([sitk.Image([8, 8, 8], sitk.sitkInt16)] * 3)
    sitk.WriteImage(four_d, str(root / "fourd.nii.gz"))
    bad["4d"] = root / "fourd.nii.gz"
    nan = sitk.GetImageFromArray(np.where(np.arange(16 * 16 * 16).reshape(16, 16, 16) == 100, np.nan, -1000.0).astype(np.float32))
    sitk.WriteImage(nan, str(root / "nan.nrrd"))
    bad["nan"] = root / "nan.nrrd"
    shutil.copy(next((data_dir / "ct-ich" / "brain" / "049").glob("*.jpg")), root / "slice.jpg")
    bad["2d-image"] = root / "slice.jpg"
    return bad


@pytest.mark.slow
def test_bad_inputs_fail_alone(data_dir: Path, packages, tmp_path: Path, capsys) -> None:
    classifier, segmenter = packages
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    bad = make_bad_inputs(data_dir, inputs)
    good = data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"
    out = tmp_path / "out"
    args = ["explain", str(good), *map(str, bad.values()), "--out", str(out), "--model", str(classifier), "--segmenter", str(segmenter), "--spacing", "0.5", "0.5", "5", "--device", "cpu", "--no-progress"]
    status, stdout, stderr = run(args, capsys)
    assert status == 2
    assert (out / "example_ct_sm" / "result.json").is_file(), "the good case must still be processed"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    for kind, path in bad.items():
        mentions = [line for line in errors if str(path) in line]
        assert len(mentions) == 1, f"{kind}: expected one error line naming {path}, got {mentions} in {stderr}"
    # Nothing half-written: only the good case's folder exists, and no staging folders remain.
    assert sorted(p.name for p in out.iterdir()) == ["example_ct_sm", "summary.csv", "summary.html"]
    assert "FAILED" in stdout and "example_ct_sm" in stdout


def _dicom_copy(data_dir: Path, folder: Path) -> Path:
    shutil.copytree(data_dir / "slicer-cthead", folder)
    return folder


@pytest.mark.slow
def test_series_problems_are_warnings(data_dir: Path, packages, tmp_path: Path, capsys) -> None:
    classifier, _ = packages
    gap = _dicom_copy(data_dir, tmp_path / "gap")
    files = sorted(gap.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(str(p), stop_before_pixels=True).ImagePositionPatient[2]))
    files[len(files) // 2].unlink()
    mr = _dicom_copy(data_dir, tmp_path / "mr")
    for path in mr.glob("*.dcm"):
        dataset = pydicom.dcmread(str(path))
        dataset.Modality = "MR"
        dataset.save_as(str(path))
    out = tmp_path / "out"
    status, _, stderr = run(["explain", str(gap), str(mr), "--out", str(out), "--model", str(classifier), "--segmenter", "none", "--device", "cpu", "--no-progress"], capsys)
    assert status == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert any("gap" in line and "slice" in line.lower() for line in warnings), stderr
    assert any("mr" in line and "MR" in line for line in warnings), stderr
    assert json.loads((out / "gap" / "result.json").read_text())["warnings"]


def _broken_package(source: Path, target: Path, change: str) -> Path:
    shutil.copytree(source, target)
    metadata = json.loads((target / METADATA_FILE).read_text())
    if change == "pickle":
        (target / WEIGHTS_FILE).unlink()
        torch.save({"weights": torch.zeros(3)}, str(target / "model.pt"))
    elif change == "mismatch":
        save_file({"features.0.weight": torch.zeros(2, 2)}, str(target / WEIGHTS_FILE))
    elif change == "unknown-network":
        metadata["network"] = "os.system"
    (target / METADATA_FILE).write_text(json.dumps(metadata))
    return target


@pytest.mark.parametrize("change,words", [("pickle", "pickle"), ("mismatch", "do not match"), ("unknown-network", "os.system")])
def test_bad_model_packages(change: str, words: str, data_dir: Path, packages, tmp_path: Path, capsys) -> None:
    broken = _broken_package(packages[0], tmp_path / change, change)
    out = tmp_path / "out"
    status, _, stderr = run(["explain", str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"), "--out", str(out), "--model", str(broken), "--segmenter", "none", "--no-progress"], capsys)
    assert status == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(broken) in lines[0] and words in lines[0], stderr
    assert not out.exists() or not any(out.iterdir())


def test_unknown_finding_name_stops_before_any_case(data_dir: Path, packages, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["explain", str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"), "--out", str(out), "--model", str(packages[0]), "--classes", "pneumothorax", "--no-progress"]
    status, _, stderr = run(args, capsys)
    assert status == 2
    assert "pneumothorax" in stderr and "demo finding A" in stderr
    assert not out.exists()


def test_models_lists_shipped_packages(capsys) -> None:
    status, stdout, _ = run(["models"], capsys)
    assert status == 0
    assert "demo-chest-classifier-untrained" in stdout and "UNTRAINED" in stdout
    # Each sample is marked on the line of the package it runs with (the trained one, or its stand-in).
    for sample in SAMPLES:
        classifier, _ = locate_package(sample.classifier)
        line = next(line for line in stdout.splitlines() if line.rstrip().endswith("]") and str(classifier) in line)
        assert sample.name in line.split("[sample:")[1], line
        assert any(line.strip().startswith(sample.name) and sample.classifier in line for line in stdout.splitlines()), stdout


@pytest.fixture(scope="module")
def tiny_packages(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Small untrained packages with distinct names, so that results show which one ran (fast on CPU)."""
    folder = tmp_path_factory.mktemp("tiny")
    spec = InputSpec(3, [LUNG], spacing=(8.0, 8.0, 8.0), size=(32, 32, 16), orientation="LPS")
    small = {"channels": [4, 8]}
    packages = {name: untrained_package(folder / name, name, "multilabel", "CompactCNN", ["finding"], spec, small, domain=DEMO_DOMAIN) for name in ("default-cls", "cls-a", "cls-b")}
    packages["seg"] = untrained_package(folder / "seg", "seg", "segmentation", "UNet", ["background", "body"], spec, {"channels": [4, 8], "num_res_units": 0}, domain=DEMO_DOMAIN)
    return packages


def test_samples_run_with_their_own_models(data_dir: Path, tiny_packages: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    """INPUT paths run with the installed packages that fit them, each sample with its own pair;
    each package is loaded once."""
    ct = data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"
    labels = tmp_path / "sample_b_slices.csv"  # by output folder name: both samples are one file
    labels.write_text("case,slice,positive\nsample_b,1,1\n")
    samples = (SampleCase("sample_a", ct, str(tiny_packages["cls-a"]), str(tiny_packages["seg"]), "test"),
               SampleCase("sample_b", ct, str(tiny_packages["cls-b"]), None, "test", slice_labels=labels))
    monkeypatch.setattr(cli, "SAMPLES", samples)
    installed = [read_package_info(tiny_packages[name]) for name in ("default-cls", "seg")]  # the only ones installed
    monkeypatch.setattr(cli, "find_packages", lambda extra=(): installed)
    loads: List[Path] = []
    real_load = cli.load_package
    monkeypatch.setattr(cli, "load_package", lambda path: loads.append(Path(path)) or real_load(path))
    out = tmp_path / "out"
    status, stdout, stderr = run(["explain", str(ct), "--sample", "--out", str(out), "--device", "cpu", "--no-progress"], capsys)
    assert status == 0, stderr
    assert sorted(loads) == sorted(tiny_packages.values()), "each package once"
    expected = {"example_ct_sm": ("default-cls", "seg"), "sample_a": ("cls-a", "seg"), "sample_b": ("cls-b", None)}
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, "summary.csv", "summary.html"])
    for case, (classifier, segmenter) in expected.items():
        record = json.loads((out / case / "result.json").read_text())
        assert record["classifier"]["name"] == classifier, case
        assert (record["segmenter"] or {}).get("name") == segmenter, case
        assert (out / case / "segmentation.seg.nrrd").is_file() == (segmenter is not None), case
        shares = [finding["anatomy"]["energy_in_positive_slices"] for finding in record["findings"]]
        assert all((share is not None) == (case == "sample_b") for share in shares), (case, shares)
    assert all(name in stdout for name in expected)

    # --model and --segmenter, when given, apply to the samples too.
    override = tmp_path / "override"
    status, _, stderr = run(["explain", "--sample", "--out", str(override), "--model", str(tiny_packages["cls-b"]), "--segmenter", "none", "--device", "cpu", "--no-progress"], capsys)
    assert status == 0, stderr
    for case in ("sample_a", "sample_b"):
        record = json.loads((override / case / "result.json").read_text())
        assert record["classifier"]["name"] == "cls-b" and record["segmenter"] is None, case


@pytest.mark.slow
def test_console_script_runs_the_sample(tmp_path: Path) -> None:
    """The installed ``ctexplain`` script, as the README runs it."""
    script = Path(sys.executable).parent / "ctexplain"
    completed = subprocess.run([str(script), "explain", "--sample", "--out", str(tmp_path), "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    for sample in SAMPLES:  # each with its own models (or their stand-ins)
        record = json.loads((tmp_path / sample.name / "result.json").read_text())
        package = json.loads((locate_package(sample.classifier)[0] / METADATA_FILE).read_text())
        assert record["classifier"]["path"] == str(locate_package(sample.classifier)[0]), sample.name
        assert (record["segmenter"] is None) == (sample.segmenter is None), sample.name
        if sample.points:  # point mode: an entry per point, each with its own heat maps
            assert [p["ok"] for p in record["points"]] == [True] * len(sample.points), record["points"]
            assert all(len(p["findings"]) == len(package["classes"]) for p in record["points"])
            continue
        assert (tmp_path / sample.name / "segmentation.seg.nrrd").is_file() == (sample.segmenter is not None)
        # Models of up to 8 classes: a heat map for every class; an untrained one is said to be.
        heat_maps = sorted(p.name for p in (tmp_path / sample.name).glob("heatmap_*.nrrd"))
        assert heat_maps == sorted(f"heatmap_{slug(c['name'])}.nrrd" for c in package["classes"]), sample.name
        assert any("UNTRAINED" in w for w in record["warnings"]) == bool(package.get("untrained")), sample.name
