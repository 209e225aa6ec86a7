"""Where an explanation lies with respect to the anatomy, all on the input CT's grid.

The numbers here answer "is the model looking at the patient, and at which organ?":
the share of a heat map's energy (the sum of its values) in each segment, in the body
outside any segment, outside the body, and in slices an annotator marked positive.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .resample import resample_array
from .volume import Grid, Volume

logger = logging.getLogger(__name__)

BODY_MASK_SPACING_MM = 1.5
BACKGROUND = "background"
OUTSIDE_BODY = "outside_body"
UNLISTED_LABELS = "unlisted_labels"


def body_mask(ct: Volume, threshold_hu: float = -500.0) -> np.ndarray:
    """Boolean [k, j, i] mask of the patient's body in a CT given in Hounsfield units.

    Voxels above ``threshold_hu`` are kept, then only their largest 3D connected component
    (which drops the table, clothes and noise in the air), then holes are filled slice by
    slice, so that air inside the body (lungs, airways, bowel gas) is part of the body.
    Holes are filled per axial slice because in 3D the airways open the lungs to the
    outside air at the top of a chest scan, and 3D hole filling would leave them out.

    The threshold is in HU: on windowed 8-bit images (e.g. CT-ICH JPEGs) the result is
    meaningless; a warning is logged when the value range does not look like HU.
    """
    array = ct.array
    if array.size and float(array.min()) >= 0.0:
        logger.warning(
            "body_mask: CT values range %s..%s, which does not look like Hounsfield units "
            "(air is about -1000 HU); the body mask may be wrong",
            float(array.min()),
            float(array.max()),
        )
    # Memory matters on 512x512x300 CTs: the voxels keep their own type, and the largest
    # component is picked from shape statistics rather than by relabelling the whole volume.
    # Sub-millimetre slices are averaged in-plane to about BODY_MASK_SPACING_MM first: the
    # outline of a body needs no finer voxels, and the work shrinks by the square.
    image = ct.to_sitk()
    shrink = max(1, int(BODY_MASK_SPACING_MM // min(ct.grid.spacing[:2])))
    if shrink > 1:
        image = sitk.BinShrink(image, [shrink, shrink, 1])
    mask_grid = Grid.of_image(image)
    components = sitk.ConnectedComponent(image > float(threshold_hu))
    del image
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(components)
    if not statistics.GetLabels():
        logger.warning("body_mask: no voxel above %s HU; returning an empty mask", threshold_hu)
        return np.zeros(array.shape, dtype=bool)
    biggest = max(statistics.GetLabels(), key=statistics.GetNumberOfPixels)
    largest = sitk.GetArrayFromImage(components == biggest)
    del components
    for k, section in enumerate(largest):
        largest[k] = _fill_holes_2d(section.astype(bool))
    if shrink == 1:
        return largest.astype(bool)
    return resample_array(largest, mask_grid, ct.grid, "nearest", 0.0, sitk.sitkUInt8).astype(bool)


def _fill_holes_2d(section: np.ndarray) -> np.ndarray:
    if not section.any():
        return section
    image = sitk.GetImageFromArray(section.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False, foregroundValue=1)) > 0


SLAB_SLICES = 16  # axial slices processed at once by the energy sums


def _energy_map(heat: np.ndarray) -> np.ndarray:
    values = np.asarray(heat)
    if not np.all(np.isfinite(values)):
        raise ValueError("heat map holds NaN or infinite values")
    # Heat maps are non-negative by construction (ReLU'd CAMs); a negative value is not
    # "negative evidence" energy, so it is not counted. No copy of a map that needs no
    # clipping (a full-size CT map is hundreds of MB); sums are taken in float64 by callers.
    if values.size and values.min() < 0:
        return np.maximum(values, 0)
    return values


def _check_same_shape(heat: np.ndarray, other: np.ndarray, what: str) -> None:
    if np.shape(other) != np.shape(heat):
        raise ValueError(f"{what} shape {np.shape(other)} differs from the heat map's {np.shape(heat)}")


def cam_energy_by_segment(
    heat: np.ndarray,
    labels: np.ndarray,
    names: Mapping[int, str],
    body: Optional[np.ndarray] = None,
) -> Dict[str, float]:
    """Fraction of the heat map's energy (sum of values) in each region; the fractions sum to 1.

    Regions: each named segment (voxels of its label, inside the body mask or not: the
    segmentation is more specific than a threshold mask), ``"background"`` (label 0 inside
    the body, or everywhere when ``body`` is None) and, when ``body`` is given,
    ``"outside_body"`` (label 0 outside it). Label values present in ``labels`` but missing
    from ``names`` are pooled under ``"unlisted_labels"``, which appears only when they exist.
    An all-zero map gives 0.0 everywhere.
    """
    heat = np.asarray(heat)
    labels = np.asarray(labels)
    _check_same_shape(heat, labels, "label map")
    _check_names(names, body is not None)
    if body is not None:
        body = np.asarray(body, dtype=bool)
        _check_same_shape(heat, body, "body mask")
    if labels.size and labels.min() < 0:
        raise ValueError(f"label map holds negative labels (min {labels.min()})")

    # One weighted bincount per slab of slices over a region index (label, and whether the
    # voxel is inside the body): a single pass, with memory bounded by the slab.
    length = int(labels.max()) + 1 if labels.size else 1
    inside = np.zeros(2 * length)  # [2 * label + inside_body]
    voxels = np.zeros(length, dtype=np.int64)
    for start in range(0, heat.shape[0] if heat.ndim else 0, SLAB_SLICES):
        energy = _energy_map(heat[start : start + SLAB_SLICES]).ravel()
        slab_labels = labels[start : start + SLAB_SLICES].ravel()
        region = slab_labels.astype(np.intp) * 2
        if body is not None:
            region += body[start : start + SLAB_SLICES].ravel()
        inside += np.bincount(region, weights=energy, minlength=2 * length)
        voxels += np.bincount(slab_labels, minlength=length)
    per_label = inside[0::2] + inside[1::2]
    background_outside, background_in_body = float(inside[0]), float(inside[1])
    total = float(per_label.sum())

    sums: Dict[str, float] = {name: _at(per_label, value) for value, name in names.items()}
    listed = set(int(v) for v in names) | {0}
    unlisted = [v for v in np.flatnonzero(voxels) if int(v) not in listed]
    if unlisted:
        sums[UNLISTED_LABELS] = float(sum(per_label[v] for v in unlisted))
    if body is None:
        sums[BACKGROUND] = _at(per_label, 0)
    else:
        sums[BACKGROUND] = background_in_body
        sums[OUTSIDE_BODY] = background_outside
    if total <= 0.0:
        return {name: 0.0 for name in sums}
    return {name: value / total for name, value in sums.items()}


def _at(per_label: np.ndarray, value: int) -> float:
    return float(per_label[value]) if 0 <= value < per_label.size else 0.0


def _check_names(names: Mapping[int, str], with_body: bool) -> None:
    reserved = {BACKGROUND, UNLISTED_LABELS} | ({OUTSIDE_BODY} if with_body else set())
    clashes = reserved & set(names.values())
    if clashes:
        raise ValueError(f"segment names {sorted(clashes)} are reserved for the regions outside segments")
    if len(set(names.values())) != len(names):
        raise ValueError(f"two label values share a segment name: {dict(names)}")
    if 0 in names:
        raise ValueError(f"label 0 is the background and cannot be a segment (named {names[0]!r})")


def cam_energy_in_positive_slices(heat: np.ndarray, positive_slices: Sequence[bool]) -> float:
    """Share of the heat map's energy in the axial slices (k) marked positive; 0.0 for an empty map.

    ``positive_slices`` has one entry per slice k (CT-ICH gives one label per slice).
    """
    energy = _energy_map(heat)
    positive = np.asarray(positive_slices, dtype=bool)
    if positive.ndim != 1 or positive.shape[0] != energy.shape[0]:
        raise ValueError(f"{positive.shape[0] if positive.ndim else 0} slice labels for a map of {energy.shape[0]} slices")
    per_slice = energy.reshape(energy.shape[0], -1).sum(axis=1, dtype=np.float64)
    total = float(per_slice.sum())
    return float(per_slice[positive].sum()) / total if total > 0 else 0.0


@dataclass
class AnatomyStats:
    """The anatomy numbers of one finding (one class's heat map), ready for a JSON report."""

    finding: str
    energy_by_segment: Dict[str, float] = field(default_factory=dict)
    energy_in_positive_slices: Optional[float] = None
    peak_index_kji: Optional[Tuple[int, int, int]] = None
    peak_lps: Optional[Tuple[float, float, float]] = None
    peak_segment: Optional[str] = None
    key_slices: List[int] = field(default_factory=list)

    def dominant_segment(self) -> Optional[str]:
        """The region holding the largest share of energy, or None for an empty map."""
        if not self.energy_by_segment or max(self.energy_by_segment.values()) <= 0:
            return None
        return max(self.energy_by_segment, key=lambda name: self.energy_by_segment[name])

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types only (tuples become lists, numpy values Python numbers)."""
        data = asdict(self)
        data["energy_by_segment"] = {str(k): float(v) for k, v in self.energy_by_segment.items()}
        for key in ("peak_index_kji", "key_slices"):
            data[key] = None if data[key] is None else [int(v) for v in data[key]]
        data["peak_lps"] = None if self.peak_lps is None else [float(v) for v in self.peak_lps]
        if self.energy_in_positive_slices is not None:
            data["energy_in_positive_slices"] = float(self.energy_in_positive_slices)
        data["dominant_segment"] = self.dominant_segment()
        return data


def anatomy_stats(
    finding: str,
    heat: Volume,
    labels: Optional[np.ndarray] = None,
    names: Optional[Mapping[int, str]] = None,
    body: Optional[np.ndarray] = None,
    positive_slices: Optional[Sequence[bool]] = None,
    key_slice_count: int = 3,
) -> AnatomyStats:
    """Collect :class:`AnatomyStats` for one finding's heat map on the input grid."""
    from .montage import key_slices

    energy = _energy_map(heat.array)
    stats = AnatomyStats(finding=finding, key_slices=key_slices(energy, key_slice_count))
    if labels is not None:
        stats.energy_by_segment = cam_energy_by_segment(energy, labels, names or {}, body)
    if positive_slices is not None:
        stats.energy_in_positive_slices = cam_energy_in_positive_slices(energy, positive_slices)
    if energy.size and energy.max() > 0:
        k, j, i = (int(v) for v in np.unravel_index(int(np.argmax(energy)), energy.shape))
        stats.peak_index_kji = (k, j, i)
        x, y, z = heat.grid.index_to_point((i, j, k))
        stats.peak_lps = (float(x), float(y), float(z))
        if labels is not None:
            stats.peak_segment = _region_at(int(labels[k, j, i]), names or {}, None if body is None else bool(body[k, j, i]))
    return stats


def _region_at(label: int, names: Mapping[int, str], inside_body: Optional[bool]) -> str:
    if label != 0:
        return names.get(label, UNLISTED_LABELS)
    return OUTSIDE_BODY if inside_body is False else BACKGROUND


__all__ = [
    "AnatomyStats",
    "BACKGROUND",
    "OUTSIDE_BODY",
    "UNLISTED_LABELS",
    "anatomy_stats",
    "body_mask",
    "cam_energy_by_segment",
    "cam_energy_in_positive_slices",
]
