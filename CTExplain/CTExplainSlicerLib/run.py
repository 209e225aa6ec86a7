"""A background run of the core: the ``ctexplain`` command line in a child process, its files
loaded back onto the input's grid when it ends (what ``CTExplainLogic.process(wait=False)`` returns)."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any, Callable, Dict, Optional

from . import nodes

LOG = logging.getLogger(__name__)
SCENE_FRACTION = 0.9  # a background run's progress: the child up to here, loading its files after
Progress = Callable[[str, float], None]


def pythonExecutable() -> str:
    """The Python for child processes: Slicer's ``PythonSlicer`` (on PATH inside Slicer, which is
    how slicer.util.pip_install finds it), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def placeOutputs(inputVolumeNode, outputs) -> Dict[str, Any]:
    """A finished background run's files (CTExplainLib.background.CaseOutputs) as scene nodes;
    on failure the scene is left as it was."""
    before = nodes.nodeIDs()
    try:
        heatMaps = ((name, outputs.heat_map(name)) for name in outputs.heat_map_names())
        results = nodes.addOutputs(inputVolumeNode, outputs.record, heatMaps, outputs.labels())
    except Exception:
        nodes.removeNodesAddedSince(before)
        raise
    nodes.replaceOutputs(inputVolumeNode, results)
    return results


class CTExplainRun:
    """A run of the core in a child process. Poll it from a timer (or ``wait()``); on success
    ``outputs`` is what ``process(wait=True)`` returns, on failure ``error`` says why, and the
    scene is left exactly as it was. ``cancel()`` kills the child's whole process tree.
    """

    def __init__(self, inputVolumeNode, volume, classifier: Optional[str], segmenter: Optional[str], method: str,
                 device: str, progress: Optional[Progress]) -> None:
        """Starts ``ctexplain`` on ``volume`` (the core Volume of ``inputVolumeNode``)."""
        import slicer
        from CTExplainLib.background import BackgroundExplain

        self.inputVolumeNode = inputVolumeNode
        self.progress = progress
        self.outputs: Optional[Dict[str, Any]] = None
        self.error: Optional[str] = None
        self.finished = False
        self.cancelled = False
        self.job = BackgroundExplain(volume, classifier=classifier, segmenter=segmenter, method=method, device=device,
                                     python=pythonExecutable(),
                                     temp_root=os.path.join(slicer.app.temporaryPath, "CTExplain"),
                                     progress=self.onChildProgress)
        self.job.start()
        self.tempFolder = self.job.folder

    @property
    def pid(self) -> Optional[int]:
        return self.job.pid

    @property
    def running(self) -> bool:
        return not self.finished

    def _report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)

    def onChildProgress(self, stage: str, fraction: float) -> None:
        if stage != "done":  # the child's end is not the run's end: its files are still to load
            self._report(stage, SCENE_FRACTION * fraction)

    def poll(self) -> bool:
        """True once the run has ended (done, failed or cancelled); never blocks on the child."""
        if self.finished:
            return True
        if not self.job.poll():
            return False
        try:
            if self.job.error is not None:
                self.error = self.job.error
            elif self.inputVolumeNode.GetScene() is None:
                self.error = "CTExplain: the input volume was removed from the scene during the run"
            else:
                self._report("scene", SCENE_FRACTION)
                self.outputs = placeOutputs(self.inputVolumeNode, self.job.outputs)
                self._report("done", 1.0)
        except Exception as exc:  # the scene is already back as it was (see placeOutputs)
            LOG.exception("CTExplain: could not load the results")
            self.error = f"CTExplain: could not load the results: {exc}"
        finally:
            self.job.cleanup()
            self.finished = True
        return True

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the run ends; True if it succeeded."""
        from CTExplainLib.background import poll_until

        poll_until(self.poll, timeout, lambda: TimeoutError(f"CTExplain: the run did not end within {timeout} s"))
        return self.error is None

    def cancel(self) -> None:
        """Kill the child process tree; nothing is added to the scene; the temporary folder goes."""
        if self.finished:
            return
        self.job.cancel()
        self.cancelled, self.finished, self.error = True, True, "cancelled"
