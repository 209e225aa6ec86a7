"""Intensity steps: MONAI's intensity transforms, by name, as a model's input spec lists them.

A package's ``input.intensity_steps`` (see :class:`~CTExplainLib.model_package.InputSpec`)
is a list such as ``[{"transform": "NormalizeIntensity", "nonzero": true},
{"transform": "ScaleIntensity", "minv": -1.0, "maxv": 1.0}]``: the raw intensities (HU, or
0-255 for display images) on the model grid go through MONAI's own array transforms of those
names, in order, one image at a time (each axial slice for 2D models, the volume for 3D
ones), exactly as a MONAI bundle's preprocessing applies them. Only the transforms and
keyword arguments below are accepted; their values are JSON data.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

# transform name -> keyword arguments it may be given
STEPS: Dict[str, Sequence[str]] = {
    "ScaleIntensityRange": ("a_min", "a_max", "b_min", "b_max", "clip"),
    "ScaleIntensity": ("minv", "maxv", "factor", "channel_wise"),
    "NormalizeIntensity": ("subtrahend", "divisor", "nonzero", "channel_wise"),
}


def check_steps(steps: Any) -> List[Dict[str, Any]]:
    """``steps`` as a list of ``{"transform": name, **kwargs}``; ValueError naming what is wrong."""
    if not isinstance(steps, list):
        raise ValueError(f"intensity_steps must be a list, got {type(steps).__name__}")
    checked = []
    for step in steps:
        if not isinstance(step, Mapping) or step.get("transform") not in STEPS:
            name = step.get("transform") if isinstance(step, Mapping) else step
            raise ValueError(f"intensity step {name!r} is not one of {', '.join(STEPS)}")
        unknown = sorted(set(step) - {"transform"} - set(STEPS[step["transform"]]))
        if unknown:
            raise ValueError(f"intensity step {step['transform']}: unknown arguments {', '.join(unknown)}")
        checked.append(dict(step))
    return checked


def _transforms(steps: Sequence[Mapping[str, Any]]) -> List[Any]:
    from monai import transforms  # MONAI's transforms are only imported where steps are applied

    return [getattr(transforms, step["transform"])(**{k: v for k, v in step.items() if k != "transform"}) for step in steps]


def apply_steps(channels: np.ndarray, spatial_dims: int, steps: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """In place on (channels, k, j, i): each image (axial slice for 2D models, the volume for
    3D ones) through the steps in order, as MONAI's array transforms compute them."""
    chain = _transforms(steps)
    images = [channels[:, k] for k in range(channels.shape[1])] if spatial_dims == 2 else [channels]
    for image in images:
        result: Any = image
        for transform in chain:
            result = transform(result)
        image[...] = np.asarray(result, dtype=np.float32)
    return channels
