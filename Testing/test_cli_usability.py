"""The ``ctexplain`` command line explains itself: help without torch, every default shown,
errors that name the real flag and are said once, case folders named as the user expects,
progress a log can read, and no empty output folder after a run where everything failed."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from CTExplainLib import cli
from CTExplainLib.demo_models import LUNG, untrained_package
from CTExplainLib.discovery import case_name
from CTExplainLib.model_package import InputSpec

HEAVY = ("torch", "monai", "SimpleITK", "pydicom")

# Runs in a fresh interpreter: which heavy modules --help, explain --help and models import.
PROBE = """
import json, sys
from CTExplainLib import cli
cli._parser()
for argv in (["--help"], ["explain", "--help"]):
    try:
        cli.main(argv)
    except SystemExit as exit:
        assert exit.code == 0, argv
assert cli.main(["models"]) == 0
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
"""


def test_help_and_models_import_no_heavy_module() -> None:
    completed = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "classify, explain and segment" in completed.stdout and "demo-chest-classifier-untrained" in completed.stdout
    assert json.loads(completed.stdout.splitlines()[-1]) == []


def _options(parser: argparse.ArgumentParser) -> List[Tuple[str, argparse.Action, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {o}", a, p) for o, a, p in _options(sub)]
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            found.append((action.option_strings[-1], action, parser))
    return found


def test_every_option_has_help_with_its_default() -> None:
    options = _options(cli._parser())
    assert len(options) >= 15
    for name, action, parser in options:
        assert action.help, f"{name} has no help"
        shown = parser._get_formatter()._get_help_string(action)
        assert "default" in shown or (action.required and "required" in shown), f"{name}: its help does not say its default: {shown!r}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """A small untrained classifier and segmenter (fast on the CPU)."""
    folder = tmp_path_factory.mktemp("tiny")
    spec = InputSpec(3, [LUNG], spacing=(8.0, 8.0, 8.0), size=(32, 32, 16), orientation="LPS")
    classifier = untrained_package(folder / "cls", "cls", "multilabel", "CompactCNN", ["finding"], spec, {"channels": [4, 8]})
    segmenter = untrained_package(folder / "seg", "seg", "segmentation", "UNet", ["background", "body"], spec, {"channels": [4, 8], "num_res_units": 0})
    return classifier, segmenter


def run(args: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    status = cli.main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_png_without_spacing_names_the_real_flag(data_dir: Path, tiny, tmp_path: Path, capsys) -> None:
    png = data_dir / "chest-ct-4class" / "test" / "adenocarcinoma" / "0001.png"
    status, _, stderr = run(["explain", str(png), "--out", str(tmp_path / "out"), "--model", str(tiny[0]), "--segmenter", "none"], capsys)
    assert status == 2
    error = next(line for line in stderr.splitlines() if line.startswith("error:"))
    assert str(png) in error and "--spacing 0.5 0.5 5" in error and "--image-spacing" not in error, error
    # The flag it names is the one the parser takes, and with it the same image runs (with a 2D model).
    spec = InputSpec(2, [LUNG], size=(32, 32), resize="fit", intensity="display")
    flat = untrained_package(tmp_path / "cls2d", "cls2d", "binary", "CompactCNN", ["finding"], spec, {"channels": [4, 8]})
    status, stdout, stderr = run(["explain", str(png), "--out", str(tmp_path / "out"), "--model", str(flat), "--segmenter", "none",
                                  "--spacing", "0.5", "0.5", "5", "--no-progress"], capsys)
    assert status == 0, stderr
    assert (tmp_path / "out" / "0001" / "result.json").is_file()


def test_case_names(data_dir: Path, tmp_path: Path) -> None:
    series = data_dir / "slicer-cthead"
    assert case_name(series / "CTHead1.dcm") == "slicer-cthead"  # a file of a series loads the series
    assert case_name(series) == "slicer-cthead"
    unnamed = tmp_path / "series-without-suffixes"  # DICOM files named without .dcm, as PACS exports often are
    unnamed.mkdir()
    shutil.copy(data_dir / "dcmqi-ct3slice" / "01.dcm", unnamed / "IM0001")
    assert case_name(unnamed / "IM0001") == "series-without-suffixes"
    assert case_name(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz") == "example_ct_sm"
    assert case_name(data_dir / "chest-ct-4class" / "test" / "adenocarcinoma" / "0001.png") == "0001"
    for name, expected in (("scan.JPG", "scan"), ("scan.jpeg", "scan"), ("lung.seg.nrrd", "lung"), ("ct.mha", "ct"), ("notes.txt", "notes.txt")):
        (tmp_path / name).write_bytes(b"x")
        assert case_name(tmp_path / name) == expected, name


def test_dicom_file_input_gets_its_series_folder(data_dir: Path, tiny, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    status, _, stderr = run(["explain", str(data_dir / "dcmqi-ct3slice" / "02.dcm"), "--out", str(out), "--model", str(tiny[0]),
                             "--segmenter", "none", "--no-progress"], capsys)
    assert status == 0, stderr
    assert [p.name for p in out.iterdir()] == ["dcmqi-ct3slice"]


def test_errors_once_and_no_empty_out_folder(data_dir: Path, tiny, tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.nii.gz"
    notes.write_bytes(b"these are not voxels\n")
    missing = tmp_path / "missing.nii.gz"
    png = data_dir / "chest-ct-4class" / "test" / "adenocarcinoma" / "0001.png"
    out = tmp_path / "out"
    status, stdout, stderr = run(["explain", str(missing), str(notes), str(png), "--out", str(out), "--model", str(tiny[0]), "--segmenter", str(tiny[1])], capsys)
    assert status == 2
    for path in (missing, notes, png):
        said = [line for line in (stdout + stderr).splitlines() if str(path) in line]
        assert len(said) == 1 and said[0].startswith("error:"), f"{path} said {len(said)} times: {said}"
    assert stdout.count("FAILED") == 3
    assert not out.exists(), "every case failed: no --out folder is left"
    # An --out folder that was there before stays.
    out.mkdir()
    status, _, _ = run(["explain", str(notes), "--out", str(out), "--model", str(tiny[0]), "--no-progress"], capsys)
    assert status == 2 and out.is_dir()


def test_log_progress_is_one_line_per_stage(data_dir: Path, tiny, tmp_path: Path, capsys) -> None:
    """Under pytest stderr is no terminal, as in a log: no redrawn bar, one line per stage."""
    ct = data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"
    status, _, stderr = run(["explain", str(ct), "--out", str(tmp_path / "out"), "--model", str(tiny[0]), "--segmenter", str(tiny[1])], capsys)
    assert status == 0, stderr
    assert "\r" not in stderr and "%|" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("[1/1] example_ct_sm: ")]
    stages = [line.split(": ", 1)[1] for line in lines]
    assert stages[0] == "load" and stages[-1].startswith("done (")
    assert {"preprocess", "classify+explain", "segment", "heat maps", "write"} <= set(stages)
    assert len(stages) == len(set(stages)), f"a stage repeated: {stages}"
