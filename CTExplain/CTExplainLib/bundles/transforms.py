"""A bundle's preprocessing and inferer, mapped onto the package's input spec.

Each transform of the bundle's ``preprocessing`` (a ``Compose``, or a list) that acts on the
image is mapped as follows; any other transform is refused with its name, and so is any
keyword argument of these that is not read or listed as harmless below:

    LoadImaged, EnsureChannelFirstd, EnsureTyped, ToTensord, CastToTyped (to a float type)
                          nothing to do: CTExplain loads the image itself
    Orientationd          ``orientation`` (axcodes, e.g. RAS)
    Spacingd              ``spacing`` (pixdim, in the axes after Orientationd)
    ScaleIntensityRanged  a window channel (level, width) when it alone maps [a_min, a_max] onto
                          [0, 1], clipped; else an intensity step
    ScaleIntensityd, NormalizeIntensityd
                          intensity steps (MONAI's own transforms, see :mod:`.intensity`)
    CropForegroundd       ``foreground_above`` (the image's default foreground, values > 0,
                          taken back through the ScaleIntensityRanged before it) and
                          ``foreground_margin``
    Resized               ``size``, with ``resize="stretch"`` (each axis scaled on its own)

The inferer: ``SlidingWindowInferer`` gives ``size`` (roi_size), ``window_overlap``,
``window_blend`` (mode) and ``window_padding`` (padding_mode); ``SimpleInferer`` nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import BundleConfig
from .intensity import STEPS

REFERENCE_PREFIXES = ("@", "$@")
# Keyword arguments that change nothing CTExplain computes (bookkeeping, dtypes, laziness).
COMMON_HARMLESS = ("keys", "allow_missing_keys", "meta_keys", "meta_key_postfix", "lazy", "dtype", "_target_", "_disabled_", "_desc_", "_requires_")
NO_OPS = ("LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "ToNumpy", "AddChannel", "AsChannelFirst", "Identity", "CastToType")
FLOAT_TYPES = ("float16", "float32", "float64", "bfloat16")
SPACING_MODES = ("bilinear", "linear", "trilinear")
RESIZE_MODES = ("bilinear", "linear", "trilinear", "area", "bicubic")
SLIDING_WINDOW = ("SlidingWindowInferer", "SlidingWindowInfererAdapt")
SIMPLE_INFERERS = ("SimpleInferer",)
SLIDING_WINDOW_HARMLESS = ("sw_batch_size", "device", "sw_device", "progress", "cache_roi_weight_map", "cpu_thresh", "buffer_steps", "buffer_dim", "with_coord")


@dataclass
class BundleInput:
    """What the preprocessing and inferer say, before it becomes an InputSpec."""

    orientation: Optional[str] = None
    spacing: Optional[Tuple[float, ...]] = None
    size: Optional[Tuple[int, ...]] = None
    resize: str = "crop"
    steps: List[Dict[str, Any]] = field(default_factory=list)
    foreground_above: Optional[float] = None
    foreground_margin: int = 0
    window_overlap: float = 0.25
    window_blend: str = "gaussian"
    window_padding: str = "constant"
    notes: List[str] = field(default_factory=list)


def target_name(target: Any) -> str:
    """``monai.transforms.Spacingd`` -> ``Spacingd``."""
    return str(target).split(".")[-1]


def follow(config: BundleConfig, id: str) -> str:
    """The id an entry that is only a reference (``@x`` or ``$@x``) points to, followed to the end."""
    seen = [id]
    while True:
        value = config.raw(id)
        if not isinstance(value, str):
            return id
        prefix = next((p for p in REFERENCE_PREFIXES if value.startswith(p)), None)
        target = value[len(prefix) :] if prefix else ""
        if not target or not config.has(target) or any(c in target for c in " +*[(") or target in seen:
            return id
        seen.append(target)
        id = target


def transform_ids(config: BundleConfig, id: str) -> List[str]:
    """Ids of the transforms in the entry at ``id``: a Compose, a list, or one transform."""
    id = follow(config, id)
    value = config.raw(id)
    if isinstance(value, list):
        return [t for index in range(len(value)) for t in transform_ids(config, f"{id}::{index}")]
    if isinstance(value, dict) and "_target_" in value:
        if target_name(config.get(f"{id}::_target_")) == "Compose":
            return transform_ids(config, f"{id}::transforms")
        return [id]
    raise config.refused(id, "is not a transform, a Compose or a list of transforms")


def _base(name: str) -> str:
    """Dictionary transforms share their array transform's mapping (``Spacingd`` -> ``Spacing``)."""
    return name[:-1] if name.endswith("d") and name[:-1] in MAPPERS else name


class _Reader:
    """One transform's keyword arguments: each read at most once, the rest checked at the end."""

    def __init__(self, config: BundleConfig, id: str, name: str, harmless: Sequence[str] = ()) -> None:
        self.config, self.id, self.name = config, id, name
        self.present = set(config.raw(id))
        self.read: set = set(COMMON_HARMLESS) | set(harmless)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.config.get(f"{self.id}::{key}") if key in self.present else default

    def done(self) -> None:
        unknown = sorted(self.present - self.read)
        if unknown:
            raise self.config.refused(self.id, f"{self.name} argument(s) {', '.join(unknown)} are not supported")


def _per_axis(value: Any, dims: int, what: str, reader: _Reader, kind: type) -> Tuple[Any, ...]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * dims
    if len(values) < dims or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values[:dims]):
        raise reader.config.refused(reader.id, f"{reader.name} {what} must be {dims} numbers, got {value!r}")
    return tuple(kind(v) for v in values[:dims])


def _orientation(reader: _Reader, state: BundleInput, dims: int) -> None:
    axcodes = str(reader.get("axcodes", ""))
    if reader.get("as_closest_canonical", False):
        raise reader.config.refused(reader.id, "Orientationd as_closest_canonical is not supported")
    reader.get("labels")
    if len(axcodes) != 3:
        raise reader.config.refused(reader.id, f"Orientationd axcodes must be 3 letters such as RAS, got {axcodes!r}")
    state.orientation = axcodes.upper()


def _spacing(reader: _Reader, state: BundleInput, dims: int) -> None:
    state.spacing = _per_axis(reader.get("pixdim"), dims, "pixdim", reader, float)
    modes = reader.get("mode", "bilinear")
    for mode in modes if isinstance(modes, list) else [modes]:
        if str(mode).lower() not in SPACING_MODES:
            state.notes.append(f"Spacingd mode {mode!r}: CTExplain resamples linearly")
    for key in ("padding_mode", "align_corners", "scale_extent", "recompute_affine", "ensure_same_shape"):
        reader.get(key)
    if reader.get("diagonal", False):
        raise reader.config.refused(reader.id, "Spacingd diagonal=true is not supported")


def _intensity(reader: _Reader, state: BundleInput, dims: int) -> None:
    name = _base(reader.name)
    step: Dict[str, Any] = {"transform": name}
    for key in STEPS[name]:
        value = reader.get(key)
        if value is not None:
            step[key] = value
    if name == "ScaleIntensityRange":
        ends = [step.get("a_min"), step.get("a_max")]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in ends) or ends[0] == ends[1]:
            raise reader.config.refused(reader.id, f"ScaleIntensityRanged needs two different numbers a_min and a_max, got {ends}")
    state.steps.append(step)


def _undo_range(step: Dict[str, Any], value: float) -> float:
    """The input of ScaleIntensityRange ``step`` that it maps to ``value`` (clipping aside)."""
    a_min, a_max = float(step["a_min"]), float(step["a_max"])
    b_min, b_max = float(step.get("b_min", 0.0)), float(step.get("b_max", 1.0))
    return a_min + (value - b_min) * (a_max - a_min) / (b_max - b_min)


def _crop_foreground(reader: _Reader, state: BundleInput, dims: int) -> None:
    source = reader.get("source_key")
    keys = reader.get("keys")
    if source is not None and source not in (keys if isinstance(keys, list) else [keys]):
        raise reader.config.refused(reader.id, f"CropForegroundd source_key {source!r} is not the image")
    for key in ("select_fn", "channel_indices"):
        if key in reader.present:
            raise reader.config.refused(reader.id, f"CropForegroundd {key} is not supported (only the default foreground, values > 0)")
    if int(reader.get("k_divisible", 1) or 1) != 1:
        raise reader.config.refused(reader.id, "CropForegroundd k_divisible other than 1 is not supported")
    for key in ("allow_smaller", "mode", "start_coord_key", "end_coord_key", "return_coords"):
        reader.get(key)
    margin = reader.get("margin", 0)
    state.foreground_margin = int(max(margin) if isinstance(margin, list) else margin)
    threshold = 0.0
    for step in reversed(state.steps):  # the foreground "> 0" taken back to raw intensities
        if step["transform"] != "ScaleIntensityRange" or "a_min" not in step or "a_max" not in step:
            raise reader.config.refused(reader.id, f"CropForegroundd after {step['transform']} is not supported (its foreground depends on the image's statistics)")
        if float(step.get("b_max", 1.0)) == float(step.get("b_min", 0.0)):
            raise reader.config.refused(reader.id, "CropForegroundd after a ScaleIntensityRanged onto a single value is not supported")
        threshold = _undo_range(step, threshold)
    state.foreground_above = threshold


def _resize(reader: _Reader, state: BundleInput, dims: int) -> None:
    size = _per_axis(reader.get("spatial_size"), dims, "spatial_size", reader, int)
    if any(s < 1 for s in size):
        raise reader.config.refused(reader.id, f"Resized spatial_size {list(size)} must be positive sizes (no -1)")
    if reader.get("size_mode", "all") != "all":
        raise reader.config.refused(reader.id, "Resized size_mode other than 'all' is not supported")
    mode = reader.get("mode", "area")
    if str(mode).lower() not in RESIZE_MODES:
        raise reader.config.refused(reader.id, f"Resized mode {mode!r} is not supported")
    for key in ("align_corners", "anti_aliasing", "anti_aliasing_sigma"):
        reader.get(key)
    state.size, state.resize = size, "stretch"


def _no_op(reader: _Reader, state: BundleInput, dims: int) -> None:
    if _base(reader.name) == "CastToType":
        dtype = reader.get("dtype", "float32")
        if str(dtype).split(".")[-1] not in FLOAT_TYPES:
            raise reader.config.refused(reader.id, f"CastToTyped to {dtype!r} is not supported (only float types)")
    reader.read |= reader.present  # loading options: CTExplain loads the image itself


MAPPERS: Dict[str, Callable[[_Reader, BundleInput, int], None]] = {
    "Orientation": _orientation,
    "Spacing": _spacing,
    "ScaleIntensityRange": _intensity,
    "ScaleIntensity": _intensity,
    "NormalizeIntensity": _intensity,
    "CropForeground": _crop_foreground,
    "Resize": _resize,
    **{name: _no_op for name in NO_OPS},
}


def _acts_on(config: BundleConfig, id: str, image_key: str) -> bool:
    if "keys" not in config.raw(id):
        return True
    keys = config.get(f"{id}::keys")
    return image_key in (keys if isinstance(keys, (list, tuple)) else [keys])


def read_preprocessing(config: BundleConfig, id: str, image_key: str, dims: int, state: BundleInput) -> None:
    """Map the transforms of entry ``id`` onto ``state``, in order; refuse unknown ones by name."""
    for transform_id in transform_ids(config, id):
        if config.raw(transform_id).get("_disabled_") is not None and config.get(f"{transform_id}::_disabled_"):
            continue
        name = target_name(config.get(f"{transform_id}::_target_"))
        if not _acts_on(config, transform_id, image_key):
            continue  # e.g. a label's transform: the image is not touched
        mapper = MAPPERS.get(_base(name))
        if mapper is None:
            known = ", ".join(sorted(n + "d" for n in MAPPERS))
            raise config.refused(transform_id, f"transform {name} is not supported (CTExplain maps {known})")
        reader = _Reader(config, transform_id, name)
        mapper(reader, state, dims)
        reader.done()


def read_inferer(config: BundleConfig, id: str, dims: int, state: BundleInput) -> None:
    """The sliding-window settings of entry ``id`` (a SlidingWindowInferer or a SimpleInferer)."""
    id = follow(config, id)
    name = target_name(config.get(f"{id}::_target_"))
    if name in SIMPLE_INFERERS:
        return
    if name not in SLIDING_WINDOW:
        raise config.refused(id, f"inferer {name} is not supported (only {', '.join(SLIDING_WINDOW + SIMPLE_INFERERS)})")
    reader = _Reader(config, id, name, SLIDING_WINDOW_HARMLESS)
    roi = reader.get("roi_size")
    if roi is not None:
        windows = _per_axis(roi, dims, "roi_size", reader, int)
        if state.resize == "stretch" and windows != state.size:
            # One size in the input spec: the image resized to it is also the window.
            raise config.refused(id, f"roi_size {list(windows)} differs from the Resized spatial_size {list(state.size or ())}; not supported")
        state.size = windows
    state.window_overlap = float(reader.get("overlap", 0.25))
    state.window_blend = str(reader.get("mode", "constant"))
    state.window_padding = str(reader.get("padding_mode", "constant"))
    if not math.isfinite(state.window_overlap) or not 0.0 <= state.window_overlap < 1.0:
        raise config.refused(id, f"overlap must be in [0, 1), got {state.window_overlap}")
    for key in ("sigma_scale", "cval"):
        reader.get(key)
    reader.done()
