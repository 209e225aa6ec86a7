"""U-Net segmentation onto the input's grid.

The network runs with MONAI's sliding-window inference on a model grid that covers the
whole CT; the per-segment probabilities are resampled in physical space onto the input grid
one at a time, keeping a running arg-max, so memory stays at two input-sized arrays
whatever the number of segments.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, List

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from .devices import autocast, with_cpu_fallback
from .model_package import LoadedModel
from .preprocess import ModelInput, preprocess
from .resample import image_on_grid, resample_image_to_array, slabs
from .volume import Grid, Volume
from .writing import SegmentInfo

SW_OVERLAP = 0.25


@dataclass
class Segmentation:
    labels: Volume  # integer label map on the input grid
    segments: List[SegmentInfo]  # without background (label 0)
    warnings: List[str] = field(default_factory=list)


def _probabilities(model: LoadedModel, model_input: ModelInput, device: torch.device) -> np.ndarray:
    """Softmax probabilities (segments, k, j, i) on the model grid."""
    spec = model.metadata.input
    network = model.network.to(device)
    is_2d = spec.spatial_dims == 2
    inputs = model_input.slices() if is_2d else model_input.batch()
    # The package gives the window size as (i, j[, k]); tensors are indexed (k, j, i).
    roi = tuple(reversed(spec.size)) if spec.size else tuple(inputs.shape[2:])
    with torch.no_grad(), autocast(device):
        logits = sliding_window_inference(
            inputs.to(device), roi_size=roi, sw_batch_size=4 if is_2d else 1, predictor=network, overlap=SW_OVERLAP, mode="gaussian"
        )
    probabilities = torch.softmax(logits.float(), dim=1).cpu()
    if is_2d:
        probabilities = probabilities.permute(1, 0, 2, 3)  # (slices, segments, j, i) -> (segments, k, j, i)
    else:
        probabilities = probabilities[0]
    return probabilities.numpy()


def labels_on_grid(probabilities: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """Arg-max over segments of the probabilities resampled (linearly) onto ``target``.

    Slab by slab, so memory holds the label map plus one slab per segment.
    """
    channels = [image_on_grid(p, source) for p in probabilities]
    labels = np.zeros(target.shape, dtype=np.uint8 if len(channels) < 256 else np.uint16)
    for start, stop in slabs(target):
        slab = target.slab(start, stop)
        best = resample_image_to_array(channels[0], slab, "linear", 1.0)  # outside the CT: background
        for index in range(1, len(channels)):
            candidate = resample_image_to_array(channels[index], slab, "linear", 0.0)
            better = candidate > best
            labels[start:stop][better] = index
            np.maximum(best, candidate, out=best)
    return labels


def _no_stage(name: str) -> ContextManager[None]:
    return contextlib.nullcontext()


def segment(model: LoadedModel, volume: Volume, device: torch.device, stage: Callable[[str], ContextManager[None]] = _no_stage) -> Segmentation:
    """Label map of ``volume`` on its own grid; ``stage`` times "segment" (preprocessing and the
    network) apart from "map labels" (probabilities to the input grid, arg-max)."""
    metadata = model.metadata
    if metadata.task != "segmentation":
        raise ValueError(f"{model.path}: is a {metadata.task} classifier, not a segmentation model")
    with stage("segment"):
        model_input = preprocess(volume, metadata.input, crop=False)
        warnings: List[str] = list(model_input.warnings)
        probabilities = with_cpu_fallback(lambda d: _probabilities(model, model_input, d), device, warnings)
    with stage("map labels"):
        labels = labels_on_grid(probabilities, model_input.grid, volume.grid)
    segments = [SegmentInfo(index, c.name, tuple(c.color)) for index, c in enumerate(metadata.classes) if index > 0]
    return Segmentation(volume.with_array(labels, kind="labels", model=metadata.name), segments, warnings)
