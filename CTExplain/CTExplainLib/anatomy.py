"""Where an explanation lies with respect to the anatomy, all on the input CT's grid.

The numbers here answer "is the model looking at the patient, and at which organ?":
the share of a heat map's energy (the sum of its values) in each segment, in the body
outside any segment, outside the body, and in slices an annotator marked positive.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .resample import SeparablePlan, resample_array
from .volume import Grid, Volume
from .writing import label_counts

logger = logging.getLogger(__name__)

BODY_MASK_SPACING_MM = 1.5
BODY_ABOVE_HU = -500.0  # tissue, not air: what a body mask starts from
BACKGROUND = "background"
OUTSIDE_BODY = "outside_body"
UNLISTED_LABELS = "unlisted_labels"


def body_mask(ct: Volume, threshold_hu: float = BODY_ABOVE_HU) -> np.ndarray:
    """Boolean [k, j, i] mask of the patient's body in a CT given in Hounsfield units.

    Voxels above ``threshold_hu`` are kept, then only their largest 3D connected component
    (which drops the table, clothes and noise in the air), then holes are filled slice by
    slice, so that air inside the body (lungs, airways, bowel gas) is part of the body.
    Holes are filled per axial slice because in 3D the airways open the lungs to the
    outside air at the top of a chest scan, and 3D hole filling would leave them out.

    The threshold is in HU: on windowed 8-bit images (e.g. CT-ICH JPEGs) the result is
    meaningless; a warning is logged when the value range does not look like HU.
    """
    mask = _coarse_body_mask(ct, threshold_hu)
    if mask is None:
        return np.zeros(ct.array.shape, dtype=bool)
    small, grid = mask
    if grid is ct.grid:
        return small.view(bool)
    return body_mask_from(small, grid, ct.grid)


def body_mask_shrink(grid: Grid) -> int:
    """Pixels averaged along i and j (each) to bring ``grid``'s slices to about
    BODY_MASK_SPACING_MM for finding the body: 1 for pixels coarser than 0.75 mm."""
    return max(1, int(BODY_MASK_SPACING_MM // min(grid.spacing[:2])))


def body_mask_from(small: np.ndarray, grid: Grid, target: Grid) -> np.ndarray:
    """A 0/1 mask on ``grid`` brought (nearest neighbour) to ``target``, as booleans."""
    return resample_array(small, grid, target, "nearest", 0.0, sitk.sitkUInt8).view(bool)


def _coarse_body_mask(ct: Volume, threshold_hu: float) -> Optional[Tuple[np.ndarray, Grid]]:
    """The body mask (uint8, 0 or 1) on the grid it is computed on: ``ct.grid`` itself, or
    that grid averaged in-plane to about BODY_MASK_SPACING_MM; None when no voxel is above
    the threshold."""
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
    shrink = body_mask_shrink(ct.grid)
    if shrink > 1:
        # Slab by slab (the shrinking is per slice), so that no full-size copy of the CT is made.
        pieces = []
        for start in range(0, array.shape[0], SLAB_SLICES):
            stop = min(start + SLAB_SLICES, array.shape[0])
            slab = sitk.GetImageFromArray(array[start:stop])
            ct.grid.slab(start, stop).apply_to(slab)
            shrunk = sitk.BinShrink(slab, [shrink, shrink, 1])
            if start == 0:
                first = Grid.of_image(shrunk)
            pieces.append(sitk.GetArrayFromImage(shrunk))
        image = sitk.GetImageFromArray(np.concatenate(pieces))
        mask_grid = Grid((first.size[0], first.size[1], array.shape[0]), first.spacing, first.origin, first.direction)
        mask_grid.apply_to(image)
        del pieces
    else:
        image, mask_grid = ct.to_sitk(), ct.grid
    components = sitk.ConnectedComponent(image > float(threshold_hu))
    del image
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.ComputePerimeterOff()  # only the sizes are needed; the perimeter is slow
    statistics.Execute(components)
    if not statistics.GetLabels():
        logger.warning("body_mask: no voxel above %s HU; returning an empty mask", threshold_hu)
        return None
    biggest = max(statistics.GetLabels(), key=statistics.GetNumberOfPixels)
    largest = sitk.GetArrayFromImage(components == biggest)
    del components
    fill_holes_per_slice(largest)
    return largest, mask_grid


def fill_holes_per_slice(mask: np.ndarray) -> None:
    """Fill, in place, the holes of each axial slice of a 0/1 uint8 mask (4-connected background).

    A hole is background that cannot reach its slice's border. The slices are framed by one
    pixel of background and stacked into one tall 2D image, in which the frames of all slices
    touch: the background connected to them is the outside of every slice, and a background
    region can reach another slice only through a frame, that is through the outside. One
    4-connected labelling of that image finds every slice's outside at once, several times
    faster than ITK's hole filling (which labels the holes too) per slice or in 3D.
    """
    depth, rows, columns = mask.shape
    background = np.ones((depth, rows + 2, columns + 2), dtype=np.uint8)
    np.subtract(1, mask, out=background[:, 1:-1, 1:-1])
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(background.reshape(depth * (rows + 2), columns + 2)), False)
    del background
    labels = sitk.GetArrayViewFromImage(components).reshape(depth, rows + 2, columns + 2)
    np.not_equal(labels[:, 1:-1, 1:-1], labels[0, 0, 0], out=mask, casting="unsafe")  # all but the outside
    del labels  # the view must not outlive its image


SLAB_SLICES = 16  # axial slices processed at once: CT shrinking; the region energies are summed per slab


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


class Regions:
    """The regions a case's heat maps are split into: each label value of a segmentation, and
    for each whether the voxel is in the body, numbered ``2 * label + inside_body``.

    Built once per case and shared by all findings (:meth:`of` from full arrays;
    :meth:`for_ct` makes the body mask itself and keeps it as bits, an eighth of a byte a
    voxel). The codes are made slice by slice when a heat map is measured, so no full-size
    array is added to the label map.
    """

    def __init__(self, shape: Tuple[int, ...], labels: Optional[np.ndarray], body: Optional[Callable[[int, int], np.ndarray]]) -> None:
        self.shape = tuple(shape)
        self.labels = labels  # non-negative integers, or None for all background
        self.body_slab = body  # (start, stop) -> body mask of those slices (0/1), or None: no body mask
        if labels is not None:
            if labels.size and not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"label map must hold integers, got {labels.dtype}")
            if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
                raise ValueError(f"label map holds negative labels (min {labels.min()})")
        self.voxels = label_counts(labels) if labels is not None else np.array([int(np.prod(shape, dtype=np.int64))])
        self._scratch: Dict[str, np.ndarray] = {}  # buffers of summarise_heat, reused by every finding

    @property
    def with_body(self) -> bool:
        return self.body_slab is not None

    @classmethod
    def of(cls, labels: np.ndarray, body: Optional[np.ndarray] = None) -> "Regions":
        """Regions of a label map and, if given, a full boolean body mask of the same shape."""
        labels = np.asarray(labels)
        if body is None:
            return cls(labels.shape, labels, None)
        mask = np.asarray(body, dtype=bool)
        _check_same_shape(labels, mask, "body mask")
        return cls(labels.shape, labels, lambda start, stop: mask[start:stop])

    @classmethod
    def for_ct(cls, ct: Volume, labels: Optional[np.ndarray], threshold_hu: float = BODY_ABOVE_HU) -> "Regions":
        """Regions of ``labels`` (all background if None) and of :func:`body_mask` of ``ct``."""
        shape = ct.array.shape
        if labels is not None:
            labels = np.asarray(labels)
            _check_same_shape(ct.array, labels, "label map")
        coarse = _coarse_body_mask(ct, threshold_hu)
        if coarse is None:  # no body at all: every voxel is outside it
            return cls(shape, labels, lambda start, stop: np.zeros((stop - start,) + shape[1:], dtype=np.uint8))
        small, grid = coarse
        plan = None if grid is ct.grid else SeparablePlan.of(grid, ct.grid)
        if grid is ct.grid or plan is None:  # the mask at full size (for other grids SimpleITK resamples it)
            mask = small if grid is ct.grid else body_mask_from(small, grid, ct.grid)
            return cls(shape, labels, lambda start, stop: mask[start:stop])
        # Brought to full size once, slice by slice, and kept packed 8 voxels a byte (10 MB for a
        # 512x512x300 CT): every finding unpacks its slices instead of resampling them again.
        section = np.empty(shape[1:], dtype=np.uint8)
        packed = np.empty(shape[:2] + ((shape[2] + 7) // 8,), dtype=np.uint8)
        for k in range(shape[0]):
            packed[k] = np.packbits(plan.nearest_slice(small, k, 0, section), axis=-1)
        return cls(shape, labels, lambda start, stop: np.unpackbits(packed[start:stop], axis=-1, count=shape[2]))

    def codes(self, start: int, stop: int) -> np.ndarray:
        """``2 * label + inside_body`` for slices [start, stop), as 64-bit integers."""
        codes = np.zeros((stop - start,) + self.shape[1:], dtype=np.intp)
        self._codes_into(codes, start, stop)
        return codes

    def _codes_into(self, codes: np.ndarray, start: int, stop: int) -> None:
        # Computed in the 64-bit output itself: doubled in the labels' own type, a uint8 label
        # of 128 or more would wrap around.
        if self.labels is None:
            codes.fill(0)
        else:
            np.copyto(codes, self.labels[start:stop], casting="unsafe")
            np.left_shift(codes, 1, out=codes)
        if self.body_slab is not None:
            np.add(codes, self.body_slab(start, stop), out=codes, casting="unsafe")

    def label_at(self, k: int, j: int, i: int) -> int:
        return int(self.labels[k, j, i]) if self.labels is not None else 0

    def inside_body_at(self, k: int, j: int, i: int) -> Optional[bool]:
        return None if self.body_slab is None else bool(self.body_slab(k, k + 1)[0, j, i])

    def _buffers(self, plane: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positive, codes, weights): a slice's voxels of positive energy, and room for the
        codes and energies of a whole slice plus one carried sum per region code."""
        size = plane + 2 * self.voxels.size
        if self._scratch.get("codes", np.empty(0)).size != size:
            self._scratch = {
                "positive": np.empty(plane, dtype=bool),
                "codes": np.empty(size, dtype=np.intp),
                "weights": np.empty(size, dtype=np.float64),
            }
        return self._scratch["positive"], self._scratch["codes"], self._scratch["weights"]


@dataclass
class HeatSummary:
    """What the statistics and the montage need from one heat map, from a single pass over it."""

    slice_energy: np.ndarray  # (k,) float64: the energy of each axial slice
    region_energy: Optional[np.ndarray]  # float64 per region code (see Regions), if regions were given
    peak_index_kji: Optional[Tuple[int, int, int]]  # the first voxel of the largest value, if above 0


def summarise_heat(heat: np.ndarray, regions: Optional[Regions] = None) -> HeatSummary:
    """One pass over ``heat`` (slice by slice, no full-size temporary): per-slice energy, energy
    per region, peak. Negative values count as 0; NaN or infinite values raise ValueError.

    The region energies are ``np.bincount(codes, weights=energy)`` of each slab of SLAB_SLICES
    slices, added up slab after slab; each slab's sums are computed a slice at a time, every
    slice's bincount starting from the sums so far (see :func:`_add_region_energy`), so they
    are the same to the last bit while the work stays in the processor's cache.
    """
    heat = np.asarray(heat)
    if heat.ndim < 1:
        raise ValueError("a heat map must have at least one axis")
    if regions is not None:
        if tuple(heat.shape) != regions.shape:
            raise ValueError(f"label map shape {regions.shape} differs from the heat map's {heat.shape}")
    depth, plane = heat.shape[0], int(np.prod(heat.shape[1:], dtype=np.int64))
    slice_energy = np.zeros(depth, dtype=np.float64)
    region_energy = np.zeros(2 * regions.voxels.size) if regions is not None else None
    slab_energy = np.zeros_like(region_energy) if regions is not None else None
    peak_value, peak_at = 0.0, -1
    for k in range(depth):
        section = heat[k]
        low, high = section.min(), section.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("heat map holds NaN or infinite values")
        if low < 0:
            section = np.maximum(section, 0)
        slice_energy[k] = section.sum(dtype=np.float64)
        if high > peak_value:
            peak_value, peak_at = float(high), k * plane + int(np.argmax(section))
        if regions is not None:
            if high > 0:
                _add_region_energy(slab_energy, section.ravel(), regions, k)
            if (k + 1) % SLAB_SLICES == 0 or k + 1 == depth:
                region_energy += slab_energy
                slab_energy[...] = 0.0
    peak = None
    if peak_at >= 0:
        k, j, i = (int(v) for v in np.unravel_index(peak_at, heat.shape))
        peak = (k, j, i)
    return HeatSummary(slice_energy, region_energy, peak)


def _add_region_energy(sums: np.ndarray, energy: np.ndarray, regions: Regions, k: int) -> None:
    """Add the energy of slice ``k`` (non-negative, flat) to ``sums`` per region code, as one
    ``np.bincount(codes, weights)`` over the slab would have added it.

    That bincount adds each code's energies in voxel order, starting from 0. Here the sums so
    far come first in the codes and weights given to bincount, one voxel per code that has a
    sum: 0 + sum = sum, then the slice's energies follow in order, so each code's result is
    the slab's running sum carried on, bit for bit. Voxels of zero energy are left out when
    they are many (adding 0.0 leaves a sum as it is); the buffers are the Regions' own, reused.
    """
    positive, codes, weights = regions._buffers(energy.size)
    np.greater(energy, 0, out=positive)
    count = int(np.count_nonzero(positive))
    if count == 0:
        return
    carried = np.flatnonzero(sums)
    first = carried.size
    codes[:first] = carried
    weights[:first] = sums[carried]
    if count < energy.size // 2:
        stop = first + count
        if regions.labels is not None:
            np.copyto(codes[first:stop], regions.labels[k].ravel()[positive], casting="unsafe")
            np.left_shift(codes[first:stop], 1, out=codes[first:stop])
        else:
            codes[first:stop] = 0
        if regions.body_slab is not None:
            np.add(codes[first:stop], regions.body_slab(k, k + 1).ravel()[positive], out=codes[first:stop], casting="unsafe")
        weights[first:stop] = energy[positive]
    else:
        stop = first + energy.size
        regions._codes_into(codes[first:stop].reshape((1,) + regions.shape[1:]), k, k + 1)
        weights[first:stop] = energy
    sums[...] = np.bincount(codes[:stop], weights=weights[:stop], minlength=sums.size)


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
    regions = Regions.of(labels, body)
    return energy_shares(summarise_heat(heat, regions).region_energy, regions, names)


def energy_shares(region_energy: np.ndarray, regions: Regions, names: Mapping[int, str]) -> Dict[str, float]:
    """:func:`cam_energy_by_segment`'s fractions from a :class:`HeatSummary`'s region energy."""
    _check_names(names, regions.with_body)
    per_label = region_energy[0::2] + region_energy[1::2]
    background_outside, background_in_body = float(region_energy[0]), float(region_energy[1])
    total = float(per_label.sum())

    sums: Dict[str, float] = {name: _at(per_label, value) for value, name in names.items()}
    listed = set(int(v) for v in names) | {0}
    unlisted = [v for v in np.flatnonzero(regions.voxels) if int(v) not in listed]
    if unlisted:
        sums[UNLISTED_LABELS] = float(sum(per_label[v] for v in unlisted))
    if not regions.with_body:
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
    per_slice = energy.reshape(energy.shape[0], -1).sum(axis=1, dtype=np.float64)
    return energy_in_positive_slices(per_slice, positive_slices)


def energy_in_positive_slices(slice_energy: np.ndarray, positive_slices: Sequence[bool]) -> float:
    """:func:`cam_energy_in_positive_slices` from per-slice energies already summed."""
    positive = np.asarray(positive_slices, dtype=bool)
    if positive.ndim != 1 or positive.shape[0] != slice_energy.shape[0]:
        raise ValueError(f"{positive.shape[0] if positive.ndim else 0} slice labels for a map of {slice_energy.shape[0]} slices")
    total = float(slice_energy.sum())
    return float(slice_energy[positive].sum()) / total if total > 0 else 0.0


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
    # Per-slice energy (float64, one per k) that the stats came from; not part of the report.
    slice_energy: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    def dominant_segment(self) -> Optional[str]:
        """The region holding the largest share of energy, or None for an empty map."""
        if not self.energy_by_segment or max(self.energy_by_segment.values()) <= 0:
            return None
        return max(self.energy_by_segment, key=lambda name: self.energy_by_segment[name])

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types only (tuples become lists, numpy values Python numbers)."""
        data = asdict(self)
        del data["slice_energy"]
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
    regions: Optional[Regions] = None,
) -> AnatomyStats:
    """Collect :class:`AnatomyStats` for one finding's heat map on the input grid.

    ``regions`` (from :meth:`Regions.of` or :meth:`Regions.for_ct`, built once for all
    findings) may stand for ``labels`` and ``body``. The per-slice energies are kept in
    ``slice_energy`` for the montage.
    """
    from .montage import key_slices_of_energy

    if regions is None and labels is not None:
        _check_same_shape(heat.array, labels, "label map")
        _check_names(names or {}, body is not None)
        regions = Regions.of(labels, body)
    summary = summarise_heat(heat.array, regions)
    stats = AnatomyStats(finding=finding, key_slices=key_slices_of_energy(summary.slice_energy, key_slice_count))
    stats.slice_energy = summary.slice_energy
    if regions is not None:
        stats.energy_by_segment = energy_shares(summary.region_energy, regions, names or {})
    if positive_slices is not None:
        stats.energy_in_positive_slices = energy_in_positive_slices(summary.slice_energy, positive_slices)
    if summary.peak_index_kji is not None:
        k, j, i = summary.peak_index_kji
        stats.peak_index_kji = (k, j, i)
        x, y, z = heat.grid.index_to_point((i, j, k))
        stats.peak_lps = (float(x), float(y), float(z))
        if regions is not None:
            stats.peak_segment = _region_at(regions.label_at(k, j, i), names or {}, regions.inside_body_at(k, j, i))
    return stats


def _region_at(label: int, names: Mapping[int, str], inside_body: Optional[bool]) -> str:
    if label != 0:
        return names.get(label, UNLISTED_LABELS)
    return OUTSIDE_BODY if inside_body is False else BACKGROUND


__all__ = [
    "AnatomyStats",
    "BACKGROUND",
    "HeatSummary",
    "OUTSIDE_BODY",
    "Regions",
    "UNLISTED_LABELS",
    "anatomy_stats",
    "body_mask",
    "cam_energy_by_segment",
    "cam_energy_in_positive_slices",
    "energy_in_positive_slices",
    "energy_shares",
    "summarise_heat",
]
