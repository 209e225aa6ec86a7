"""Faithfulness of each class map: deletion and insertion curves on the model's own input grid.

**Deletion** (Petsiuk et al. 2018, "RISE"): the network input's voxels are replaced by a
baseline in the map's order, most important first, in ``steps`` equal steps, and the class
probability is recorded after each; a map that follows the model's evidence makes it fall
fast (a small area under the curve). **Insertion**: the input's voxels are put back into the
baseline in the same order; the probability should rise fast (a large area). The same curves
with the voxels in random order (``seeds`` orders) are the reference. Areas are over the
fraction perturbed (0..1) times the probability (0..1), by the trapezoid rule.

**Baseline: the model's background value**: each channel of the network input at its own
minimum, which is what air, and the outside of the body that some models blank, becomes
after the package's windows and normalisation (0 for HU windows, the darkest level after
histogram equalisation, the z-score of air after "image" normalisation). One baseline for
both curves, so deletion ends where insertion starts. A blurred input (sigma 6 mm) was tried first and
not kept: on the sample head CT the head model's "any haemorrhage" deletion and insertion
areas stayed at 0.86-0.90 for the map's order and random orders alike, so blurring removes
too little of what these models use (coarse brightness) for the orders to differ (score
+0.02 versus +0.13 with the background value, same slice). Replacing blocks by air is itself unlike any training image,
which is why the random orders, perturbed the same way, are the reference.

**Score** = ((random deletion area - deletion area) + (insertion area - random insertion
area)) / 2, in probability x fraction units: 0 for a map no better than a random order,
positive when the map's order changes the probability faster than random orders do (at most
1), negative when slower. **Verdict**: "faithful" when score >= ``FAITHFUL_MARGIN`` (0.05)
and score exceeds the spread of the random orders themselves (the largest minus the
smallest per-seed score of the random orders against their mean); otherwise "no better than
random" (which includes a model whose probability barely moves under any perturbation).

**Cost.** Voxels are perturbed in cubes (squares for 2D) of ``block`` voxels, ranked by the
map interpolated onto the block grid (CAMs live on the target layer's grid, far coarser than
any block). Every perturbed input of every class, step and random order is stacked into
batches; the random orders are shared by all classes (one forward gives every class's
score). A 3D model costs (findings + seeds) x 2 x (steps - 1) + 2 network inputs; a 2D slice
model does this on each finding's key slices (those of most map energy), sharing a slice's
random orders among the findings whose key slice it is.

**Libraries.** Quantus' PixelFlipping / RegionPerturbation compute a deletion curve for one
sample and one class at a time, one forward per step over 2D numpy images; Captum has no
deletion or insertion curve (its infidelity and sensitivity are other measures). Neither
batches classes or steps, which is the whole cost on a 3D CT, and Quantus would bring OpenCV,
scikit-image and pandas into Slicer's Python. So the curves are computed here, and tested
against a straightforward loop of one forward per class and step, and against Quantus'
PixelFlipping on a small 2D case (``Testing/test_faithfulness.py``; Quantus is a test
dependency only).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import autocast, with_cpu_fallback
from ..model_package import LoadedModel
from ..montage import key_slices
from .choices import DEFAULT_FAITHFULNESS, FAITHFULNESS_CHOICES

if TYPE_CHECKING:  # classify imports the preprocessing (SimpleITK, MONAI transforms): not needed for the curves
    from ..classify import Classification

FAITHFUL_MARGIN = 0.05
FAITHFUL = "faithful"
NOT_BETTER = "no better than random"
SEED = 0

# A batch of network inputs (B, channels, *spatial) -> class probabilities (B, classes).
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Mode:
    name: str
    steps: int  # deletion/insertion steps; the curves have steps + 1 points
    seeds: int  # random orders
    block: int  # voxels per block edge
    key_slices: int  # 2D models: slices per finding
    chunk_3d: int = 4  # network inputs per batch
    chunk_2d: int = 64


MODES: Dict[str, Mode] = {
    "fast": Mode("fast", steps=8, seeds=2, block=4, key_slices=1),
    "full": Mode("full", steps=16, seeds=5, block=2, key_slices=3),
}
# "auto" (choices.py), the default of ``ctexplain explain`` and the Slicer module, chosen by measured cost:
# fast for 2D slice models, where it perturbs a few key slices (on the sample head CT about
# five times the classifier's own pass over all 25 slices), fast for point models, whose input
# is a small crop (32x32x16 for the nodule models: milliseconds), off for 3D models, where every
# perturbed input is a whole volume ((findings + 2) x 14 + 2 network inputs: 282, about 187 forward
# passes for 18 findings at 128x128x64, bench/bench_faithfulness.py); ask for fast or full to have them.
AUTO = "auto"
CHOICES = FAITHFULNESS_CHOICES
DEFAULT = DEFAULT_FAITHFULNESS
assert CHOICES == (AUTO, "off") + tuple(MODES) and DEFAULT == AUTO


def resolve_mode(mode_name: str, spatial_dims: int, at_point: bool = False) -> str:
    """The mode ``mode_name`` means for a model of ``spatial_dims``: "auto" -> fast for 2D models
    and for point models (``at_point``: their input is a small crop), off for whole-volume 3D."""
    if mode_name not in CHOICES:
        raise ValueError(f"faithfulness must be one of {', '.join(CHOICES)}, got {mode_name!r}")
    if mode_name == AUTO:
        return "fast" if spatial_dims == 2 or at_point else "off"
    return mode_name


def resolve_for(mode_name: str, model: LoadedModel) -> str:
    """:func:`resolve_mode` for a loaded classifier."""
    spec = model.metadata.input
    return resolve_mode(mode_name, spec.spatial_dims, spec.crop is not None)


@dataclass
class Areas:
    """One image's areas for one class (random: one per seed) and its two curves."""

    deletion: float
    insertion: float
    random_deletion: List[float]
    random_insertion: List[float]
    deletion_curve: List[float]
    insertion_curve: List[float]


@dataclass
class Faithfulness:
    """A finding's faithfulness record, as result.json holds it."""

    mode: str
    score: float
    verdict: str
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    random_spread: float
    steps: int
    seeds: int
    block_voxels: int
    deletion_curve: List[float]
    insertion_curve: List[float]
    slices: Optional[List[int]] = None  # 2D models: the model-grid slices it was measured on

    def to_dict(self) -> Dict[str, object]:
        record = asdict(self)
        for key, value in record.items():
            if isinstance(value, float):
                record[key] = round(value, 4)
            elif isinstance(value, list) and value and isinstance(value[0], float):
                record[key] = [round(v, 4) for v in value]
        return record

    def caption(self) -> str:
        return caption(self.to_dict())


def caption(record: Dict[str, object]) -> str:
    """The montage's line for a finding's faithfulness record (result.json's, as ``to_dict`` gives
    it), so a montage drawn later from result.json (Slicer's batch mode) reads the same."""
    return (f"faithfulness ({record['mode']}): {record['verdict']}, score {record['score']:+.3f}  "
            f"deletion AUC {record['deletion_auc']:.3f} (random {record['random_deletion_auc']:.3f}), "
            f"insertion {record['insertion_auc']:.3f} (random {record['random_insertion_auc']:.3f})")


def verdict(score: float, spread: float) -> str:
    """The rule of the module docstring."""
    return FAITHFUL if score >= max(FAITHFUL_MARGIN, spread) else NOT_BETTER


# --- the curves ------------------------------------------------------------------------------


def background(images: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """The baseline of ``images`` (B, C, *spatial): each image's channels at their own minimum,
    the value air (and the blanked outside of the body) has in the network's input."""
    low = images.flatten(2).amin(dim=2)
    return low.reshape(low.shape + (1,) * spatial_dims).expand_as(images).clone()


def block_grid(spatial: Sequence[int], block: int) -> tuple:
    return tuple(int(math.ceil(s / block)) for s in spatial)


def map_ranks(maps: torch.Tensor, shape: Sequence[int], seed: int = SEED) -> torch.Tensor:
    """Each block's place (0 = most important) in the order of each map of ``maps`` (M, *F),
    the maps interpolated onto the block grid ``shape``. Equal values (a map flat over a region,
    zeros after the ReLU) are ordered at random (seeded), not in raster order, which would
    favour whatever lies at the top of the image."""
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    values = F.interpolate(maps[:, None].float(), size=tuple(shape), mode=mode, align_corners=False)[:, 0].flatten(1)
    shuffle = torch.randperm(values.shape[1], generator=torch.Generator().manual_seed(seed))
    return _ranks(shuffle[torch.argsort(-values[:, shuffle], dim=1, stable=True)], shape)


def random_ranks(count: int, shape: Sequence[int], seed: int = SEED) -> torch.Tensor:
    """``count`` random orders of the blocks of ``shape``, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape))
    return _ranks(torch.stack([torch.randperm(n, generator=generator) for _ in range(count)]), shape)


def _ranks(order: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return ranks.reshape((order.shape[0],) + tuple(shape))


def step_counts(n_blocks: int, steps: int) -> List[int]:
    """How many blocks are perturbed at each inner step 1..steps-1."""
    return [int(round(s * n_blocks / steps)) for s in range(1, steps)]


def perturbed(image: torch.Tensor, baseline: torch.Tensor, chosen: torch.Tensor, block: int, deletion: bool) -> torch.Tensor:
    """``image`` (C, *S) with the voxels of the ``chosen`` blocks (bool, block grid) taken from
    ``baseline`` (deletion), or ``baseline`` with those voxels taken from ``image`` (insertion)."""
    mask = chosen
    for axis in range(mask.ndim):
        mask = mask.repeat_interleave(block, dim=axis)
    mask = mask[tuple(slice(0, s) for s in image.shape[1:])]
    return torch.where(mask, baseline, image) if deletion else torch.where(mask, image, baseline)


def perturbation_curves(forward: Forward, image: torch.Tensor, baseline: torch.Tensor, ranks: torch.Tensor, steps: int, block: int,
                        chunk: int) -> torch.Tensor:
    """Deletion and insertion curves of every order of ``ranks`` (O, *blocks): (2, O, steps + 1,
    classes), all classes' probabilities at each point; [0] deletion, [1] insertion. All
    perturbed inputs go through ``forward`` in batches of ``chunk``."""
    counts = step_counts(ranks[0].numel(), steps)
    items = [(o, k, deletion) for o in range(ranks.shape[0]) for k in counts for deletion in (True, False)]
    ends = forward(torch.stack([image, baseline]))  # (2, classes): the curves' shared end points
    scores = []
    for start in range(0, len(items), chunk):
        batch = [perturbed(image, baseline, ranks[o] < k, block, deletion) for o, k, deletion in items[start : start + chunk]]
        scores.append(forward(torch.stack(batch)))
    inner = torch.cat(scores).reshape(ranks.shape[0], steps - 1, 2, -1) if items else ends.new_zeros((ranks.shape[0], 0, 2, ends.shape[1]))
    first = ends[0].expand(ranks.shape[0], 1, -1)
    last = ends[1].expand(ranks.shape[0], 1, -1)
    deletion = torch.cat([first, inner[:, :, 0], last], dim=1)
    insertion = torch.cat([last, inner[:, :, 1], first], dim=1)
    return torch.stack([deletion, insertion])


def area(curve: torch.Tensor) -> torch.Tensor:
    """Area under curves sampled at equal steps over the fraction 0..1 (last axis)."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def image_areas(forward: Forward, image: torch.Tensor, baseline: torch.Tensor, maps: Sequence[Tuple[int, torch.Tensor]], mode: Mode,
                chunk: int, seed: int = SEED) -> List[Areas]:
    """Areas of each (class, map) of ``maps`` (maps on a coarse grid of ``image``'s extent) on
    one network input ``image`` (C, *S), with ``mode.seeds`` random orders shared by all."""
    shape = block_grid(image.shape[1:], mode.block)
    ranks = torch.cat([map_ranks(torch.stack([m for _, m in maps]), shape), random_ranks(mode.seeds, shape, seed)])
    curves = perturbation_curves(forward, image, baseline, ranks, mode.steps, mode.block, chunk)
    areas = area(curves.permute(0, 1, 3, 2))  # (2, orders, classes)
    return [
        Areas(
            deletion=float(areas[0, index, c]),
            insertion=float(areas[1, index, c]),
            random_deletion=areas[0, len(maps):, c].tolist(),
            random_insertion=areas[1, len(maps):, c].tolist(),
            deletion_curve=curves[0, index, :, c].tolist(),
            insertion_curve=curves[1, index, :, c].tolist(),
        )
        for index, (c, _) in enumerate(maps)
    ]


def summarise(parts: Sequence[Areas], mode: Mode, slices: Optional[List[int]] = None) -> Faithfulness:
    """One finding's record from its areas on one image (3D) or several key slices (averaged)."""
    mean = lambda values: float(np.mean(values))  # noqa: E731
    deletion, insertion = mean([p.deletion for p in parts]), mean([p.insertion for p in parts])
    random_deletion = np.mean([p.random_deletion for p in parts], axis=0)  # per seed
    random_insertion = np.mean([p.random_insertion for p in parts], axis=0)
    rd, ri = float(random_deletion.mean()), float(random_insertion.mean())
    score = ((rd - deletion) + (insertion - ri)) / 2.0
    seed_scores = ((rd - random_deletion) + (random_insertion - ri)) / 2.0
    spread = float(seed_scores.max() - seed_scores.min())
    return Faithfulness(
        mode=mode.name, score=score, verdict=verdict(score, spread), deletion_auc=deletion, insertion_auc=insertion,
        random_deletion_auc=rd, random_insertion_auc=ri, random_spread=spread, steps=mode.steps, seeds=mode.seeds,
        block_voxels=mode.block, deletion_curve=np.mean([p.deletion_curve for p in parts], axis=0).tolist(),
        insertion_curve=np.mean([p.insertion_curve for p in parts], axis=0).tolist(), slices=slices,
    )


# --- a model's maps ---------------------------------------------------------------------------


def network_forward(network: torch.nn.Module, task: str, device: torch.device) -> Forward:
    """The probabilities a loaded (eval-mode) network gives a batch, on ``device``, returned on the CPU."""

    from ..classify import probabilities_from_logits

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(device):
            return probabilities_from_logits(network(batch.to(device)), task).float().cpu()

    return forward


def volume_faithfulness(forward: Forward, inputs: torch.Tensor, maps: torch.Tensor, findings: Sequence[int], spatial_dims: int,
                        mode_name: str, slices: Optional[Dict[int, List[int]]] = None) -> Dict[int, Faithfulness]:
    """Faithfulness of the maps of ``findings``.

    ``inputs`` is the network input on the model grid (channels, k, j, i); ``maps`` the class
    maps (classes, k', j', i') on the target layer's grid (k' = k for 2D slice models). A 3D
    model is measured on its one input; a 2D model on each finding's ``mode.key_slices`` key
    slices (or those ``slices`` gives), the findings sharing a slice perturbed in one set of
    batches.
    """
    mode = MODES[mode_name]
    findings = list(findings)
    if not findings:
        return {}
    if spatial_dims == 3:
        areas = image_areas(forward, inputs, background(inputs[None], 3)[0], [(c, maps[c]) for c in findings], mode, mode.chunk_3d)
        return {c: summarise([found], mode) for c, found in zip(findings, areas)}
    chosen = {c: (slices or {}).get(c) or key_slices(maps[c].numpy(), mode.key_slices) for c in findings}
    by_slice: Dict[int, List[int]] = defaultdict(list)
    for c in findings:
        for k in chosen[c]:
            by_slice[k].append(c)
    parts: Dict[int, List[Areas]] = defaultdict(list)
    for k in sorted(by_slice):
        image = inputs[:, k]
        areas = image_areas(forward, image, background(image[None], 2)[0], [(c, maps[c, k]) for c in by_slice[k]], mode, mode.chunk_2d)
        for c, found in zip(by_slice[k], areas):
            parts[c].append(found)
    return {c: summarise(parts[c], mode, chosen[c]) for c in findings}


def measure(model: LoadedModel, inputs: torch.Tensor, classification: "Classification", findings: Sequence[int], mode_name: str,
            device: torch.device) -> Dict[int, Faithfulness]:
    """:func:`volume_faithfulness` of a classification's maps (``mode_name`` as :func:`resolve_mode`; off: none), the
    network on ``device`` (the CPU if CUDA runs out of memory, with a warning in the
    classification's warnings)."""
    metadata = model.metadata
    mode_name = resolve_for(mode_name, model)
    if mode_name == "off":
        return {}
    maps = torch.from_numpy(classification.maps)

    def run(target: torch.device) -> Dict[int, Faithfulness]:
        forward = network_forward(model.network.to(target), metadata.task, target)
        return volume_faithfulness(forward, inputs, maps, findings, metadata.input.spatial_dims, mode_name)

    return with_cpu_fallback(run, device, classification.warnings)
