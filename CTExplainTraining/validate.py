"""Validation predictions, computed the way the core computes them at inference.

Classifiers are scored per volume: a 2D network runs over every slice of the volume and its
slice probabilities are combined by the package's rule (``CTExplainLib.classify.volume_score``),
exactly as ``ctexplain explain`` does. Manifests with one row per slice also get slice-level
scores. Segmenters slide a window of the package's size over the whole case, as the core does.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from CTExplainLib.classify import probabilities_from_logits, volume_score
from CTExplainLib.devices import autocast
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import load_package
from CTExplainLib.preprocess import orientation_direction, slices_with_context
from CTExplainLib.resample import resample_array
from CTExplainLib.segment import PartRules, keep_largest_parts, segment

from .config import TrainConfig
from .data import IMAGE, LABEL, PreprocessedCases, read_mask
from .manifest import Example
from .metrics import classification_metrics, segmentation_metrics

SLICE_BATCH = 32
SW_OVERLAP = 0.25


@dataclass
class Validation:
    loss: float
    metrics: Dict[str, object]
    images: List[Path]
    probabilities: Optional[np.ndarray] = None  # (volumes, classes)
    targets: Optional[np.ndarray] = None
    slice_metrics: Optional[Dict[str, object]] = None


def _forward_slices(network: torch.nn.Module, volume: torch.Tensor, context: int, device: torch.device) -> torch.Tensor:
    """Logits of every slice of a (C, k, j, i) volume, (k, classes); each slice with ``context``
    neighbours on each side as the core feeds them (``slices_with_context``)."""
    depth = volume.shape[1]
    logits = []
    for start in range(0, depth, SLICE_BATCH):
        batch = slices_with_context(volume, start, min(start + SLICE_BATCH, depth), context)
        with autocast(device):
            logits.append(network(batch.to(device).float()).float().cpu())
    return torch.cat(logits)


def _by_image(examples: Sequence[Example]) -> "OrderedDict[Path, List[Example]]":
    groups: "OrderedDict[Path, List[Example]]" = OrderedDict()
    for example in examples:
        groups.setdefault(example.image, []).append(example)
    return groups


@torch.no_grad()
def validate_classifier(
    network: torch.nn.Module, config: TrainConfig, class_names: Sequence[str], cases: PreprocessedCases,
    examples: Sequence[Example], loss_fn: torch.nn.Module, device: torch.device,
) -> Validation:
    network.eval()
    volume_probs, volume_targets, images = [], [], []
    slice_probs, slice_targets, losses = [], [], []
    for image, rows in _by_image(examples).items():
        tensor = cases.case(image)[IMAGE]
        if config.spatial_dims == 2:
            logits = _forward_slices(network, tensor, config.slice_context, device)
            probabilities = probabilities_from_logits(logits, config.task).numpy()
            volume = volume_score(probabilities, config.volume_score, config.volume_score_k)
            sliced = [r for r in rows if r.slice is not None]
            if sliced:
                index = [r.slice for r in sliced]
                targets = torch.as_tensor(np.stack([r.target for r in sliced]))
                losses.append(float(loss_fn(logits[index], _loss_target(targets, config.task))) * len(sliced))
                slice_probs.append(probabilities[index])
                slice_targets.append(targets.numpy())
                target = targets.numpy().max(axis=0)  # a volume is positive where any slice is
            else:
                target = rows[0].target
                losses.append(float(loss_fn(_volume_logit(logits, config), _loss_target(torch.as_tensor(target)[None], config.task))))
        else:
            with autocast(device):
                logits = network(tensor[None].to(device).float()).float().cpu()
            volume = probabilities_from_logits(logits, config.task).numpy()[0]
            target = rows[0].target
            losses.append(float(loss_fn(logits, _loss_target(torch.as_tensor(target)[None], config.task))))
        volume_probs.append(volume)
        volume_targets.append(target)
        images.append(image)
    probs, targets = np.stack(volume_probs), np.stack(volume_targets).astype(np.float32)
    count = sum(len(p) for p in slice_probs) if slice_probs else len(images)
    result = Validation(
        loss=sum(losses) / max(count, 1),
        metrics=classification_metrics(config.task, probs, targets, list(class_names), config.threshold),
        images=images,
        probabilities=probs,
        targets=targets,
    )
    if slice_probs:
        result.slice_metrics = classification_metrics(
            config.task, np.concatenate(slice_probs), np.concatenate(slice_targets).astype(np.float32), list(class_names), config.threshold
        )
    return result


def _volume_logit(logits: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """One logit row per volume for the validation loss of a 2D model without slice labels."""
    return logits.max(dim=0, keepdim=True).values


def _loss_target(targets: torch.Tensor, task: str) -> torch.Tensor:
    if task == "multiclass":
        return targets.argmax(dim=1)
    return targets.float()


@torch.no_grad()
def segment_case(network: torch.nn.Module, config: TrainConfig, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Softmax probabilities (segments, k, j, i) of one preprocessed case."""
    network.eval()
    is_2d = config.spatial_dims == 2
    inputs = tensor.permute(1, 0, 2, 3) if is_2d else tensor[None]
    roi = tuple(reversed(config.size)) if config.size else tuple(inputs.shape[2:])
    with autocast(device):
        logits = sliding_window_inference(
            inputs.to(device).float(), roi_size=roi, sw_batch_size=4 if is_2d else 1, predictor=network, overlap=SW_OVERLAP, mode="gaussian"
        )
    probabilities = torch.softmax(logits.float(), dim=1).cpu()
    return probabilities.permute(1, 0, 2, 3) if is_2d else probabilities[0]


@torch.no_grad()
def validate_segmenter(
    network: torch.nn.Module, config: TrainConfig, segment_names: Sequence[str], cases: PreprocessedCases,
    examples: Sequence[Example], loss_fn: torch.nn.Module, device: torch.device,
) -> Validation:
    losses, predictions, references, images = [], [], [], []
    rules = PartRules.of(list(segment_names), config.max_parts, config.not_below, orientation_direction(config.input_spec().orientation))
    for image, _ in _by_image(examples).items():
        case = cases.case(image)
        probabilities = segment_case(network, config, case[IMAGE], device)
        keep_largest_parts(probabilities.numpy(), rules)  # as the core will
        reference = case[LABEL][0].long()
        # Dice + cross-entropy on probabilities: the loss function's own inputs are logits.
        losses.append(float(loss_fn(torch.log(probabilities.clamp_min(1e-6))[None], reference[None, None])))
        predictions.append(probabilities.argmax(dim=0).numpy())
        references.append(reference.numpy())
        images.append(image)
    metrics = segmentation_metrics(predictions, references, list(segment_names))  # means over cases
    return Validation(loss=sum(losses) / max(len(losses), 1), metrics=metrics, images=images)


def segment_files(package: Path, config: TrainConfig, segment_names: Sequence[str], examples: Sequence[Example], device: torch.device) -> Dict[str, object]:
    """Dice and IoU of the exported package run by the core (``CTExplainLib.segment``) on the
    original files, against each mask on the image's own grid: what a user of
    ``ctexplain explain`` gets, resampling to the input grid included."""
    model = load_package(package, device)
    image_spacing = tuple(config.image_spacing) if config.image_spacing else None
    predictions, references = [], []
    for image, rows in _by_image(examples).items():
        volume = load_volume(image, image_spacing=image_spacing)
        labels = segment(model, volume, device).labels.array
        mask = read_mask(rows[0].mask, volume)
        reference = mask.array if mask.grid.same_as(volume.grid) else resample_array(
            mask.array.astype(np.float32), mask.grid, volume.grid, "nearest", 0.0
        )
        predictions.append(labels.astype(np.int64))
        references.append(np.rint(reference).astype(np.int64))
    return segmentation_metrics(predictions, references, list(segment_names))
