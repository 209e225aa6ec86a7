"""Installing the core's missing Python packages inside Slicer, once, after one question.

- Under ``Slicer --testing`` ``slicer.util.confirmOkCancelDisplay`` answers **False** without
  showing anything (slicer-api.md section 1), so asking would silently install nothing and a
  self-test would then fail far from the cause. In testing mode CTExplain installs without
  asking, as SlicerPyTorch's ``PyTorchUtilsLogic.installTorch`` does
  (``askConfirmation and not testingEnabled``).
- torch is installed with light-the-torch (which picks the wheel for the machine's GPU driver),
  as ``PyTorchUtilsLogic.installTorch`` does, but for torch alone: that function asks again when
  ``askConfirmation`` is set and always adds ``torchvision`` to its arguments
  (``_getPipInstallArguments``: ``["install", "torch"+req, "torchvision"+req2]`` in every version
  of fepegar/SlicerPyTorch), which CTExplain does not use.
- Whatever is still missing afterwards raises :class:`MissingDependencies` naming it: no silent
  "nothing happened".
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

from CTExplainLib import dependencies
from CTExplainLib.errors import CTExplainError

LOG = logging.getLogger(__name__)
LIGHT_THE_TORCH = "light-the-torch>=0.5"  # what PyTorchUtils installs for the same job


class MissingDependencies(CTExplainError):
    """Packages the core needs are still not importable after installing them."""


def missingDependencies(requirements: Optional[Sequence[dependencies.Requirement]] = None) -> List[dependencies.Requirement]:
    """The core's Python packages that are not installed (found without importing them)."""
    return dependencies.missing(dependencies.REQUIREMENTS if requirements is None else requirements)


def installTorch(requirement: dependencies.Requirement) -> None:
    """torch alone through light-the-torch (``PythonSlicer -m light_the_torch install torch...``)."""
    import slicer

    slicer.util.pip_install(LIGHT_THE_TORCH)
    # The same call PyTorchUtilsLogic.installTorch makes, without "torchvision".
    slicer.util._executePythonModule("light_the_torch", ["install", requirement.pip])


def installDependencies(requirements: Optional[Sequence[dependencies.Requirement]] = None) -> bool:
    """Ask once (not in testing mode), then install what is missing. True when everything is
    there; False only when the user declined; raises MissingDependencies if installing failed."""
    import slicer

    missing = missingDependencies(requirements)
    if not missing:
        return True
    names = ", ".join(r.name for r in missing)
    if slicer.app.testingEnabled():
        LOG.info("CTExplain: testing mode, installing %s without asking", names)
    elif not slicer.util.confirmOkCancelDisplay(
            f"CTExplain needs Python packages that are not installed: {names}.\n\n"
            "Install them now? This downloads them and can take several minutes.", windowTitle="CTExplain"):
        LOG.info("CTExplain: installation of %s declined", names)
        return False
    torch, others = dependencies.split_torch(missing)
    if torch is not None:
        installTorch(torch)
    if others:
        slicer.util.pip_install([r.pip for r in others])
    still = missingDependencies(missing)
    if still:
        raise MissingDependencies(
            "CTExplain: still missing after installation: " + ", ".join(r.pip for r in still)
            + ". Install them from Slicer's Python console with slicer.util.pip_install([...]) and restart Slicer.")
    return True
