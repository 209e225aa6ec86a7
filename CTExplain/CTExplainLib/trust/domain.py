"""Is an input the kind of CT a model was trained on? Checked before every case runs.

:func:`profile_input` describes the input from its metadata and a cheap look at its voxels
(a few dozen slices averaged to about 3 mm): the intensity scale (Hounsfield units, 8-bit
display grey levels, raw scanner values, or a label map), the modality, the body region(s)
and the geometry. :func:`check_domain` compares that profile with a package's
:class:`~CTExplainLib.model_package.Domain` and returns warnings, each naming the model and
the problem. Absurd geometry (invalid spacing, a few voxels) is refused outright; with
``strict`` every warning is a refusal too (:func:`enforce`).

The body region comes from DICOM ``BodyPartExamined`` where it names one, otherwise from
the image (hand-written heuristics, since no library labels a CT's body region without a
trained network; each rule is stated where it is defined):

- head: a ring of bone (above 150 HU, gaps of one pixel closed) encloses at least 40 cm² of
  tissue of which at least 70% has brain density (-10..90 HU);
- chest: air (below -400 HU) fills at least 15% of the body's cross-section, or at least 4%
  with most of it (40%) behind the body's centre: lung bases lie posterior, whereas bowel
  gas of a patient lying on their back rises to the front;
- abdomen (and pelvis): any other slice whose body is at least 200 mm across.

A region counts when at least 5% of the slices looked at (at least one) show it. On the
shipped samples and the shared data this gives: CT-ICH patient 050 head; Slicer's CTHead
head (its raw values read as HU + 1024); LIDC-IDRI-0001 chest and abdomen (its lowest
slices); TotalSegmentator's example CT chest (the lung bases) and abdomen.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..anatomy import body_mask, fill_holes_per_slice
from ..errors import InputError
from ..model_package import Domain, LoadedModel
from ..volume import Grid, Volume

# Intensity scale.
AIR_BELOW_HU = -850.0  # air is -1000 HU; CT-ICH rebuilt from its bone window clips air at -900
AIR_SHARE = 0.002  # a CT in HU has at least this share of its voxels in air (around or in the body)
LABEL_MAP_VALUES = 128  # an image of non-negative integers with at most this many values is a label map
RAW_OFFSET = 1024.0  # raw scanner values are usually HU + 1024 (the rescale intercept not applied)
DISPLAY_MAX = 255.0

# Geometry.
MIN_VOXELS_IN_PLANE = 16  # fewer rows or columns than this is no CT slice: refused
MAX_SLICE_GAP_MM = 20.0  # slices further apart than this leave whole organs out between them
PLAUSIBLE_PIXEL_MM = (0.05, 10.0)  # a pixel spacing outside this suggests a header without a real one
SPACING_TOLERANCE = 2.0  # spacing up to this factor outside the training range is fine
FOV_TOLERANCE = 1.5  # field of view likewise

# Body region from the image.
REGION_MM = 3.0  # slices are averaged in-plane to about this pixel size
REGION_SLICES = 48  # at most this many slices, evenly spread, are looked at
BONE_HU = 150.0
BRAIN_HU = (-10.0, 90.0)
SKULL_ENCLOSES_CM2 = 40.0
BRAIN_SHARE = 0.7
LUNG_AIR_HU = -400.0
LUNG_SHARE = 0.15
LUNG_BASE_SHARE = 0.04
LUNG_BASE_POSTERIOR = 0.4
TRUNK_WIDTH_MM = 200.0
REGION_MIN_SHARE = 0.05

# DICOM BodyPartExamined (upper case, without spaces, '_' or '-') -> regions.
BODY_PARTS: Dict[str, Tuple[str, ...]] = {
    "HEAD": ("head",), "BRAIN": ("head",), "SKULL": ("head",), "HEADNECK": ("head", "neck"), "NECK": ("neck",),
    "CHEST": ("chest",), "THORAX": ("chest",), "LUNG": ("chest",), "LUNGS": ("chest",), "HEART": ("chest",),
    "ABDOMEN": ("abdomen",), "ABD": ("abdomen",), "LIVER": ("abdomen",), "KIDNEY": ("abdomen",), "PELVIS": ("pelvis",),
    "CHESTABDOMEN": ("chest", "abdomen"), "ABDOMENPELVIS": ("abdomen", "pelvis"), "ABDPELVIS": ("abdomen", "pelvis"),
    "CHESTABDOMENPELVIS": ("chest", "abdomen", "pelvis"), "CHESTABDPELVIS": ("chest", "abdomen", "pelvis"),
    "WHOLEBODY": ("head", "neck", "chest", "abdomen", "pelvis"),
}
SAME_REGION = {"pelvis": "abdomen"}  # the image tells the trunk below the lungs, not abdomen from pelvis

INTENSITY_WORDS = {
    "hounsfield": "CT in Hounsfield units",
    "display": "8-bit display grey levels (screenshots, no HU)",
}


class DomainError(InputError):
    """An input refused by the domain check (absurd geometry, or any warning with --strict)."""


@dataclass
class InputProfile:
    """What the domain check found out about an input."""

    source: str
    dims: int
    modality: Optional[str]
    intensity: str  # "hounsfield", "display", "raw", "label_map" or "unknown"
    intensity_detail: str
    regions: Tuple[str, ...]  # empty: unknown
    region_detail: str
    spacing: Tuple[float, float, float]
    size: Tuple[int, int, int]
    field_of_view_mm: float  # the larger in-plane extent
    refusals: List[str] = field(default_factory=list)  # absurd geometry
    warnings: List[str] = field(default_factory=list)  # problems whatever the model

    @property
    def is_ct_values(self) -> bool:
        return self.intensity in ("hounsfield", "display")

    @property
    def region_words(self) -> str:
        return " and ".join(self.regions) if self.regions else "unknown"

    def to_dict(self) -> Dict[str, Any]:
        record = asdict(self)
        record["regions"] = list(self.regions)
        return record


# ------------------------------------------------------------------- the input


def _sample_values(array: np.ndarray, limit: int = 1 << 21) -> np.ndarray:
    step = max(1, int(math.ceil((array.size / limit) ** (1 / 3))))
    return np.asarray(array[::step, ::step, ::step]).ravel()


def classify_intensity(volume: Volume) -> Tuple[str, str]:
    """The input's intensity scale and a sentence saying why (see the constants above)."""
    if volume.metadata.get("intensity") == "display":
        return "display", "8-bit display image (PNG/JPEG)"
    values = _sample_values(volume.array)
    if values.size == 0:
        return "unknown", "no voxels"
    low, high = float(values.min()), float(values.max())
    integral = values.dtype.kind in "iub" or bool(np.all(values == np.rint(values)))
    if integral and low >= 0:
        distinct = np.unique(values).size
        if distinct <= LABEL_MAP_VALUES:
            return "label_map", f"the input is a label map or mask, not a CT: {distinct} distinct whole values {low:g}..{high:g}"
    air = float(np.count_nonzero(values <= AIR_BELOW_HU)) / values.size
    if air >= AIR_SHARE:
        return "hounsfield", f"values {low:g}..{high:g} HU, {100 * air:.1f}% air (at most {AIR_BELOW_HU:g} HU)"
    if low >= 0 and high <= DISPLAY_MAX:
        return "display", f"the input holds 8-bit display grey levels, not Hounsfield units: values {low:g}..{high:g}"
    if low >= 0:
        return "raw", (f"the input holds raw scanner values, not Hounsfield units: {low:g}..{high:g} with no air near "
                       "-1000 HU (the DICOM rescale slope/intercept not applied?)")
    return "unknown", f"the input's values are not Hounsfield units, or it is a crop without air: {low:g}..{high:g}, no air near -1000 HU"


def _regions_from_dicom(volume: Volume) -> Tuple[Tuple[str, ...], str]:
    part = volume.metadata.get("body_part_examined")
    if not part:
        return (), ""
    key = "".join(ch for ch in str(part).upper() if ch.isalnum())
    regions = BODY_PARTS.get(key, ())
    return regions, (f"DICOM BodyPartExamined {part!r}" if regions else "")


def _small_slices(volume: Volume, offset: float) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Up to REGION_SLICES evenly spread slices averaged in-plane to about REGION_MM, as float32 HU."""
    depth = volume.array.shape[0]
    chosen = np.unique(np.linspace(0, depth - 1, min(depth, REGION_SLICES)).round().astype(int))
    shrink = max(1, int(round(REGION_MM / min(volume.grid.spacing[:2]))))
    image = sitk.GetImageFromArray(np.asarray(volume.array[chosen], dtype=np.float32) + np.float32(offset))
    if shrink > 1:
        image = sitk.BinShrink(image, [shrink, shrink, 1])
    return sitk.GetArrayFromImage(image), (volume.grid.spacing[0] * shrink, volume.grid.spacing[1] * shrink)


def slice_regions(volume: Volume, offset: float = 0.0) -> List[Optional[str]]:
    """The region ("head", "chest", "abdomen" or None) of each slice looked at; ``offset`` is
    added to the values first (``-RAW_OFFSET`` for raw scanner values)."""
    ct, (sx, sy) = _small_slices(volume, offset)
    pixel_cm2 = sx * sy / 100.0
    grid = Grid((ct.shape[2], ct.shape[1], ct.shape[0]), (sx, sy, 1.0), (0.0, 0.0, 0.0))
    body = body_mask(Volume(ct, grid))
    bone = sitk.GetImageFromArray((ct > BONE_HU).astype(np.uint8))
    bone = sitk.GetArrayFromImage(sitk.BinaryMorphologicalClosing(bone, [1, 1, 0]))
    inside_bone = bone.copy()
    fill_holes_per_slice(inside_bone)
    enclosed = inside_bone.astype(bool) & ~bone.astype(bool)
    brain = enclosed & (ct > BRAIN_HU[0]) & (ct < BRAIN_HU[1])
    direction = volume.grid.direction
    rows, columns = np.mgrid[0 : ct.shape[1], 0 : ct.shape[2]]
    posterior = direction[1, 0] * columns * sx + direction[1, 1] * rows * sy  # LPS y: + is posterior
    regions: List[Optional[str]] = []
    for k in range(ct.shape[0]):
        inside = body[k]
        if not inside.any():
            regions.append(None)
            continue
        enclosed_cm2 = np.count_nonzero(enclosed[k]) * pixel_cm2
        if enclosed_cm2 >= SKULL_ENCLOSES_CM2 and np.count_nonzero(brain[k]) >= BRAIN_SHARE * np.count_nonzero(enclosed[k]):
            regions.append("head")
            continue
        air = inside & (ct[k] < LUNG_AIR_HU)
        air_share = np.count_nonzero(air) / np.count_nonzero(inside)
        behind = float(np.mean(posterior[air] > posterior[inside].mean())) if air.any() else 0.0
        if air_share >= LUNG_SHARE or (air_share >= LUNG_BASE_SHARE and behind >= LUNG_BASE_POSTERIOR):
            regions.append("chest")
            continue
        j, i = np.nonzero(inside)
        width = max((i.max() - i.min() + 1) * sx, (j.max() - j.min() + 1) * sy)
        regions.append("abdomen" if width >= TRUNK_WIDTH_MM else None)
    return regions


def _regions_from_image(volume: Volume, intensity: str) -> Tuple[Tuple[str, ...], str]:
    if intensity not in ("hounsfield", "raw"):
        return (), f"not checked: the image holds {intensity.replace('_', ' ')} values"
    offset = -RAW_OFFSET if intensity == "raw" else 0.0
    per_slice = slice_regions(volume, offset)
    needed = max(1, int(math.ceil(REGION_MIN_SHARE * len(per_slice))))
    counts = {region: per_slice.count(region) for region in ("head", "chest", "abdomen")}
    regions = tuple(region for region, count in counts.items() if count >= needed)
    detail = ", ".join(f"{region} in {count}" for region, count in counts.items() if count)
    detail = f"from the image: {detail or 'no region'} of {len(per_slice)} slices looked at"
    return regions, detail + (", values read as HU + 1024" if offset else "")


def _geometry(volume: Volume) -> Tuple[List[str], List[str]]:
    """Refusals and warnings about the grid itself, whatever the model."""
    refusals: List[str] = []
    warnings: List[str] = []
    spacing, size = volume.grid.spacing, volume.grid.size
    dims = int(volume.metadata.get("dims", 3))
    used = spacing if dims == 3 and size[2] > 1 else spacing[:2]
    if not all(math.isfinite(s) and s > 0 for s in used):
        refusals.append(f"has no valid voxel spacing ({', '.join(f'{s:g}' for s in spacing)} mm)")
        return refusals, warnings
    if min(size[:2]) < MIN_VOXELS_IN_PLANE:
        refusals.append(f"is an image of {size[0]} x {size[1]} x {size[2]} voxels: too few to be a CT (at least {MIN_VOXELS_IN_PLANE} per row and column)")
    if not all(PLAUSIBLE_PIXEL_MM[0] <= s <= PLAUSIBLE_PIXEL_MM[1] for s in spacing[:2]):
        warnings.append(f"pixel spacing {spacing[0]:g} x {spacing[1]:g} mm is implausible for a CT (a header without a real spacing?)")
    if dims == 3 and size[2] > 1 and spacing[2] > MAX_SLICE_GAP_MM:
        warnings.append(f"slices are {spacing[2]:g} mm apart (more than {MAX_SLICE_GAP_MM:g} mm): whole structures lie between them")
    return refusals, warnings


def profile_input(volume: Volume) -> InputProfile:
    """Everything the domain check needs to know about ``volume`` (a fraction of a second)."""
    grid = volume.grid
    refusals, warnings = _geometry(volume)
    intensity, intensity_detail = classify_intensity(volume)
    modality = volume.metadata.get("modality")
    if modality not in (None, "CT"):
        warnings.append(f"modality is {modality} (DICOM), not CT")
    if intensity in ("raw", "label_map", "unknown"):
        warnings.append(intensity_detail)
    regions, region_detail = _regions_from_dicom(volume)
    if not regions and not refusals:
        regions, region_detail = _regions_from_image(volume, intensity)
    fov = max(grid.size[0] * grid.spacing[0], grid.size[1] * grid.spacing[1])
    return InputProfile(
        source=str(volume.metadata.get("source", "input")),
        dims=int(volume.metadata.get("dims", 3)),
        modality=modality,
        intensity=intensity,
        intensity_detail=intensity_detail,
        regions=regions,
        region_detail=region_detail,
        spacing=grid.spacing,
        size=grid.size,
        field_of_view_mm=float(fov),
        refusals=refusals,
        warnings=warnings,
    )


# ------------------------------------------------------------------- against a model


def _canonical(regions: Sequence[str]) -> set:
    return {SAME_REGION.get(r, r) for r in regions}


def region_fits(profile: InputProfile, domain: Domain) -> Optional[bool]:
    """True or False when both regions are known; None when either is not."""
    if not profile.regions or not domain.regions:
        return None
    return bool(_canonical(profile.regions) & _canonical(domain.regions))


def _outside(value: float, bounds: Optional[Tuple[float, float]], tolerance: float) -> bool:
    return bounds is not None and not (bounds[0] / tolerance <= value <= bounds[1] * tolerance)


def _mm(bounds: Tuple[float, float]) -> str:
    low, high = bounds
    return f"{low:g} mm" if low == high else f"{low:g}-{high:g} mm"


@dataclass
class DomainCheck:
    """One model against one input: warnings (each a full sentence naming the model), and
    the reasons it must not be chosen for this input automatically."""

    model: str
    role: str  # "classifier" or "segmenter"
    warnings: List[str] = field(default_factory=list)
    unfit: List[str] = field(default_factory=list)  # why it is not chosen automatically
    region_fit: Optional[bool] = None


def check_domain(profile: InputProfile, name: str, domain: Domain, role: str = "classifier") -> DomainCheck:
    """Warnings for running model ``name`` (trained on ``domain``) on the input of ``profile``."""
    check = DomainCheck(name, role)
    if not profile.is_ct_values:
        check.unfit.append(profile.intensity_detail)
    if profile.modality not in (None, domain.modality):
        check.unfit.append(f"modality {profile.modality}, {name} was trained on {domain.modality}")
    if profile.intensity == "display" and domain.intensity == "hounsfield":
        check.warnings.append(f"the input holds 8-bit display grey levels (no HU); {name} was trained on CT in Hounsfield units")
    if profile.intensity == "hounsfield" and domain.intensity == "display":
        check.warnings.append(
            f"{name} was trained on 8-bit display screenshots (no HU): it sees this CT in Hounsfield units through one "
            "fixed display window, so its output means little")
    if not domain.stated:
        check.unfit.append(f"{name} states no training domain (body region, spacing)")
        return check
    check.region_fit = region_fits(profile, domain)
    made_for = " and ".join(domain.regions)
    if check.region_fit is False:
        check.warnings.append(f"the input looks like {profile.region_words} CT ({profile.region_detail}); {name} was made for {made_for} CT")
        check.unfit.append(f"made for {made_for} CT, the input is {profile.region_words} CT")
    elif check.region_fit is None:
        check.unfit.append(f"body region of the input unknown ({profile.region_detail})")
    spacing = profile.spacing
    in_plane = (spacing[0] + spacing[1]) / 2
    if _outside(in_plane, domain.in_plane_spacing_mm, SPACING_TOLERANCE):
        check.warnings.append(f"pixel spacing {in_plane:.2f} mm is far from {name}'s training data ({_mm(domain.in_plane_spacing_mm)})")  # type: ignore[arg-type]
    if profile.dims == 3 and profile.size[2] > 1 and _outside(spacing[2], domain.slice_spacing_mm, SPACING_TOLERANCE):
        check.warnings.append(f"slice spacing {spacing[2]:.2f} mm is far from {name}'s training data ({_mm(domain.slice_spacing_mm)})")  # type: ignore[arg-type]
    if _outside(profile.field_of_view_mm, domain.field_of_view_mm, FOV_TOLERANCE):
        check.warnings.append(f"field of view {profile.field_of_view_mm:.0f} mm is far from {name}'s training data ({_mm(domain.field_of_view_mm)})")  # type: ignore[arg-type]
    return check


@dataclass
class DomainReport:
    """The input's profile and each model's check: what result.json records under ``domain``."""

    profile: InputProfile
    checks: List[DomainCheck]

    @property
    def warnings(self) -> List[str]:
        found = list(self.profile.warnings)
        for check in self.checks:
            found += [w for w in check.warnings if w not in found]
        return found

    def to_dict(self) -> Dict[str, Any]:
        return {"input": self.profile.to_dict(), "models": [asdict(c) for c in self.checks]}


def check_input(volume: Volume, classifier: LoadedModel, segmenter: Optional[LoadedModel] = None,
                profile: Optional[InputProfile] = None) -> DomainReport:
    """The domain report of running ``classifier`` (and ``segmenter``) on ``volume``."""
    profile = profile if profile is not None else profile_input(volume)
    models = [(classifier, "classifier")] + ([(segmenter, "segmenter")] if segmenter is not None else [])
    return DomainReport(profile, [check_domain(profile, m.metadata.name, m.metadata.training_domain, role) for m, role in models])


def enforce(report: DomainReport, strict: bool) -> None:
    """Raise :class:`DomainError` for absurd geometry, and with ``strict`` for any warning."""
    if report.profile.refusals:
        raise DomainError(report.profile.source, "; ".join(report.profile.refusals))
    if strict and report.warnings:
        raise DomainError(report.profile.source, "refused (--strict): " + "; ".join(report.warnings))
