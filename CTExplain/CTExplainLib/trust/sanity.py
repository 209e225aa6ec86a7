"""Model sanity check for saliency maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

The network's layers are re-initialised one after the other, top (output) layers first,
each step keeping the layers randomised before it (cascading randomisation), and after each
step the class maps of the same cases are compared with the trained network's by Spearman's
rank correlation. A map that reflects what the model learnt must drift away from the trained
one as its layers lose their weights; a map that stays the same would be drawn just as well
by an untrained network (it shows the input, e.g. its edges, not the model).

Layers are the network's Conv and Linear modules, each with the normalisation layers that
follow it before the next one (their affine weights and running statistics are re-initialised
with it), in the order the network defines them, the last first. Re-initialisation is each
module's own ``reset_parameters`` (PyTorch's default initialisation), seeded.

Rule: a model "passes" when the mean correlation is below ``PASS_BELOW`` (0.5) at every step,
from its top layer alone randomised to all of them; otherwise its maps "barely change under
randomisation" (the steps say where: a map that stays when only the top layer is random
does not depend on the class weights it is meant to show).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..classify import classify_and_explain
from ..errors import CTExplainError
from ..loading import load_volume
from ..model_package import LoadedModel
from ..points.crop import PointError, crop_input
from ..points.outline import outline_nodule
from ..preprocess import ModelInput, preprocess
from ..volume import Volume

PASS_BELOW = 0.5
PASSES = "passes"
FAILS = "maps barely change under randomisation"
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
SEED = 0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their mean rank (as scipy.stats.rankdata, less one; SciPy is
    no dependency of the core). CAMs after ReLU hold many equal zeros, so ties matter."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of one shape; 0 where either is constant (a
    constant map orders nothing, so it shares no order with the other)."""
    ra, rb = average_ranks(np.ravel(a)), average_ranks(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def layer_groups(network: nn.Module) -> List[Tuple[str, List[nn.Module]]]:
    """The network's weight layers, each with the parameterised non-weight layers (norms) after
    it, in definition order; named by the weight layer."""
    groups: List[Tuple[str, List[nn.Module]]] = []
    for name, module in network.named_modules():
        if next(module.children(), None) is not None or not hasattr(module, "reset_parameters"):
            continue
        if isinstance(module, WEIGHT_LAYERS) or not groups:
            groups.append((name, [module]))
        else:
            groups[-1][1].append(module)
    return groups


def cascade(network: nn.Module, seed: int = SEED) -> Iterator[Tuple[str, nn.Module]]:
    """A copy of ``network`` with its top layer randomised, then also the next, and so on
    (yielded after each step, with the layer just randomised; the same copy each time)."""
    randomised = copy.deepcopy(network).eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for name, modules in reversed(layer_groups(randomised)):
            for module in modules:
                module.reset_parameters()
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
            yield name, randomised
    finally:
        torch.random.set_rng_state(generator_state)


@dataclass
class SanityStep:
    layer: str  # the layer randomised at this step (and every one listed before it)
    layers_randomised: int
    spearman_mean: float
    spearman_sd: float
    spearman_per_case: List[float]  # mean over classes, per case

    def to_dict(self) -> Dict[str, object]:
        record = dataclasses.asdict(self)
        record["spearman_mean"] = round(self.spearman_mean, 4)
        record["spearman_sd"] = round(self.spearman_sd, 4)
        record["spearman_per_case"] = [round(v, 4) for v in self.spearman_per_case]
        return record


@dataclass
class SanityResult:
    steps: List[SanityStep]
    verdict: str
    method: str
    cases: List[str]

    def to_dict(self) -> Dict[str, object]:
        return {
            "method": "cascading randomisation, top layers first (Adebayo et al. 2018); Spearman rank correlation of "
                      f"the {self.method} maps of every class with the trained network's",
            "cam_method": self.method,
            "rule": f"passes when the mean correlation is below {PASS_BELOW} at every step",
            "verdict": self.verdict,
            "cases": list(self.cases),
            "steps": [s.to_dict() for s in self.steps],
        }


def _maps(model: LoadedModel, inputs: Sequence[ModelInput], method: str, device: torch.device) -> List[np.ndarray]:
    return [classify_and_explain(model, model_input, method, device).maps for model_input in inputs]


def check_model(model: LoadedModel, inputs: Sequence[ModelInput], case_names: Sequence[str], method: str = "gradcam",
                device: torch.device = torch.device("cpu"), seed: int = SEED) -> SanityResult:
    """The cascading randomisation check of ``model`` on preprocessed cases ``inputs``."""
    trained = _maps(model, inputs, method, device)
    steps: List[SanityStep] = []
    for count, (layer, network) in enumerate(cascade(model.network, seed), start=1):
        randomised = _maps(dataclasses.replace(model, network=network), inputs, method, device)
        per_case = [float(np.mean([spearman(t[c], r[c]) for c in range(t.shape[0])])) for t, r in zip(trained, randomised)]
        steps.append(SanityStep(layer, count, float(np.mean(per_case)), float(np.std(per_case)), per_case))
    verdict = PASSES if steps and all(step.spearman_mean < PASS_BELOW for step in steps) else FAILS
    return SanityResult(steps, verdict, method, list(case_names))


def format_result(name: str, result: SanityResult) -> str:
    """The table ``ctexplain check-model`` prints."""
    lines = [f"{name}: {result.method} maps vs the trained network's (Spearman), layers randomised top first",
             f"{'step':>4}  {'layer randomised':32s} {'mean':>7} {'sd':>6}  per case"]
    for step in result.steps:
        cases = " ".join(f"{v:+.3f}" for v in step.spearman_per_case)
        lines.append(f"{step.layers_randomised:4d}  {step.layer:32s} {step.spearman_mean:+7.3f} {step.spearman_sd:6.3f}  {cases}")
    lines.append(f"verdict: {result.verdict} ({result.to_dict()['rule']})")
    return "\n".join(lines)


def case_input(model: LoadedModel, volume: Volume, segmenter: Optional[LoadedModel], device: torch.device) -> ModelInput:
    """The network input of one case as the core builds it: the whole CT preprocessed, or for a
    point model (``input.crop``) the box its crop policy cuts at the image's centre, around
    ``segmenter``'s outline there for a nodule crop: the cases of a point model are nodule
    crops, the kind of image it was trained on, with the nodule at their centre."""
    spec = model.metadata.input
    if spec.crop is None:
        return preprocess(volume, spec)
    centre = volume.grid.index_to_point((np.asarray(volume.grid.size) - 1) / 2.0)
    outline = None
    if spec.crop.mode == "nodule":
        if segmenter is None:
            raise CTExplainError(f"{model.path}: model {model.metadata.name} cuts its input around the nodule's outline: "
                                 "give the point segmenter that outlines it (--segmenter)")
        outline = outline_nodule(segmenter, volume, centre, device)
    return crop_input(volume, spec, centre, outline).model_input


def check_files(model: LoadedModel, cases: Sequence[Path], image_spacing: Optional[Sequence[float]] = None, method: str = "gradcam",
                device: torch.device = torch.device("cpu"), seed: int = SEED, segmenter: Optional[LoadedModel] = None) -> SanityResult:
    """:func:`check_model` on CT files or folders, each loaded and made into the network's input
    as the core does (:func:`case_input`)."""
    spacing = tuple(float(s) for s in image_spacing) if image_spacing else None
    inputs = []
    for case in cases:
        try:
            inputs.append(case_input(model, load_volume(case, image_spacing=spacing), segmenter, device))
        except PointError as exc:
            raise CTExplainError(f"{case}: {exc}") from exc
    return check_model(model, inputs, [str(case) for case in cases], method, device, seed)


def sanity_record(result: SanityResult, cases: Sequence[str], note: Optional[str] = None) -> Dict[str, object]:
    """The ``sanity_check`` field of a package's metadata: the result, its cases named as given
    (and ``note``, how they were made)."""
    record = result.to_dict()
    record["cases"] = list(cases)
    if note:
        record["cases_note"] = note
    return record
