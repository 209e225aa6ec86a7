"""The core in a separate process, for callers that must not block (the Slicer module's GUI).

- :class:`BackgroundProcess` runs any command in its own process group (POSIX: a new session;
  Windows: a new process group), reads the JSON lines it prints on stdout (``ctexplain explain
  --progress-jsonl``) on a thread, and offers ``poll()`` (never blocks), ``wait()`` and
  ``cancel()``, which kills the whole process tree: a crash, a GPU fault or a hang of the
  child cannot take the caller down, and Cancel leaves nothing running.
- :class:`BackgroundExplain` runs one volume through ``ctexplain explain`` in a temporary
  folder: it writes the volume there (array and grid, exactly), starts the command line,
  reports progress, and afterwards reads the outputs back, checking that they lie on the
  volume's own grid. The temporary folder is removed by :meth:`BackgroundExplain.cleanup`, by a
  failure and by a cancel.

Example (plain Python; the Slicer module drives the same object from a timer)::

    from CTExplainLib.background import BackgroundExplain
    from CTExplainLib.loading import load_volume
    job = BackgroundExplain(load_volume("ct.nii.gz"), progress=print)
    job.start()
    job.wait()                                   # or: while not job.poll(): ...
    heat = job.outputs.heat_map("demo finding A")  # numpy (k, j, i) on the CT's grid
    job.cleanup()

Nothing here imports torch: the calling process stays light; only the child loads the models.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

import numpy as np

from .volume import Grid, Volume

LOG = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[str, float], None]
CORE_FOLDER = Path(__file__).resolve().parents[1]  # the folder holding the CTExplainLib package
INPUT_FILE = "input.nrrd"
TERMINATE_TIMEOUT_S = 5.0
STDERR_LINES = 200
GRID_TOLERANCE_MM = 1e-5


def explain_command(
    input_path: PathLike,
    out_dir: PathLike,
    classifier: Optional[PathLike] = None,
    segmenter: Optional[PathLike] = None,
    method: str = "gradcam",
    device: str = "auto",
    python: Optional[str] = None,
) -> List[str]:
    """The ``ctexplain explain`` command line for one input, with JSON-lines progress on stdout."""
    command = [python or sys.executable, "-m", "CTExplainLib.cli", "explain", str(input_path), "--out", str(out_dir),
               "--method", method, "--device", device, "--progress-jsonl", "--no-progress"]
    if classifier is not None:
        command += ["--model", str(classifier)]
    if segmenter is not None:
        command += ["--segmenter", str(segmenter)]
    return command


def core_environment(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this process's environment) with CTExplainLib importable and unbuffered output."""
    env = dict(os.environ if base is None else base)
    paths = [str(CORE_FOLDER)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


POLL_INTERVAL_S = 0.05


def poll_until(done: Callable[[], bool], timeout: Optional[float], timed_out: Callable[[], Exception]) -> None:
    """Call ``done`` every POLL_INTERVAL_S until it is true; raise ``timed_out()`` once
    ``timeout`` seconds (None: no limit) have passed without it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not done():
        if deadline is not None and time.monotonic() > deadline:
            raise timed_out()
        time.sleep(POLL_INTERVAL_S)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited process nobody reaped yet)."""
    if os.name == "nt":
        result = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"], capture_output=True, text=True)
        return str(pid) in result.stdout
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) is all there is


class BackgroundProcess:
    """A command in its own process group, with its stdout's JSON lines delivered by ``poll()``.

    ``on_event(dict)`` is called, in the thread that calls ``poll()``/``wait()``, for each JSON
    object line; other stdout lines are kept in ``output`` and the last stderr lines in ``stderr``.
    """

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[PathLike] = None,
                 on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = None if cwd is None else str(cwd)
        self.on_event = on_event
        self.process: Optional[subprocess.Popen] = None
        self.output: List[str] = []
        self.stderr: Deque[str] = deque(maxlen=STDERR_LINES)
        self.cancelled = False
        self._lines: "queue.Queue[str]" = queue.Queue()
        self._threads: List[threading.Thread] = []

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    def start(self) -> "BackgroundProcess":
        if self.process is not None:
            raise RuntimeError("the process was started already")
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own session and process group: cancel() kills the group
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, text=True,
                                        encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        for stream, sink in ((self.process.stdout, self._lines.put), (self.process.stderr, self.stderr.append)):
            thread = threading.Thread(target=self._read, args=(stream, sink), daemon=True, name="ctexplain-reader")
            thread.start()
            self._threads.append(thread)
        LOG.info("started process %d: %s", self.process.pid, " ".join(self.command))
        return self

    @staticmethod
    def _read(stream, sink: Callable[[str], None]) -> None:
        try:
            for line in iter(stream.readline, ""):
                sink(line.rstrip("\r\n"))
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            stream.close()

    def _deliver(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            event = None
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
            if isinstance(event, dict):
                if self.on_event is not None:
                    self.on_event(event)
            elif line.strip():
                self.output.append(line)

    def poll(self) -> Optional[int]:
        """Deliver the lines read so far; the exit status once the process has ended, else None."""
        if self.process is None:
            raise RuntimeError("the process was not started")
        self._deliver()
        status = self.process.poll()
        if status is None:
            return None
        for thread in self._threads:  # the last lines may still be in the pipe
            thread.join(timeout=2.0)
        self._deliver()
        return status

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the process ends (delivering events meanwhile); its exit status."""
        poll_until(lambda: self.poll() is not None, timeout,
                   lambda: subprocess.TimeoutExpired(self.command, timeout))  # type: ignore[arg-type]
        status = self.poll()  # the process has ended: its status again
        assert status is not None
        return status

    def cancel(self, timeout: float = TERMINATE_TIMEOUT_S) -> None:
        """Kill the process and every process it started (its process group / tree); then reap it.

        POSIX: SIGTERM to the group, up to ``timeout`` s for the child to end, then SIGKILL to
        whatever is left of the group. Windows: ``taskkill /T /F`` on the tree.
        """
        process = self.process
        if process is None:
            return
        self.cancelled = True
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        else:
            self._signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            self._signal_group(process.pid, signal.SIGKILL)  # descendants that outlived the child, or a hung child
        process.wait()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._deliver()
        LOG.info("cancelled process %d", process.pid)

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def error_message(self) -> str:
        """What the command said went wrong: its ``error:`` lines, else its last stderr lines."""
        errors = [line[len("error:"):].strip() for line in self.stderr if line.startswith("error:")]
        if errors:
            return "\n".join(errors)
        tail = [line for line in self.stderr if line.strip()][-5:]
        status = None if self.process is None else self.process.returncode
        if status is not None and status < 0:
            tail.append(f"the process was ended by signal {-status}")
        return "\n".join(tail) or f"the process ended with exit status {status}"


@dataclass
class CaseOutputs:
    """One case folder written by ``ctexplain explain``, read back on the input's grid."""

    folder: Path
    record: Dict[str, Any]  # result.json
    grid: Grid  # the input's grid: every image read must lie on it

    @classmethod
    def read(cls, folder: PathLike, grid: Grid) -> "CaseOutputs":
        folder = Path(folder)
        result = folder / "result.json"
        if not result.is_file():
            raise FileNotFoundError(f"{folder}: no result.json; the run did not complete")
        return cls(folder, json.loads(result.read_text(encoding="utf-8")), grid)

    def heat_map_names(self) -> List[str]:
        return [f["name"] for f in self.record.get("findings", []) if f.get("heat_map")]

    def heat_map(self, name: str) -> np.ndarray:
        finding = next((f for f in self.record.get("findings", []) if f["name"] == name and f.get("heat_map")), None)
        if finding is None:
            raise KeyError(f"{self.folder}: no heat map for finding {name!r}")
        return self._read(self.folder / finding["heat_map"])

    def labels(self) -> Optional[np.ndarray]:
        for name in ("labels.nrrd", "labels.nii.gz"):
            if (self.folder / name).is_file():
                return self._read(self.folder / name)
        return None

    def _read(self, path: Path) -> np.ndarray:
        from .loading.image_file import read_volume_file

        volume = read_volume_file(path)
        if not volume.grid.same_as(self.grid, GRID_TOLERANCE_MM):
            raise ValueError(f"{path.name} is not on the input's grid: {volume.grid.to_dict()} vs {self.grid.to_dict()}")
        return volume.array


class BackgroundExplain:
    """One volume through ``ctexplain explain`` in a child process (see the module docstring).

    ``progress(stage, fraction)`` gets the child's stages with the case's fraction (0..1, never
    decreasing). After ``poll()`` returned True: ``error`` is None and ``outputs`` readable until
    ``cleanup()``, or ``error`` says what went wrong (the folder is then removed already).
    """

    def __init__(self, volume: Volume, classifier: Optional[PathLike] = None, segmenter: Optional[PathLike] = None,
                 method: str = "gradcam", device: str = "auto", python: Optional[str] = None,
                 temp_root: Optional[PathLike] = None, progress: Optional[Progress] = None) -> None:
        self.volume = volume
        self.classifier, self.segmenter, self.method, self.device = classifier, segmenter, method, device
        self.python = python
        self.temp_root = temp_root
        self.progress = progress
        self.folder: Optional[Path] = None
        self.process: Optional[BackgroundProcess] = None
        self.outputs: Optional[CaseOutputs] = None
        self.error: Optional[str] = None
        self.finished = False
        self.cancelled = False
        self._case_folder: Optional[Path] = None

    def start(self) -> "BackgroundExplain":
        from .writing import write_image

        if self.temp_root is not None:
            Path(self.temp_root).mkdir(parents=True, exist_ok=True)
        root = None if self.temp_root is None else str(Path(self.temp_root).resolve())
        self.folder = Path(tempfile.mkdtemp(prefix="CTExplain-", dir=root)).resolve()
        try:
            write_image(self.volume, self.folder / INPUT_FILE, compress=False)  # array and grid, nothing else
            command = explain_command(self.folder / INPUT_FILE, self.folder / "out", self.classifier, self.segmenter,
                                      self.method, self.device, self.python)
            self.process = BackgroundProcess(command, env=core_environment(), cwd=self.folder, on_event=self._on_event)
            self.process.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _on_event(self, event: Dict[str, Any]) -> None:
        if event.get("stage") == "done" and event.get("output"):
            self._case_folder = Path(event["output"])
        if self.progress is not None and "stage" in event:
            self.progress(str(event["stage"]), float(event.get("fraction", 0.0)))

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    def poll(self) -> bool:
        """True once the run has ended (successfully or not); never blocks."""
        if self.finished:
            return True
        if self.process is None:
            raise RuntimeError("start() first")
        status = self.process.poll()
        if status is None:
            return False
        self.finished = True
        if status == 0:
            try:
                self.outputs = CaseOutputs.read(self._case_folder or self._only_case_folder(), self.volume.grid)
            except Exception as exc:  # unreadable outputs: reported like any failure
                self.error = f"CTExplain: could not read the results: {exc}"
        else:
            self.error = self.process.error_message()
        if self.error is not None:
            self.cleanup()
        return True

    def _only_case_folder(self) -> Path:
        assert self.folder is not None
        folders = [p for p in (self.folder / "out").iterdir() if (p / "result.json").is_file()]
        if len(folders) != 1:
            raise FileNotFoundError(f"{self.folder / 'out'}: expected one case folder, found {len(folders)}")
        return folders[0]

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the run ends; True if it succeeded."""
        poll_until(self.poll, timeout, lambda: TimeoutError(f"CTExplain: the background run did not end within {timeout} s"))
        return self.error is None

    def cancel(self) -> None:
        """Kill the child process tree and remove the temporary folder."""
        if self.process is not None and not self.finished:
            self.process.cancel()
            self.cancelled = True
            self.error = "cancelled"
        self.finished = True
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the temporary folder (inputs and outputs). Safe to call more than once."""
        if self.folder is not None:
            shutil.rmtree(str(self.folder), ignore_errors=True)
            self.folder = None


__all__ = ["BackgroundExplain", "BackgroundProcess", "CaseOutputs", "core_environment", "explain_command", "process_alive"]
