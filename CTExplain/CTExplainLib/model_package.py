"""CTExplain model packages: a folder with ``ctexplain-model.json`` and ``model.safetensors``.

Loading never unpickles: weights are read with safetensors, networks are built only from
the allowlisted registry in :mod:`networks`. A MONAI bundle folder (``configs/metadata.json``)
is read by :mod:`.bundles` without running any of its code.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .errors import ModelPackageError
from .package_files import METADATA_FILE, WEIGHTS_FILE

FORMAT = "ctexplain-model/1"
TASKS = ("binary", "multiclass", "multilabel", "segmentation")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
RESIZE_POLICIES = ("crop", "fit", "fit_body", "stretch")
FIT_POLICIES = ("fit", "fit_body")
NORMALISE_POLICIES = ("none", "image", "histogram")
# How a 2D model's slice probabilities become one per volume (classify.volume_score).
VOLUME_SCORES = ("max", "topk_mean", "noisy_or")
ORIENTATION_LETTERS = ({"L", "R"}, {"P", "A"}, {"S", "I"})
WINDOW_BLENDS = ("constant", "gaussian")
WINDOW_PADDINGS = ("constant", "reflect", "replicate", "circular")
CROP_MODES = ("nodule", "point")
BODY_REGIONS = ("head", "neck", "chest", "abdomen", "pelvis")
DOMAIN_INTENSITIES = ("hounsfield", "display")


@dataclass
class ChannelSpec:
    """One input channel: an intensity window (HU) mapped to [0, 1]."""

    name: str
    level: float
    width: float


@dataclass
class CropSpec:
    """A box cut around a point before resampling (see ``CTExplainLib.points.crop``).

    "nodule": centred on the nodule's centroid (its mask's connected part nearest the point),
    in-plane ``in_plane_mm`` wide, through-plane only the slices the nodule spans; the rest of
    the model grid is air. "point": centred on the point, ``in_plane_mm`` wide, the slices
    within ``through_plane_mm / 2`` of it; for a segmenter that outlines the nodule there.
    ``outline_channel`` (mode "nodule"): the nodule's outline is one more input channel, after
    the windows (the network's in_channels counts it).
    """

    mode: str
    in_plane_mm: float
    through_plane_mm: Optional[float] = None
    outline_channel: bool = False


@dataclass
class InputSpec:
    """What the network expects and how to get it from a CT, all in physical terms."""

    spatial_dims: int
    channels: List[ChannelSpec]
    spacing: Optional[Tuple[float, ...]] = None  # mm per model axis (i, j[, k]); None keeps the input's
    size: Optional[Tuple[int, ...]] = None  # voxels per model axis (i, j[, k]); None covers the whole input
    orientation: str = "LPS"  # direction each model axis i, j, k points to (DICOM/ITK convention)
    intensity: str = "hu"  # "hu", or "display" for models trained on 8-bit windowed images
    # How the input meets ``size``: "crop" centres it at ``spacing`` and crops or pads;
    # "fit" scales the whole in-plane extent into ``size`` (one spacing for i and j, the
    # aspect ratio kept, padded), for images without a physical scale such as screenshots;
    # "fit_body" fits the in-plane box around the body instead (voxels above -500 HU, or above
    # a tenth of the display range), for screenshots whose margins around the body vary;
    # "stretch" scales each axis on its own to ``size`` (MONAI's Resized), always, even for segmenters.
    resize: str = "crop"
    # "image": after the windows, each image (each slice for 2D models) is brought to zero mean
    # and unit variance per channel, for screenshots whose brightness and contrast vary with
    # their source rather than with the tissue. "histogram": each image's histogram is
    # equalised instead (MONAI's HistogramNormalize), which also undoes differing contrast curves.
    normalise: str = "none"
    # True: in each axial slice, everything outside the body (its largest connected region, see
    # ``resize``) is set to air or black before the windows: the table, clothes and text burnt
    # into screenshots, which a network can otherwise learn as a shortcut.
    body_only: bool = False
    # MONAI's intensity transforms applied, in order, to the raw intensities (HU, or 0-255 for
    # display images) instead of the channel windows (whose level and width then only describe
    # the channel): see bundles.intensity. None: the windows.
    intensity_steps: Optional[List[Dict[str, Any]]] = None
    # MONAI's CropForegroundd: the model grid covers only the box of voxels whose raw intensity
    # is above this value, widened by ``foreground_margin`` model-grid voxels; outside it a
    # segmenter gives background. None: the whole input.
    foreground_above: Optional[float] = None
    foreground_margin: int = 0
    # Sliding-window segmentation (MONAI's SlidingWindowInferer): overlap between windows,
    # how overlapping windows are blended ("gaussian" or "constant") and how the CT is padded
    # where it is smaller than a window.
    window_overlap: float = 0.25
    window_blend: str = "gaussian"
    window_padding: str = "constant"
    # A box around a point (a nodule) instead of the whole CT; None: the whole CT.
    crop: Optional[CropSpec] = None
    # 2D models only: this many neighbouring slices on each side of a slice are fed with it, as
    # extra channels (2.5D): the windows of slice k-n, ..., k, ..., k+n in that order, the first
    # and last slice repeated at the volume's ends (preprocess.slices_with_context).
    slice_context: int = 0

    @property
    def network_channels(self) -> int:
        """The network's input channels: each window once per slice it is fed."""
        return len(self.channels) * (2 * self.slice_context + 1)


@dataclass
class ClassSpec:
    """A class of a classifier, or a segment of a segmenter (its label value is its index)."""

    name: str
    color: Tuple[float, float, float] = (1.0, 0.0, 0.0)  # RGB in [0, 1]
    # Segments only: at most this many 3D connected parts are kept (see segment.keep_largest_parts),
    # an anatomical prior such as two lungs or one liver; None keeps every part.
    max_parts: Optional[int] = None
    # Segments only: the name of another segment that no part of this one may lie wholly below
    # (towards the feet): lungs reach above the bottom of the liver, so gas in the pelvis is not lung.
    not_below: Optional[str] = None


Range = Tuple[float, float]


@dataclass
class Domain:
    """What a model was trained on, checked against every input (see ``trust/domain.py``).

    A package without a ``domain`` gets :meth:`unstated`: its intensity follows its input spec
    and nothing else is checked (nor is it chosen automatically for an input).
    """

    modality: str = "CT"
    regions: Tuple[str, ...] = ()  # of BODY_REGIONS; empty: not stated
    intensity: str = "hounsfield"  # "hounsfield", or "display": 8-bit windowed screenshots
    in_plane_spacing_mm: Optional[Range] = None  # min and max of the training images; None: no scale
    slice_spacing_mm: Optional[Range] = None
    field_of_view_mm: Optional[Range] = None  # in-plane extent of the training images
    note: str = ""  # where these numbers come from
    stated: bool = True  # False: the package says nothing of its domain

    @classmethod
    def unstated(cls, spec: "InputSpec") -> "Domain":
        return cls(intensity="display" if spec.intensity == "display" else "hounsfield", stated=False)


def _range(value: Any, path: Path, what: str) -> Optional[Range]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ModelPackageError(path, f"domain {what} must be [min, max] in mm, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 < low <= high:
        raise ModelPackageError(path, f"domain {what} must be [min, max] with 0 < min <= max, got {value!r}")
    return (low, high)


def parse_domain(data: Any, spec: "InputSpec", path: Path) -> Domain:
    """The ``domain`` of a package's metadata, validated; :meth:`Domain.unstated` when absent."""
    if data is None:
        return Domain.unstated(spec)
    if not isinstance(data, dict):
        raise ModelPackageError(path, f"domain must be an object, got {data!r}")
    regions = data.get("regions", [])
    if not isinstance(regions, list) or not regions or any(r not in BODY_REGIONS for r in regions):
        raise ModelPackageError(path, f"domain regions must be a non-empty list of {', '.join(BODY_REGIONS)}, got {regions!r}")
    intensity = data.get("intensity")
    if intensity not in DOMAIN_INTENSITIES:
        raise ModelPackageError(path, f"domain intensity must be 'hounsfield' or 'display', got {intensity!r}")
    if (intensity == "display") != (spec.intensity == "display"):
        raise ModelPackageError(path, f"domain intensity {intensity!r} contradicts the input spec's intensity {spec.intensity!r}")
    return Domain(
        modality=str(data.get("modality", "CT")),
        regions=tuple(regions),
        intensity=intensity,
        in_plane_spacing_mm=_range(data.get("in_plane_spacing_mm"), path, "in_plane_spacing_mm"),
        slice_spacing_mm=_range(data.get("slice_spacing_mm"), path, "slice_spacing_mm"),
        field_of_view_mm=_range(data.get("field_of_view_mm"), path, "field_of_view_mm"),
        note=str(data.get("note", "")),
    )


@dataclass
class ModelMetadata:
    name: str
    version: str
    task: str
    classes: List[ClassSpec]
    network: str
    network_kwargs: Dict[str, Any]
    input: InputSpec
    cam_target_layer: Optional[str] = None
    cam_linear_layer: Optional[str] = None
    threshold: float = 0.5
    volume_score: str = "max"  # 2D models on a volume: one of VOLUME_SCORES
    volume_score_k: int = 3
    untrained: bool = False
    provenance: Dict[str, Any] = field(default_factory=dict)
    # Optional: the maps' sanity check under cascading randomisation (trust/sanity.py), as
    # ``ctexplain check-model --record`` writes it.
    sanity_check: Optional[Dict[str, Any]] = None
    domain: Optional[Domain] = None  # None: unstated (see Domain.unstated)

    @property
    def class_names(self) -> List[str]:
        return [c.name for c in self.classes]

    @property
    def training_domain(self) -> Domain:
        return self.domain if self.domain is not None else Domain.unstated(self.input)

    def to_json(self) -> Dict[str, Any]:
        data = {"format": FORMAT, **asdict(self)}
        domain = data.pop("domain")
        if domain is not None:  # written as parse_domain reads it
            del domain["stated"]
            data["domain"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in domain.items()}
        return data


@dataclass
class LoadedModel:
    metadata: ModelMetadata
    network: torch.nn.Module
    path: Path

    @property
    def identity(self) -> Dict[str, Any]:
        """What result files record of the model that produced them."""
        return {
            "name": self.metadata.name,
            "version": self.metadata.version,
            "task": self.metadata.task,
            "network": self.metadata.network,
            "untrained": self.metadata.untrained,
            "path": str(self.path),
        }


def _require(data: Dict[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise ModelPackageError(path, f"metadata has no '{key}'")
    return data[key]


def _tuple_or_none(values: Any, length: int, path: Path, what: str, kind: type) -> Optional[tuple]:
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or len(values) != length:
        raise ModelPackageError(path, f"input {what} must be a list of {length} numbers, got {values!r}")
    return tuple(kind(v) for v in values)


def _check_orientation(code: str, path: Path) -> str:
    code = str(code).upper()
    axes = [next((n for n, pair in enumerate(ORIENTATION_LETTERS) if letter in pair), -1) for letter in code]
    if sorted(axes) != [0, 1, 2]:
        raise ModelPackageError(path, f"orientation {code!r} is not a 3-letter code such as LPS or RAS")
    return code


def _flag(value: Any, path: Path, what: str) -> bool:
    if not isinstance(value, bool):
        raise ModelPackageError(path, f"{what} must be true or false, got {value!r}")
    return value


def _positive_mm(value: Any, path: Path, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ModelPackageError(path, f"input crop {what} must be a positive number of millimetres, got {value!r}")
    return float(value)


def parse_crop_spec(data: Any, dims: int, size: Optional[tuple], spacing: Optional[tuple], path: Path) -> Optional[CropSpec]:
    """The input's crop, checked: a known mode, positive extents, a fixed model grid."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ModelPackageError(path, f"input crop must be an object such as {{'mode': 'nodule', 'in_plane_mm': 24}}, got {data!r}")
    unknown = sorted(set(data) - {"mode", "in_plane_mm", "through_plane_mm", "outline_channel"})
    if unknown:
        raise ModelPackageError(path, f"input crop has unknown key(s) {', '.join(unknown)}")
    mode = str(data.get("mode"))
    if mode not in CROP_MODES:
        raise ModelPackageError(path, f"input crop mode must be one of {', '.join(CROP_MODES)}, got {data.get('mode')!r}")
    if size is None or spacing is None:
        raise ModelPackageError(path, "input crop needs the model grid's size and spacing")
    if mode == "nodule" and dims != 3:
        raise ModelPackageError(path, "input crop mode 'nodule' is for 3D networks (spatial_dims 3)")
    through = data.get("through_plane_mm")
    if mode == "point":
        through = _positive_mm(through, path, "through_plane_mm")
    elif through is not None:
        raise ModelPackageError(path, "input crop mode 'nodule' takes the nodule's own slices, not through_plane_mm")
    outline = _flag(data.get("outline_channel", False), path, "input crop outline_channel")
    if outline and mode != "nodule":
        raise ModelPackageError(path, "input crop outline_channel needs mode 'nodule' (a nodule's outline)")
    return CropSpec(mode, _positive_mm(data.get("in_plane_mm"), path, "in_plane_mm"), through, outline)


def parse_input_spec(data: Dict[str, Any], path: Path) -> InputSpec:
    dims = int(_require(data, "spatial_dims", path))
    if dims not in (2, 3):
        raise ModelPackageError(path, f"spatial_dims must be 2 or 3, got {dims}")
    channels = [ChannelSpec(str(c["name"]), float(c["level"]), float(c["width"])) for c in _require(data, "channels", path)]
    if not channels or any(c.width <= 0 for c in channels):
        raise ModelPackageError(path, "input needs at least one channel, each with a positive window width")
    intensity = str(data.get("intensity", "hu"))
    if intensity not in ("hu", "display"):
        raise ModelPackageError(path, f"input intensity must be 'hu' or 'display', got {intensity!r}")
    resize = str(data.get("resize", "crop"))
    if resize not in RESIZE_POLICIES:
        raise ModelPackageError(path, f"input resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    normalise = str(data.get("normalise", "none"))
    if normalise not in NORMALISE_POLICIES:
        raise ModelPackageError(path, f"input normalise must be one of {', '.join(NORMALISE_POLICIES)}, got {normalise!r}")
    size = _tuple_or_none(data.get("size"), dims, path, "size", int)
    slice_context = data.get("slice_context", 0)
    if isinstance(slice_context, bool) or not isinstance(slice_context, int) or slice_context < 0:
        raise ModelPackageError(path, f"input slice_context must be a whole number of at least 0, got {slice_context!r}")
    if slice_context and dims != 2:
        raise ModelPackageError(path, "input slice_context applies to 2D models only")
    if (resize in FIT_POLICIES or resize == "stretch") and size is None:
        raise ModelPackageError(path, f"input resize {resize!r} needs a size")
    spacing = _tuple_or_none(data.get("spacing"), dims, path, "spacing", float)
    crop = parse_crop_spec(data.get("crop"), dims, size, spacing, path)
    if crop is not None and resize != "crop":
        raise ModelPackageError(path, f"input crop and resize {resize!r} exclude each other")
    return InputSpec(
        spatial_dims=dims,
        channels=channels,
        spacing=spacing,
        size=size,
        orientation=_check_orientation(data.get("orientation", "LPS"), path),
        intensity=intensity,
        resize=resize,
        normalise=normalise,
        body_only=_flag(data.get("body_only", False), path, "input body_only"),
        **_bundle_input_options(data, path),
        crop=crop,
        slice_context=slice_context,
    )


def _bundle_input_options(data: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The input spec's optional MONAI-preprocessing fields, checked (see InputSpec)."""
    options: Dict[str, Any] = {}
    if data.get("intensity_steps") is not None:
        from .bundles.intensity import check_steps

        try:
            options["intensity_steps"] = check_steps(data["intensity_steps"])
        except ValueError as exc:
            raise ModelPackageError(path, f"input {exc}") from exc
    if data.get("foreground_above") is not None:
        options["foreground_above"] = float(data["foreground_above"])
    margin = data.get("foreground_margin", 0)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ModelPackageError(path, f"input foreground_margin must be a whole number of at least 0, got {margin!r}")
    options["foreground_margin"] = margin
    overlap = data.get("window_overlap", 0.25)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
        raise ModelPackageError(path, f"input window_overlap must be a number in [0, 1), got {overlap!r}")
    options["window_overlap"] = float(overlap)
    for key, allowed, default in (("window_blend", WINDOW_BLENDS, "gaussian"), ("window_padding", WINDOW_PADDINGS, "constant")):
        value = str(data.get(key, default))
        if value not in allowed:
            raise ModelPackageError(path, f"input {key} must be one of {', '.join(allowed)}, got {value!r}")
        options[key] = value
    return options


def _max_parts(value: Any, path: Path, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelPackageError(path, f"segment {name!r}: max_parts must be a whole number of at least 1, got {value!r}")
    return value


def parse_metadata(data: Dict[str, Any], path: Path) -> ModelMetadata:
    if data.get("format") != FORMAT:
        raise ModelPackageError(path, f"unknown package format {data.get('format')!r} (expected {FORMAT!r})")
    task = str(_require(data, "task", path))
    if task not in TASKS:
        raise ModelPackageError(path, f"task must be one of {', '.join(TASKS)}, got {task!r}")
    classes = [
        ClassSpec(str(c["name"]), tuple(float(v) for v in c.get("color", (1.0, 0.0, 0.0))), _max_parts(c.get("max_parts"), path, str(c["name"])),
                  None if c.get("not_below") is None else str(c["not_below"]))
        for c in _require(data, "classes", path)
    ]
    if not classes:
        raise ModelPackageError(path, "metadata lists no classes")
    if task != "segmentation" and any(c.max_parts is not None or c.not_below is not None for c in classes):
        raise ModelPackageError(path, "max_parts and not_below apply to segments; this package is a classifier")
    segment_names = [c.name for c in classes[1:]]
    for c in classes:
        if c.not_below is not None and (c.not_below not in segment_names or c.not_below == c.name):
            raise ModelPackageError(path, f"segment {c.name!r}: not_below must name another of its segments ({', '.join(segment_names)}), got {c.not_below!r}")
    input_spec = parse_input_spec(_require(data, "input", path), path)
    if task == "segmentation" and input_spec.slice_context:
        raise ModelPackageError(path, "input slice_context applies to classifiers; this package is a segmenter")
    volume_score = str(data.get("volume_score", "max"))
    if volume_score not in VOLUME_SCORES:
        raise ModelPackageError(path, f"volume_score must be one of {', '.join(VOLUME_SCORES)}, got {volume_score!r}")
    input_spec = parse_input_spec(_require(data, "input", path), path)
    return ModelMetadata(
        name=str(_require(data, "name", path)),
        version=str(data.get("version", "0")),
        task=task,
        classes=classes,
        network=str(_require(data, "network", path)),
        network_kwargs=dict(data.get("network_kwargs", {})),
        input=input_spec,
        cam_target_layer=data.get("cam_target_layer"),
        cam_linear_layer=data.get("cam_linear_layer"),
        threshold=float(data.get("threshold", 0.5)),
        volume_score=volume_score,
        volume_score_k=int(data.get("volume_score_k", 3)),
        untrained=bool(data.get("untrained", False)),
        provenance=dict(data.get("provenance", {})),
        sanity_check=_sanity_check(data.get("sanity_check"), path),
        domain=parse_domain(data["domain"], input_spec, path) if data.get("domain") is not None else None,
    )


def _sanity_check(value: Any, path: Path) -> Optional[Dict[str, Any]]:
    """The optional ``sanity_check`` record: a verdict and steps, each with a correlation in [-1, 1]."""
    if value is None:
        return None
    steps = value.get("steps") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("verdict"), str) or not isinstance(steps, list) or not steps:
        raise ModelPackageError(path, "sanity_check must be an object with a 'verdict' and a non-empty list of 'steps'")
    for step in steps:
        rho = step.get("spearman_mean") if isinstance(step, dict) else None
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not -1.0 <= rho <= 1.0:
            raise ModelPackageError(path, f"sanity_check: each step needs a spearman_mean in [-1, 1], got {rho!r}")
    return dict(value)


def _build(metadata: ModelMetadata, path: Path) -> torch.nn.Module:
    from .networks import build_network  # the registry imports MONAI's networks: only when needed

    try:
        return build_network(metadata.network, metadata.network_kwargs)
    except ValueError as exc:
        raise ModelPackageError(path, str(exc)) from exc


def _load_state(network: torch.nn.Module, state: Dict[str, torch.Tensor], path: Path) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            details.append(f"{len(mismatched)} of wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise ModelPackageError(path, "weights do not match the network: " + "; ".join(details))
    network.load_state_dict(state, strict=True)


def _check_outputs(metadata: ModelMetadata, path: Path) -> None:
    expected = len(metadata.classes)
    declared = metadata.network_kwargs.get("out_channels")
    if declared is not None and int(declared) != expected:
        raise ModelPackageError(path, f"network has {declared} outputs but metadata lists {expected} classes")


def load_package(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """Load a CTExplain package folder (or a MONAI bundle folder) into an eval-mode network."""
    path = Path(path)
    if not path.exists():
        raise ModelPackageError(path, "model package not found")
    from .bundles.loader import is_monai_bundle, load_monai_bundle

    if is_monai_bundle(path):
        return load_monai_bundle(path, device)
    if not path.is_dir() or not (path / METADATA_FILE).is_file():
        raise ModelPackageError(path, f"not a model package: no {METADATA_FILE} (nor a MONAI bundle's configs/metadata.json)")
    try:
        data = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelPackageError(path / METADATA_FILE, f"cannot read metadata: {exc}") from exc
    metadata = parse_metadata(data, path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelPackageError(path, f"weights are a pickle ({pickles[0]}); CTExplain loads only {WEIGHTS_FILE} and never unpickles")
        raise ModelPackageError(path, f"no {WEIGHTS_FILE}")
    _check_outputs(metadata, path)
    network = _build(metadata, path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelPackageError(weights, f"not a readable safetensors file: {exc}") from exc
    _load_state(network, state, weights)
    return LoadedModel(metadata, network.to(device).eval(), path)


def save_package(path: Union[str, Path], metadata: ModelMetadata, network: torch.nn.Module) -> Path:
    """Write a package atomically: into a staging folder, renamed into place when complete."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        (staging / METADATA_FILE).write_text(json.dumps(metadata.to_json(), indent=2), encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path
