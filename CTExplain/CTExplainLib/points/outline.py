"""A nodule at a point: its outline by a point segmenter, its diameter and volume.

The segmenter (a package whose ``input.crop`` is mode "point") reads each axial slice within
its box around the point (:func:`crop_input`); the nodule is the 3D connected part of its
foreground (nodule probability at least the package's ``threshold``) nearest the point
(:func:`nodule_part`), the part the classifier's box is then cut around. A point farther than ``max_distance_mm`` from any foreground is not on a nodule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..devices import autocast, with_cpu_fallback
from ..model_package import LoadedModel
from ..volume import Grid, Volume
from .crop import PointError, crop_input, nodule_part, voxel_positions

MAX_DISTANCE_MM = 10.0


@dataclass
class NoduleSize:
    diameter_mm: float  # the longest in-plane distance across the nodule on any axial slice
    volume_ml: float
    slices: int  # axial slices the nodule spans on its grid

    @property
    def equivalent_diameter_mm(self) -> float:
        """The diameter of the sphere of the nodule's volume: what LIDC's ``diameter_mm``
        follows (within 1 mm on the readers' outlines, correlation 0.996)."""
        return float((6.0 * self.volume_ml * 1000.0 / np.pi) ** (1.0 / 3.0))

    def to_dict(self) -> dict:
        return {"diameter_mm": self.diameter_mm, "equivalent_diameter_mm": self.equivalent_diameter_mm,
                "volume_ml": self.volume_ml, "slices": self.slices}


@torch.no_grad()
def outline_nodule(model: LoadedModel, volume: Volume, point: Sequence[float], device: torch.device,
                   max_distance_mm: float = MAX_DISTANCE_MM, threshold: Optional[float] = None) -> Volume:
    """The nodule at ``point`` (LPS mm) as a 0/1 mask on the segmenter's grid around it: the
    voxels whose nodule probability reaches ``threshold`` (default: the package's threshold)."""
    spec = model.metadata.input
    if model.metadata.task != "segmentation" or spec.crop is None or spec.crop.mode != "point":
        raise ValueError(f"{model.path}: is not a point segmenter (input crop mode 'point')")
    model_input = crop_input(volume, spec, point).model_input
    batch = model_input.slices() if spec.spatial_dims == 2 else model_input.batch()

    def logits_on(target: torch.device) -> torch.Tensor:
        network = model.network.to(target)  # the package loads on the CPU; the classifier moves itself too
        with autocast(target):
            return network(batch.to(target).float()).float().cpu()

    logits = with_cpu_fallback(logits_on, device, [])  # a fallback is logged; the point's result is the same
    nodule = torch.softmax(logits, dim=1)[:, 1]  # (k, j, i) for 2D slices; (1, k, j, i) for 3D
    cut = model.metadata.threshold if threshold is None else threshold
    foreground = (nodule.reshape(model_input.grid.shape) >= cut).numpy().astype(np.uint8)
    mask = Volume(foreground, model_input.grid, metadata={"kind": "labels"})
    if not foreground.any():
        raise PointError(point, f"no nodule found within {spec.crop.in_plane_mm / 2:g} mm of the point")
    part = nodule_part(mask, point)
    distance = float(np.min(np.linalg.norm(voxel_positions(mask.grid, part) - np.asarray(point, dtype=float), axis=1)))
    if distance > max_distance_mm:
        raise PointError(point, f"no nodule at the point: the nearest one the segmenter outlines is {distance:.1f} mm away")
    return mask.with_array(part.astype(np.uint8), kind="labels")


def _longest_distance(points: np.ndarray) -> float:
    if len(points) < 2:
        return 0.0
    # Pairwise over the slice's pixels: a nodule's slice has at most a few thousand.
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((differences ** 2).sum(axis=-1)).max())


def nodule_size(mask: Volume) -> NoduleSize:
    """Diameter (longest in-plane chord between voxel centres, plus one pixel) and volume of a 0/1 mask."""
    grid: Grid = mask.grid
    inside = np.asarray(mask.array) > 0
    diameter = 0.0
    for k in np.flatnonzero(inside.any(axis=(1, 2))):
        layer = np.zeros_like(inside)
        layer[k] = _edge(inside[k])
        points = voxel_positions(grid, layer)
        diameter = max(diameter, _longest_distance(points) + float(np.mean(grid.spacing[:2])))
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    return NoduleSize(diameter, float(inside.sum()) * voxel_ml, int(inside.any(axis=(1, 2)).sum()))


def _edge(section: np.ndarray) -> np.ndarray:
    """The pixels of a 2D mask with a 4-neighbour outside it (the longest chord ends there)."""
    padded = np.pad(section, 1)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return section & ~interior
