"""Grad-CAM pictures of validation cases for the run report, made by the core as
``ctexplain explain`` makes them (the exported package, loaded back, on the original file)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from CTExplainLib.classify import classify_and_explain
from CTExplainLib.errors import CTExplainError
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import LoadedModel
from CTExplainLib.montage import finding_montage
from CTExplainLib.preprocess import preprocess

LOG = logging.getLogger(__name__)
DISPLAY_WINDOW = (127.5, 255.0)


def picture_window(model: LoadedModel, intensity: Optional[str]) -> Tuple[float, float]:
    """The (level, width) a picture of the model's input is shown with: the display range for
    8-bit images, else the model's first window."""
    if intensity == "display":
        return DISPLAY_WINDOW
    channel = model.metadata.input.channels[0]
    return (channel.level, channel.width)


def cam_overlays(
    model: LoadedModel, images: Sequence[Path], targets: Sequence[np.ndarray], image_spacing: Optional[Sequence[float]],
    device: torch.device, method: str = "gradcam",
) -> List[Tuple[str, np.ndarray]]:
    """One montage per case: the map of its first positive class (else its top class)."""
    pictures: List[Tuple[str, np.ndarray]] = []
    names = model.metadata.class_names
    for image, target in zip(images, targets):
        try:
            volume = load_volume(image, image_spacing=tuple(image_spacing) if image_spacing else None)
            classification = classify_and_explain(model, preprocess(volume, model.metadata.input), method, device)
        except CTExplainError as exc:
            LOG.warning("no overlay for %s: %s", image, exc)
            continue
        positives = np.flatnonzero(np.asarray(target) > 0.5)
        index = int(positives[0]) if len(positives) else int(np.argmax(classification.probabilities))
        heat = classification.heat_map(index, volume.grid)
        truth = "positive" if index in positives else "negative"
        title = f"{image.name}: {names[index]} p={classification.probabilities[index]:.2f} (reference {truth})"
        window = picture_window(model, volume.metadata.get("intensity"))
        slices = min(3, volume.array.shape[0])
        pictures.append((title, finding_montage(volume, heat, None, title, slices=slices, window=window, radiological=True)))
    return pictures


def map_sanity_check(model: LoadedModel, images: Sequence[Path], image_spacing: Optional[Sequence[float]], device: torch.device) -> Optional[dict]:
    """The maps' sanity check (CTExplainLib.trust.sanity) on the report's cases; None if they cannot be read."""
    from CTExplainLib.trust.sanity import check_files, sanity_record

    try:
        return sanity_record(check_files(model, images, image_spacing, device=device), [str(image) for image in images])
    except CTExplainError as exc:
        LOG.warning("no sanity check: %s", exc)
        return None
