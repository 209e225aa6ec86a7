"""CTExplainLib.background (the core in a child process) and the CLI's --progress-jsonl.

A fake child (a few lines of Python) checks the process mechanics: events arrive through poll(),
cancel() kills the child *and* a grandchild it started, errors come from its stderr. One real run
of ``ctexplain explain`` on a small CT checks progress, outputs on the input's grid, and cleanup.
"""
from __future__ import annotations

import io
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib import cli
from CTExplainLib.background import (
    BackgroundExplain,
    BackgroundProcess,
    CaseOutputs,
    core_environment,
    explain_command,
    process_alive,
)
from CTExplainLib.loading import load_volume
from CTExplainLib.models_catalog import DEFAULT_CLASSIFIER, read_package_info, resolve_package
from CTExplainLib.pipeline import CaseResult
from CTExplainLib.volume import Volume
from CTExplainLib.writing import write_image

posix_only = pytest.mark.skipif(os.name == "nt", reason="process groups and /proc are POSIX")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """No live (non-zombie) process left in process group ``pgid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                    members.append(int(entry.name))
        if not members:
            return True
        time.sleep(0.05)
    return False


FAKE_CHILD = textwrap.dedent("""
    import json, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(json.dumps({"case": "x", "stage": "load", "fraction": 0.0, "grandchild": grandchild.pid}), flush=True)
    print("not json: ignored by the parser", flush=True)
    print(json.dumps({"case": "x", "stage": "preprocess", "fraction": 0.25}), flush=True)
    time.sleep(120)
""")


@posix_only
def test_cancel_kills_the_child_and_its_descendants():
    events = []
    process = BackgroundProcess([sys.executable, "-c", FAKE_CHILD], on_event=events.append).start()
    deadline = time.monotonic() + 30
    while len(events) < 2 and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.05)
    assert [e["stage"] for e in events] == ["load", "preprocess"]
    assert process.output == ["not json: ignored by the parser"]
    child, grandchild = process.pid, events[0]["grandchild"]
    assert os.getpgid(child) == child != os.getpgid(0)  # its own process group, not ours
    assert os.getpgid(grandchild) == child
    process.cancel(timeout=2.0)
    assert _gone(child) and _gone(grandchild)
    assert _group_gone(child)
    assert process.poll() == -signal.SIGTERM and process.cancelled


@posix_only
def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored():
    code = "import json, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "print(json.dumps({'stage': 'load', 'fraction': 0}), flush=True); time.sleep(120)"
    events = []
    process = BackgroundProcess([sys.executable, "-c", code], on_event=events.append).start()
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.05)
    start = time.monotonic()
    process.cancel(timeout=0.5)
    assert time.monotonic() - start < 5
    assert process.poll() == -signal.SIGKILL and _group_gone(process.pid)


def test_error_message_and_status_of_a_failing_child():
    code = "import sys; print('warning: ignored', file=sys.stderr); print('error: /x/ct.nii: is broken', file=sys.stderr); sys.exit(2)"
    process = BackgroundProcess([sys.executable, "-c", code]).start()
    assert process.wait(timeout=60) == 2
    assert process.error_message() == "/x/ct.nii: is broken"
    crash = BackgroundProcess([sys.executable, "-c", "raise SystemExit('plain failure')"]).start()
    assert crash.wait(timeout=60) == 1
    assert "plain failure" in crash.error_message()


def test_command_and_environment():
    command = explain_command("/tmp/in.nrrd", "/tmp/out", classifier="/pk/c", segmenter="none", method="cam", device="cpu", python="/py")
    assert command[:4] == ["/py", "-m", "CTExplainLib.cli", "explain"]
    assert "--progress-jsonl" in command and command[command.index("--model") + 1] == "/pk/c"
    assert command[command.index("--segmenter") + 1] == "none" and command[command.index("--method") + 1] == "cam"
    assert "--model" not in explain_command("a", "b")  # defaults are the CLI's
    env = core_environment({"PYTHONPATH": "/elsewhere"})
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert (Path(paths[0]) / "CTExplainLib" / "cli.py").is_file() and paths[1] == "/elsewhere"


def test_jsonl_progress_is_deduplicated_and_never_decreases():
    stream = io.StringIO()
    progress = cli.JsonlProgress(stream)
    progress.start_case("ct", 0, 2)
    # The stage order of write_analysis: "write" (label map) before "statistics" and "heat maps",
    # each entered again for every finding.
    for stage, fraction in [("load", 0.0), ("preprocess", 0.125), ("write", 0.875), ("statistics", 0.75),
                            ("heat maps", 0.625), ("statistics", 0.75), ("write", 0.875)]:
        progress(stage, fraction)
    progress.end_case(CaseResult(input="ct.nii", output=Path("/o/ct"), ok=True))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["stage"] for line in lines] == ["load", "preprocess", "write", "statistics", "heat maps", "done"]
    fractions = [line["fraction"] for line in lines]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert lines[-1]["ok"] is True and lines[-1]["output"] == "/o/ct" and lines[-1]["cases"] == 2


@pytest.fixture(scope="module")
def small_ct(data_dir):
    return data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"


def test_background_explain_matches_the_command_line(small_ct, tmp_path):
    volume = load_volume(small_ct)
    events = []
    job = BackgroundExplain(volume, segmenter="none", device="cpu", temp_root=tmp_path / "tmp",
                            progress=lambda stage, fraction: events.append((stage, fraction)))
    job.start()
    folder = job.folder
    assert (folder / "input.nrrd").is_file() and folder.parent == (tmp_path / "tmp").resolve()
    assert job.wait(timeout=300), job.error
    stages = [s for s, _ in events]
    assert stages[0] == "load" and stages[-1] == "done" and "classify+explain" in stages
    fractions = [f for _, f in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    outputs = job.outputs
    assert outputs.heat_map_names() == list(read_package_info(resolve_package(DEFAULT_CLASSIFIER)).class_names)
    assert outputs.labels() is None
    # The same as the command line run on the file itself: the input went through a file exactly.
    assert cli.main(["explain", str(small_ct), "--out", str(tmp_path / "cli"), "--segmenter", "none",
                     "--device", "cpu", "--no-progress"]) == 0
    for finding in outputs.record["findings"]:
        reference = sitk.ReadImage(str(tmp_path / "cli" / "example_ct_sm" / finding["heat_map"]))
        np.testing.assert_allclose(outputs.heat_map(finding["name"]), sitk.GetArrayFromImage(reference), atol=1e-5)
        assert finding["anatomy"]["energy_by_segment"].keys() == {"background", "outside_body"}
    job.cleanup()
    assert not folder.exists() and list((tmp_path / "tmp").iterdir()) == []


def test_failed_run_reports_the_error_and_removes_its_folder(small_ct, tmp_path):
    job = BackgroundExplain(load_volume(small_ct), classifier=tmp_path / "no-such-package", temp_root=tmp_path)
    job.start()
    folder = job.folder
    assert job.wait(timeout=300) is False
    assert "no-such-package" in job.error and "no such model package" in job.error
    assert not folder.exists() and job.outputs is None


def test_outputs_off_the_input_grid_are_refused(tmp_path):
    grid_volume = Volume.from_sitk(sitk.Image([4, 5, 6], sitk.sitkFloat32))
    shifted = sitk.Image([4, 5, 6], sitk.sitkFloat32)
    shifted.SetOrigin((0.0, 0.0, 0.5))
    write_image(Volume.from_sitk(shifted), tmp_path / "heatmap_a.nrrd")
    (tmp_path / "result.json").write_text(json.dumps({"findings": [{"name": "a", "probability": 0.5, "heat_map": "heatmap_a.nrrd"}]}))
    outputs = CaseOutputs.read(tmp_path, grid_volume.grid)
    with pytest.raises(ValueError, match="not on the input's grid"):
        outputs.heat_map("a")
    with pytest.raises(KeyError):
        outputs.heat_map("b")


def test_poll_until_returns_when_done_and_raises_its_error_at_the_deadline() -> None:
    from CTExplainLib.background import poll_until

    calls = []
    poll_until(lambda: calls.append(1) or len(calls) == 3, timeout=None, timed_out=lambda: AssertionError("no deadline"))
    assert len(calls) == 3
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not end"):
        poll_until(lambda: False, timeout=0.2, timed_out=lambda: TimeoutError("did not end"))
    assert time.monotonic() - started >= 0.2  # not before its deadline
