"""CTExplain model packages: a folder with ``ctexplain-model.json`` and ``model.safetensors``.

Loading never unpickles: weights are read with safetensors, networks are built only from
the allowlisted registry in :mod:`networks`. A MONAI bundle (``configs/metadata.json``,
``configs/inference.json``, ``models/model.pt``) is read too when its network is in the
registry; its state dict is read with ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .errors import ModelPackageError
from .package_files import METADATA_FILE, WEIGHTS_FILE

FORMAT = "ctexplain-model/1"
TASKS = ("binary", "multiclass", "multilabel", "segmentation")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
RESIZE_POLICIES = ("crop", "fit", "fit_body")
FIT_POLICIES = ("fit", "fit_body")
NORMALISE_POLICIES = ("none", "image", "histogram")
ORIENTATION_LETTERS = ({"L", "R"}, {"P", "A"}, {"S", "I"})


@dataclass
class ChannelSpec:
    """One input channel: an intensity window (HU) mapped to [0, 1]."""

    name: str
    level: float
    width: float


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
    # a tenth of the display range), for screenshots whose margins around the body vary.
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


@dataclass
class ClassSpec:
    """A class of a classifier, or a segment of a segmenter (its label value is its index)."""

    name: str
    color: Tuple[float, float, float] = (1.0, 0.0, 0.0)  # RGB in [0, 1]
    # Segments only: at most this many 3D connected parts are kept (see segment.keep_largest_parts),
    # an anatomical prior such as two lungs or one liver; None keeps every part.
    max_parts: Optional[int] = None


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
    volume_score: str = "max"  # 2D models on a volume: "max" or "topk_mean"
    volume_score_k: int = 3
    untrained: bool = False
    provenance: Dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> List[str]:
        return [c.name for c in self.classes]

    def to_json(self) -> Dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}


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
    if resize in FIT_POLICIES and size is None:
        raise ModelPackageError(path, f"input resize {resize!r} needs a size")
    return InputSpec(
        spatial_dims=dims,
        channels=channels,
        spacing=_tuple_or_none(data.get("spacing"), dims, path, "spacing", float),
        size=size,
        orientation=_check_orientation(data.get("orientation", "LPS"), path),
        intensity=intensity,
        resize=resize,
        normalise=normalise,
        body_only=_flag(data.get("body_only", False), path, "input body_only"),
    )


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
        ClassSpec(str(c["name"]), tuple(float(v) for v in c.get("color", (1.0, 0.0, 0.0))), _max_parts(c.get("max_parts"), path, str(c["name"])))
        for c in _require(data, "classes", path)
    ]
    if not classes:
        raise ModelPackageError(path, "metadata lists no classes")
    if task != "segmentation" and any(c.max_parts is not None for c in classes):
        raise ModelPackageError(path, "max_parts applies to segments; this package is a classifier")
    volume_score = str(data.get("volume_score", "max"))
    if volume_score not in ("max", "topk_mean"):
        raise ModelPackageError(path, f"volume_score must be 'max' or 'topk_mean', got {volume_score!r}")
    return ModelMetadata(
        name=str(_require(data, "name", path)),
        version=str(data.get("version", "0")),
        task=task,
        classes=classes,
        network=str(_require(data, "network", path)),
        network_kwargs=dict(data.get("network_kwargs", {})),
        input=parse_input_spec(_require(data, "input", path), path),
        cam_target_layer=data.get("cam_target_layer"),
        cam_linear_layer=data.get("cam_linear_layer"),
        threshold=float(data.get("threshold", 0.5)),
        volume_score=volume_score,
        volume_score_k=int(data.get("volume_score_k", 3)),
        untrained=bool(data.get("untrained", False)),
        provenance=dict(data.get("provenance", {})),
    )


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
    if path.is_dir() and (path / "configs" / "metadata.json").is_file():
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


# --- MONAI bundles -------------------------------------------------------------------------


def _find_transform(node: Any, name: str) -> Optional[Dict[str, Any]]:
    """First dict in a bundle config whose ``_target_`` ends with ``name``."""
    if isinstance(node, dict):
        if str(node.get("_target_", "")).split(".")[-1] == name:
            return node
        children: Sequence[Any] = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_transform(child, name)
        if found is not None:
            return found
    return None


def _bundle_input_spec(inference: Dict[str, Any], dims: int, channels: int, roi: Optional[Sequence[int]]) -> InputSpec:
    scale = _find_transform(inference.get("preprocessing", inference), "ScaleIntensityRanged")
    if scale is not None:
        a_min, a_max = float(scale["a_min"]), float(scale["a_max"])
        window = ChannelSpec("image", (a_min + a_max) / 2, a_max - a_min)
    else:
        window = ChannelSpec("image", 40.0, 400.0)
    spacing_node = _find_transform(inference, "Spacingd")
    orientation_node = _find_transform(inference, "Orientationd")
    spacing = tuple(float(v) for v in spacing_node["pixdim"]) if spacing_node else None
    # Orientation letters name anatomical directions (the one each index increases towards), so
    # MONAI's axcodes and SimpleITK's DICOMOrient codes mean the same thing.
    orientation = str(orientation_node.get("axcodes", "LPS")) if orientation_node is not None else "LPS"
    return InputSpec(dims, [window] * max(channels, 1), spacing, tuple(int(v) for v in roi) if roi else None, orientation)


def load_monai_bundle(path: Path, device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """Read a MONAI bundle whose ``network_def`` names a registry network (JSON configs only)."""
    try:
        meta = json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelPackageError(path / "configs" / "metadata.json", f"cannot read bundle metadata: {exc}") from exc
    inference_file = path / "configs" / "inference.json"
    if not inference_file.is_file():
        raise ModelPackageError(path, "bundle has no configs/inference.json (YAML bundles are not supported)")
    inference = json.loads(inference_file.read_text(encoding="utf-8"))
    network_def = inference.get("network_def")
    if not isinstance(network_def, dict) or "_target_" not in network_def:
        raise ModelPackageError(inference_file, "bundle has no network_def with a _target_")
    network_name = str(network_def["_target_"]).split(".")[-1]
    kwargs = {k: v for k, v in network_def.items() if not k.startswith("_")}
    formats = meta.get("network_data_format", {})
    outputs = formats.get("outputs", {}).get("pred", {})
    inputs = formats.get("inputs", {}).get("image", {})
    dims = int(kwargs.get("spatial_dims", len(inputs.get("spatial_shape", [0, 0, 0]))))
    is_segmentation = outputs.get("type") == "image" or network_name.lower().endswith("unet")
    channel_names = outputs.get("channel_def", {})
    n_out = int(kwargs.get("out_channels", outputs.get("num_channels", 1)))
    classes = [ClassSpec(str(channel_names.get(str(i), f"class {i}"))) for i in range(n_out)]
    roi = _find_transform(inference, "SlidingWindowInferer")
    metadata = ModelMetadata(
        name=str(meta.get("name", path.name)),
        version=str(meta.get("version", "0")),
        task="segmentation" if is_segmentation else ("multiclass" if n_out > 1 else "binary"),
        classes=classes,
        network=network_name,
        network_kwargs=kwargs,
        input=_bundle_input_spec(inference, dims, int(inputs.get("num_channels", 1)), roi.get("roi_size") if roi else None),
        provenance={"monai_bundle": str(path), "description": meta.get("description", ""), "licence": meta.get("copyright", "")},
    )
    network = _build(metadata, path)
    weights = path / "models" / "model.pt"
    if not weights.is_file():
        raise ModelPackageError(path, "bundle has no models/model.pt")
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or others for unsafe files
        raise ModelPackageError(weights, f"not a weights-only state dict (refused to unpickle): {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelPackageError(weights, "does not hold a state dict")
    _load_state(network, state, weights)
    return LoadedModel(metadata, network.to(device).eval(), path)
