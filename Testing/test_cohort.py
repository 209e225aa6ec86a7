"""Cohorts: ``ctexplain explain`` under ``torchrun`` splits the cases between ranks and writes
what a single process writes, file for file; a rank whose case fails does not stop the others."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from CTExplainLib import cli
from CTExplainLib.cohort.ranks import Rank, rank_from_environment, share
from CTExplainLib.demo_models import LUNG, untrained_package
from CTExplainLib.errors import CTExplainError
from CTExplainLib.model_package import InputSpec
from CTExplainLib.models_catalog import SAMPLES

SOURCE = Path(cli.__file__).resolve().parents[1]  # the CTExplain folder these tests import from
TIMINGS = re.compile(r"<h2>Timings \(s\)</h2>.*?(?=<h2>|</body>)", re.S)  # report.html's one part that differs run to run


def test_rank_from_environment() -> None:
    assert rank_from_environment({}) == Rank(rank=0, local_rank=0, world_size=1)
    assert rank_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Rank(rank=3, local_rank=1, world_size=4)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "0", "WORLD_SIZE": "0"}):
        with pytest.raises(CTExplainError):
            rank_from_environment(bad)


def test_shares_cover_every_case_once() -> None:
    cases = list(range(7))
    shares = [share(cases, Rank(rank=r, world_size=3)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert share(cases[:1], Rank(rank=1, world_size=2)) == []  # more ranks than cases: a rank may have none


def test_rank_without_its_group_says_so(data_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """RANK and WORLD_SIZE set by hand, without torchrun's rendezvous: one error line, no traceback."""
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    status = cli.main(["explain", str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"), "--out", str(tmp_path / "out"),
                       "--model", "demo-chest-classifier-untrained", "--segmenter", "none", "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and "rank 1 of 2 cannot join its torchrun group" in errors[0], errors
    assert not (tmp_path / "out").exists()


def _files(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _without_timings(path: Path) -> dict:
    record = json.loads(path.read_text())
    record.pop("timings_s")
    return record


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(data_dir: Path, tmp_path: Path) -> None:
    spec = InputSpec(3, [LUNG], spacing=(8.0, 8.0, 8.0), size=(32, 32, 16), orientation="LPS")
    classifier = untrained_package(tmp_path / "cls", "cls", "multilabel", "CompactCNN", ["finding a", "finding b"], spec, {"channels": [4, 8]})
    segmenter = untrained_package(tmp_path / "seg", "seg", "segmentation", "UNet", ["background", "body"], spec, {"channels": [4, 8], "num_res_units": 0})
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"these are not voxels\n")
    # Four real CTs (two NIfTI samples, a NIfTI and a 3-slice DICOM series given by one file) and
    # a broken file second in line: rank 1 of 2 fails it and goes on with its next case.
    inputs = [SAMPLES[0].path, broken, SAMPLES[1].path, data_dir / "totalsegmentator" / "example_ct_sm.nii.gz", data_dir / "dcmqi-ct3slice" / "01.dcm"]
    common = ["explain", *map(str, inputs), "--model", str(classifier), "--segmenter", str(segmenter), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SOURCE), str(SOURCE.parent), os.environ.get("PYTHONPATH", "")])}
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1); in this process, to start one torch less
    try:
        single = cli.main([*common, "--out", str(one), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    cohort = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "CTExplainLib.cli", *common, "--out", str(two)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single == 2
    assert cohort.returncode != 0 and "exitcode  : 2" in cohort.stderr, cohort.stderr[-3000:]  # the broken case, on both ranks
    # Rank r ran cases r, r + 2, ...; the broken one was said once, by rank 1.
    for rank, cases in ((0, ("[1/5] chest_ct", "[3/5] head_ct_ich_050", "[5/5] dcmqi-ct3slice")), (1, ("[2/5] broken", "[4/5] example_ct_sm"))):
        for case in cases:
            assert f"rank {rank}: {case}: load" in cohort.stderr, (rank, case)
    said = [line for line in cohort.stderr.splitlines() if str(broken) in line]
    assert len(said) == 1 and said[0].startswith(f"error: {broken}: "), cohort.stderr[-3000:]
    assert cohort.stdout.count("FAILED") == 1 and cohort.stdout.count(" ok ") == 4, cohort.stdout  # rank 0's table of all cases

    assert _files(one) == _files(two)
    assert sorted(p.name for p in two.iterdir()) == ["chest_ct", "dcmqi-ct3slice", "example_ct_sm", "head_ct_ich_050", "summary.csv", "summary.html"]
    with open(two / "summary.csv", newline="") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["ok", "error", "ok", "ok", "ok"]
    for name in _files(one):
        a, b = one / name, two / name
        if name.endswith(".nrrd"):  # heat maps are stored in steps of 1/1024, labels as integers
            np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(a))), sitk.GetArrayFromImage(sitk.ReadImage(str(b))), rtol=0, atol=1 / 1024, err_msg=name)
        elif name.endswith(".png"):
            np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)), err_msg=name)
        elif name.endswith("result.json"):
            assert _without_timings(a) == _without_timings(b), name
        elif name.endswith("report.html"):
            assert TIMINGS.sub("", a.read_text()) == TIMINGS.sub("", b.read_text()), name
        else:  # summary.csv and summary.html
            assert a.read_text() == b.read_text(), name
