"""Classification and its explanation, from one forward pass.

The CAM pass already computes the network's scores, so probabilities come from it: sigmoid
for binary and multilabel models, softmax for multiclass ones. 2D models run slice by slice
over the volume; their per-slice probabilities are combined into a volume score by the rule
in the package, and their CAMs are stacked into a volume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch

from .cam import explain, normalise_maps
from .devices import autocast, with_cpu_fallback
from .model_package import LoadedModel, ModelMetadata
from .preprocess import ModelInput, feature_grid
from .resample import resample_array
from .volume import Grid

SLICE_BATCH = 16  # slices per batch for 2D networks: bounds memory on large volumes
# Heat maps on the input grid hold multiples of 1/HEAT_MAP_STEPS. A display colour table has
# 256 entries, so nothing visible is lost; full-resolution float32 maps with random low
# mantissa bits gzip to barely two thirds of their size and took twice as long to write as
# the rounded ones, which made writing the slowest stage of a large CT.
HEAT_MAP_STEPS = 1024


def round_to_steps(values: np.ndarray, steps: int = HEAT_MAP_STEPS) -> np.ndarray:
    """``values`` rounded in place to the nearest multiple of 1/``steps``; returns them."""
    np.multiply(values, steps, out=values)
    np.rint(values, out=values)
    np.divide(values, steps, out=values)
    return values


@dataclass
class Classification:
    """Scores and class maps of one volume; maps live on ``feature_grid`` until asked for."""

    class_names: List[str]
    probabilities: np.ndarray  # (classes,)
    maps: np.ndarray  # (classes, k, j, i) on feature_grid, each class scaled to [0, 1]
    raw_max: np.ndarray  # (classes,) maximum of each map before scaling
    feature_grid: Grid
    model_grid: Grid
    method: str
    slice_probabilities: Optional[np.ndarray] = None  # (slices, classes) for 2D models
    warnings: List[str] = field(default_factory=list)

    def heat_map(self, index: int, grid: Grid, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Class ``index``'s map resampled (linearly, in physical space) onto ``grid``, as float32
        multiples of 1/HEAT_MAP_STEPS; into ``out`` (float32, the grid's shape) if given, e.g. to
        reuse one buffer for every class."""
        return round_to_steps(resample_array(self.maps[index], self.feature_grid, grid, "linear", 0.0, out=out))


def probabilities_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    if task == "multiclass":
        return torch.softmax(logits.float(), dim=-1)
    return torch.sigmoid(logits.float())


def volume_score(slice_probabilities: np.ndarray, rule: str, k: int) -> np.ndarray:
    """Combine (slices, classes) probabilities into one per class: "max"; "topk_mean", the mean
    of the top k; "noisy_or", 1 - prod(1 - p) over the slices, the chance that at least one
    slice is positive were the slices independent."""
    if rule == "max":
        return slice_probabilities.max(axis=0)
    if rule == "noisy_or":
        # Summed in log space: a product of ~30 factors near 1 stays exact.
        return -np.expm1(np.log1p(-np.clip(slice_probabilities, 0.0, 1.0 - 1e-7)).sum(axis=0))
    if rule != "topk_mean":
        raise ValueError(f"unknown volume score rule {rule!r}")
    top = np.sort(slice_probabilities, axis=0)[-min(k, len(slice_probabilities)) :]
    return top.mean(axis=0)


def _explain_batches(
    metadata: ModelMetadata, network: torch.nn.Module, inputs: torch.Tensor, method: str, classes: Sequence[int], device: torch.device
):
    network.to(device)
    logits, maps = [], []
    batch = SLICE_BATCH if metadata.input.spatial_dims == 2 else 1
    for start in range(0, inputs.shape[0], batch):
        with autocast(device):
            result = explain(
                network,
                inputs[start : start + batch].to(device),
                method=method,
                target_layer=metadata.cam_target_layer,
                classes=classes,
                linear_layer=metadata.cam_linear_layer,
            )
        logits.append(result.logits.detach().float().cpu())
        maps.append(result.maps.detach().float().cpu())
    return torch.cat(logits), torch.cat(maps)


def classify_and_explain(model: LoadedModel, model_input: ModelInput, method: str, device: torch.device) -> Classification:
    """Probabilities of every class and their CAMs (``method``: cam, gradcam or gradcampp)."""
    metadata = model.metadata
    if metadata.task == "segmentation":
        raise ValueError(f"{model.path}: is a segmentation model, not a classifier")
    if not metadata.cam_target_layer:
        raise ValueError(f"{model.path}: the package names no CAM target layer")
    is_2d = metadata.input.spatial_dims == 2
    inputs = model_input.slices() if is_2d else model_input.batch()
    classes = list(range(len(metadata.classes)))
    warnings: List[str] = []
    logits, maps = with_cpu_fallback(lambda d: _explain_batches(metadata, model.network, inputs, method, classes, d), device, warnings)
    probabilities = probabilities_from_logits(logits, metadata.task).numpy()
    if is_2d:
        slice_probabilities = probabilities
        volume_probabilities = volume_score(probabilities, metadata.volume_score, metadata.volume_score_k)
        stacked = maps.permute(1, 0, 2, 3)  # (slices, classes, j, i) -> (classes, k, j, i)
    else:
        slice_probabilities = None
        volume_probabilities = probabilities[0]
        stacked = maps[0]
    # One scale per class over the whole volume (for 2D models: over all slices together).
    scaled, raw_max = (t[0].numpy() for t in normalise_maps(stacked.unsqueeze(0)))
    k, j, i = scaled.shape[1:]
    return Classification(
        class_names=metadata.class_names,
        probabilities=volume_probabilities,
        maps=scaled,
        raw_max=raw_max,
        feature_grid=feature_grid(model_input.grid, (i, j, k)),
        model_grid=model_input.grid,
        method=method,
        slice_probabilities=slice_probabilities,
        warnings=model_input.warnings + warnings,
    )
