"""U-Net segmentation onto the input's grid.

The network runs with MONAI's sliding-window inference on a model grid that covers the
whole CT; the per-segment probabilities are resampled in physical space onto the input grid
and arg-maxed slice by slice (or slab by slab where SimpleITK resamples), so the only
input-sized array is the label map, whatever the number of segments.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from .devices import autocast, with_cpu_fallback
from .model_package import ClassSpec, InputSpec, LoadedModel
from .preprocess import ModelInput, preprocess
from .resample import SeparablePlan, image_on_grid, resample_image_to_array, slabs
from .volume import Grid, Volume, image_backed_array
from .writing import SegmentInfo

SW_OVERLAP = 0.25


@dataclass
class Segmentation:
    labels: Volume  # integer label map on the input grid
    segments: List[SegmentInfo]  # without background (label 0)
    warnings: List[str] = field(default_factory=list)


SLICES_PER_PASS = 16  # 2D models: axial slices through the network at a time


def _window_probabilities(network: torch.nn.Module, inputs: torch.Tensor, roi: tuple, sw_batch_size: int, device: torch.device, spec: InputSpec) -> torch.Tensor:
    """Softmax over segments of MONAI's sliding-window logits of a batch (N, C, ...), on the CPU,
    with the windows' overlap, blending and padding of the model's input spec."""
    with torch.no_grad(), autocast(device):
        logits = sliding_window_inference(
            inputs.to(device), roi_size=roi, sw_batch_size=sw_batch_size, predictor=network,
            overlap=spec.window_overlap, mode=spec.window_blend, padding_mode=spec.window_padding,
        )
    return torch.softmax(logits.float(), dim=1).cpu()


def _probabilities(model: LoadedModel, model_input: ModelInput, device: torch.device) -> np.ndarray:
    """Softmax probabilities (segments, k, j, i) on the model grid."""
    metadata = model.metadata
    network = model.network.to(device)
    # The package gives the window size as (i, j[, k]); tensors are indexed (k, j, i).
    spatial = tuple(model_input.tensor.shape[-metadata.input.spatial_dims:])
    roi = tuple(reversed(metadata.input.size)) if metadata.input.size else spatial
    if metadata.input.spatial_dims == 3:
        return _window_probabilities(network, model_input.batch(), roi, 1, device, metadata.input)[0].numpy()
    # 2D: a few slices at a time into one (k, segments, j, i) array, so that neither the whole
    # CT as a batch of slices nor its logits are held next to the probabilities; each pass is
    # one contiguous copy, and the (segments, k, j, i) view of the result costs nothing.
    slices = model_input.tensor.shape[1]
    probabilities = np.empty((slices, len(metadata.classes)) + tuple(model_input.tensor.shape[2:]), dtype=np.float32)
    for start in range(0, slices, SLICES_PER_PASS):
        stop = min(start + SLICES_PER_PASS, slices)
        probabilities[start:stop] = _window_probabilities(network, model_input.slices(start, stop), roi, 4, device, metadata.input).numpy()
    return probabilities.transpose(1, 0, 2, 3)


SMALLEST_PART_SHARE = 0.1  # a part under this share of a segment's largest is never one of its organs


@dataclass(frozen=True)
class PartRules:
    """Anatomical priors on a segmenter's parts, one entry per segment (the background's unused):
    ``max_parts``, at most this many 3D connected parts; ``not_below``, the index of another
    segment that no part may lie wholly below (lungs reach above the bottom of the liver: a blob
    of gas in the pelvis is not lung); ``superior``, +1 where the model grid's k grows towards
    the head, -1 where it falls, 0 where k is not head-to-foot (``not_below`` then unused)."""

    max_parts: Sequence[Optional[int]]
    not_below: Sequence[Optional[int]] = ()
    superior: int = 1

    @classmethod
    def of(cls, names: Sequence[str], max_parts: Mapping[str, int], not_below: Mapping[str, str], direction: np.ndarray) -> "PartRules":
        """From per-name settings (a package's segments or a training recipe's) and the model grid's direction."""
        towards_head = float(np.asarray(direction)[2, 2])  # the LPS z (superior) part of the k axis
        return cls([max_parts.get(name) for name in names], [names.index(not_below[name]) if name in not_below else None for name in names],
                   int(np.sign(towards_head)) if abs(towards_head) > 0.5 else 0)

    def limited(self) -> List[Tuple[int, Optional[int], Optional[int]]]:
        below = list(self.not_below) + [None] * (len(self.max_parts) - len(self.not_below))
        return [(index, most, below[index] if self.superior else None)
                for index, most in enumerate(self.max_parts) if index > 0 and (most or (below[index] is not None and self.superior))]


def _wholly_below(parts: sitk.Image, reference: np.ndarray, superior: int) -> List[int]:
    """The labels of ``parts`` whose every slice lies below (towards the feet of) every slice of ``reference``."""
    slices = np.flatnonzero(reference.any(axis=(1, 2)))
    if slices.size == 0:
        return []
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(parts)
    below = []
    for label in shapes.GetLabels():
        box = shapes.GetBoundingBox(label)  # (i, j, k, size i, size j, size k)
        first, last = box[2], box[2] + box[5] - 1
        if (superior > 0 and last < slices[0]) or (superior < 0 and first > slices[-1]):
            below.append(label)
    return below


def keep_largest_parts(probabilities: np.ndarray, rules: PartRules) -> None:
    """In place: for each segment with a ``max_parts`` entry, the voxels it wins (arg-max, first
    segment on ties, as :func:`labels_on_grid`) outside its largest ``max_parts`` 3D connected
    parts, or in parts smaller than SMALLEST_PART_SHARE of its largest, get probability 0 for
    it, so that the next best segment takes them; so do the parts of a segment with a
    ``not_below`` entry that lie wholly below every voxel the other segment wins.

    Anatomical priors (two lungs, one liver, lungs above the bottom of the liver): a 2D network
    sees each slice alone and may take gas in a bowel loop below the lungs for lung, a blob no
    lung is connected to. Done on the model grid, whose probabilities are at hand and smaller
    than the input's.

    Repeated until no segment loses a voxel: a voxel one segment loses goes to its runner-up,
    which may be another limited segment (a stray liver part in the pelvis whose second best is
    lung), and what that segment gains is held to its own limit in the next round. Each round
    that changes anything zeroes at least one positive probability, so the rounds end.
    """
    limited = rules.limited()
    if not limited:
        return
    winners = np.empty(probabilities.shape[1:], dtype=np.uint16)
    changed = True
    while changed:
        changed = False
        for start, stop, winner, _ in _leaders(probabilities, winners.dtype):
            winners[start:stop] = winner
        for index, most, reference in limited:
            relabel = sitk.RelabelComponentImageFilter()  # parts numbered from the largest down
            parts = relabel.Execute(sitk.ConnectedComponent(sitk.GetImageFromArray((winners == index).view(np.uint8))))
            sizes = relabel.GetSizeOfObjectsInPixels()
            kept = len(sizes) if not most else sum(1 for size in sizes[:most] if size >= SMALLEST_PART_SHARE * sizes[0])
            labels = sitk.GetArrayViewFromImage(parts)
            drop = labels > kept
            if reference is not None:
                for label in _wholly_below(parts, winners == reference, rules.superior):
                    drop |= labels == label
            if drop.any():
                probabilities[index][drop] = 0.0
                changed = True
            del labels, parts  # the view above must not outlive its image


def part_rules(classes: Sequence[ClassSpec], direction: np.ndarray) -> PartRules:
    """A package's rules on its segments' parts, on a model grid of ``direction``."""
    names = [c.name for c in classes]
    return PartRules.of(names, {c.name: c.max_parts for c in classes if c.max_parts},
                        {c.name: c.not_below for c in classes if c.not_below}, direction)


def _leaders(probabilities: np.ndarray, dtype: np.dtype) -> Iterator[Tuple[int, int, np.ndarray, np.ndarray]]:
    """(start, stop, winner, lead) for slices [start, stop) of the model grid, a few at a time:
    the winning segment (the first of equals, as an arg-max) and its lead over the runner-up
    (infinite for a single segment). Segment by segment: an arg-max or a sort along the
    segments of this strided array took several times longer."""
    for start in range(0, probabilities.shape[1], SLICES_PER_PASS):
        chunk = probabilities[:, start : start + SLICES_PER_PASS]
        first, second = chunk[0].copy(), np.full(chunk.shape[1:], -np.inf, dtype=chunk.dtype)
        winner = np.zeros(chunk.shape[1:], dtype=dtype)
        for index in range(1, len(chunk)):
            better = chunk[index] > first
            np.maximum(second, np.where(better, first, chunk[index]), out=second)
            np.copyto(first, chunk[index], where=better)
            winner[better] = index
        yield start, start + chunk.shape[1], winner, first - second


def labels_on_grid(probabilities: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """Arg-max over segments of the probabilities resampled (linearly) onto ``target``.

    Each segment's probabilities are resampled to float32 as SimpleITK's ``Resample`` gives
    them (outside the model grid: 1 for the background, 0 for the others), and the first
    segment with the largest value wins. The label map's memory is a SimpleITK image's, so
    writing it needs no copy (see :func:`~CTExplainLib.volume.image_backed_array`).
    """
    dtype = np.uint8 if len(probabilities) < 256 else np.uint16
    labels = image_backed_array(target, dtype)
    plan = SeparablePlan.of(source, target)
    if plan is None:
        _labels_by_slabs(probabilities, source, target, labels)
        return labels
    # Axis-parallel grids, one target slice at a time. A target voxel whose model-grid
    # neighbours all have the same clear winner keeps it (its values are weighted means of
    # values in which the winner leads by SETTLED_MARGIN, far above float32 rounding); only the
    # voxels near a boundary between segments are interpolated, exactly as SimpleITK would.
    unsettled = np.iinfo(dtype).max
    settled = _settled_winners(probabilities, dtype)
    for k in range(target.size[2]):
        if not plan.k.inside[k]:
            continue  # outside the model grid: background, as the image was created
        slice_labels = labels[k]
        slice_labels[...] = settled[plan.k.lower[k]][np.ix_(plan.j.lower, plan.i.lower)]
        slice_labels[~plan.j.inside, :] = 0  # outside: the background's 1 beats the others' 0
        slice_labels[:, ~plan.i.inside] = 0
        rows, columns = np.nonzero(slice_labels == unsettled)
        if rows.size:
            best = plan.linear_values_at(probabilities[0], k, rows, columns, 1.0)
            chosen = np.zeros(rows.size, dtype=dtype)
            for index in range(1, len(probabilities)):
                candidate = plan.linear_values_at(probabilities[index], k, rows, columns, 0.0)
                chosen[candidate > best] = index  # the first segment with the largest value wins
                np.maximum(best, candidate, out=best)
            slice_labels[rows, columns] = chosen
    return labels


SETTLED_MARGIN = 1e-4  # lead of a model-grid winner that no interpolation or rounding overturns


def _settled_winners(probabilities: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """On the model grid: the segment that wins by more than SETTLED_MARGIN everywhere in the
    2x2x2 block of voxels from (k, j, i) on (the last voxels repeated along each far edge, as
    linear interpolation reads them), or the dtype's largest value where they disagree."""
    unsettled = np.iinfo(dtype).max
    settled = np.full(probabilities.shape[1:], unsettled, dtype=dtype)
    for start, stop, winner, lead in _leaders(probabilities, dtype):
        np.copyto(settled[start:stop], winner, where=lead > SETTLED_MARGIN)
    for axis in range(3):
        following = np.take(settled, np.minimum(np.arange(1, settled.shape[axis] + 1), settled.shape[axis] - 1), axis=axis)
        settled[settled != following] = unsettled
    return settled


def _labels_by_slabs(probabilities: np.ndarray, source: Grid, target: Grid, labels: np.ndarray) -> None:
    """:func:`labels_on_grid` by SimpleITK, slab by slab (memory: one slab per segment)."""
    channels = [image_on_grid(p, source) for p in probabilities]
    for start, stop in slabs(target):
        slab = target.slab(start, stop)
        best = resample_image_to_array(channels[0], slab, "linear", 1.0)  # outside the CT: background
        for index in range(1, len(channels)):
            candidate = resample_image_to_array(channels[index], slab, "linear", 0.0)
            better = candidate > best
            labels[start:stop][better] = index
            np.maximum(best, candidate, out=best)


def _no_stage(name: str) -> ContextManager[None]:
    return contextlib.nullcontext()


def _model_grid_probabilities(
    model: LoadedModel, volume: Volume, device: torch.device, stage: Callable[[str], ContextManager[None]], warnings: List[str]
) -> Tuple[np.ndarray, Grid]:
    """The probabilities on the model grid, and that grid; the network input dies on return,
    so it is not held next to the full-size label map."""
    with stage("preprocess"):
        model_input = preprocess(volume, model.metadata.input, crop=False)
    warnings.extend(model_input.warnings)
    with stage("segment"):
        probabilities = with_cpu_fallback(lambda d: _probabilities(model, model_input, d), device, warnings)
    return probabilities, model_input.grid


def segment(model: LoadedModel, volume: Volume, device: torch.device, stage: Callable[[str], ContextManager[None]] = _no_stage) -> Segmentation:
    """Label map of ``volume`` on its own grid; ``stage`` times "preprocess" (the CT onto the
    model grid), "segment" (the network's sliding-window inference) and "map labels"
    (probabilities to the input grid, arg-max) apart."""
    metadata = model.metadata
    if metadata.task != "segmentation":
        raise ValueError(f"{model.path}: is a {metadata.task} classifier, not a segmentation model")
    warnings: List[str] = []
    probabilities, grid = _model_grid_probabilities(model, volume, device, stage, warnings)
    with stage("map labels"):
        keep_largest_parts(probabilities, part_rules(metadata.classes, grid.direction))
        labels = labels_on_grid(probabilities, grid, volume.grid)
    segments = [SegmentInfo(index, c.name, tuple(c.color)) for index, c in enumerate(metadata.classes) if index > 0]
    return Segmentation(volume.with_array(labels, kind="labels", model=metadata.name), segments, warnings)
