"""A MONAI bundle folder as a CTExplain model: its network, input spec, classes and weights.

Read: ``configs/metadata.json`` (names, task, classes), ``configs/inference.json`` (or
``.yaml``/``.yml``): its ``network_def`` (a network of the allowlisted registry, see
:mod:`~CTExplainLib.networks`), ``preprocessing`` and ``inferer`` (see :mod:`.transforms`);
weights from ``models/model.safetensors`` or ``models/model.pt`` (a state dict, read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers).
Keyword arguments of ``network_def`` that the installed MONAI's constructor no longer takes
(``img_size`` of SwinUNETR since MONAI 1.5) are dropped with a logged warning.
"""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import torch

from ..errors import ModelPackageError
from ..model_package import ChannelSpec, ClassSpec, InputSpec, LoadedModel, ModelMetadata, _load_state
from .config import BundleConfig, find_config
from .transforms import BundleInput, follow, read_inferer, read_preprocessing, target_name

LOG = logging.getLogger(__name__)

DEFAULT_WINDOW = ChannelSpec("image", 40.0, 400.0)  # names the channel only where intensity steps apply
DISPLAY_RANGE = ChannelSpec("image", 127.5, 255.0)
NETWORK_ENTRY = "network_def"
WEIGHT_FILES = ("model.safetensors", "model.pt")
WRAPPER_KEYS = ("state_dict", "model", "network")  # checkpoints that hold the state dict under one key


def is_monai_bundle(path: Path) -> bool:
    return path.is_dir() and (path / "configs" / "metadata.json").is_file()


def _metadata(path: Path) -> Dict[str, Any]:
    file = path / "configs" / "metadata.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelPackageError(file, f"cannot read bundle metadata: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelPackageError(file, "bundle metadata is not a JSON object")
    return data


def _network(config: BundleConfig, dims_hint: int) -> Tuple[str, Dict[str, Any]]:
    """(registry name, kwargs) of ``network_def``; every kwarg resolved, none run."""
    from ..networks import accepted_kwargs, constructor_default, get_spec

    if not config.has(NETWORK_ENTRY):
        raise ModelPackageError(config.path, f"bundle has no {NETWORK_ENTRY}")
    id = follow(config, NETWORK_ENTRY)
    node = config.raw(id)
    if not isinstance(node, dict) or "_target_" not in node:
        raise config.refused(id, "is not a network with a _target_")
    target = target_name(config.get(f"{id}::_target_"))
    try:
        name = get_spec(target).name
    except ValueError as exc:
        raise config.refused(id, str(exc)) from exc
    if node.get("_mode_", "default") != "default":
        raise config.refused(id, f"_mode_ {node['_mode_']!r} is not supported")
    kwargs = {key: config.get(f"{id}::{key}") for key in node if not key.startswith("_")}
    accepted = accepted_kwargs(name)
    if accepted is not None:
        aliases = {"spatial_dims", "in_channels", "out_channels", "n_input_channels", "num_classes", "pretrained", "progress"}
        dropped = sorted(key for key in kwargs if key not in accepted and key not in aliases)
        if dropped:
            LOG.warning(
                "%s: %s does not take %s in this MONAI version; dropped (a mismatch shows in the weights)",
                config.path, name, ", ".join(dropped),
            )
            kwargs = {k: v for k, v in kwargs.items() if k not in dropped}
    if "spatial_dims" not in kwargs:
        default = constructor_default(name, "spatial_dims")
        kwargs["spatial_dims"] = default if default is not inspect.Parameter.empty else dims_hint
    return name, kwargs


def _classes(meta: Dict[str, Any], count: int) -> List[ClassSpec]:
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    pred = next(iter(outputs.values()), {}) if isinstance(outputs, dict) else {}
    names = pred.get("channel_def", {}) if isinstance(pred, dict) else {}
    from ..montage import default_label_color

    return [ClassSpec(str(names.get(str(i), f"class {i}")), default_label_color(i)) for i in range(count)]


def _input_spec(state: BundleInput, dims: int, channel_names: List[str], hounsfield: bool) -> InputSpec:
    window_only = (
        len(state.steps) == 1
        and state.steps[0]["transform"] == "ScaleIntensityRange"
        and state.steps[0].get("b_min", 0) in (0, None)
        and state.steps[0].get("b_max", 1) in (1, None)
        and bool(state.steps[0].get("clip", False))
        and float(state.steps[0]["a_max"]) > float(state.steps[0]["a_min"])
    )
    if window_only:
        a_min, a_max = float(state.steps[0]["a_min"]), float(state.steps[0]["a_max"])
        base = ChannelSpec("image", (a_min + a_max) / 2, a_max - a_min)
    else:
        base = DEFAULT_WINDOW if hounsfield else DISPLAY_RANGE
    channels = [ChannelSpec(name, base.level, base.width) for name in channel_names]
    return InputSpec(
        spatial_dims=dims,
        channels=channels,
        spacing=state.spacing,
        size=state.size,
        # Orientation letters name anatomical directions (the one each index increases towards),
        # so MONAI's axcodes and SimpleITK's DICOMOrient codes mean the same thing.
        orientation=state.orientation or "LPS",
        intensity="hu" if hounsfield else "display",
        resize=state.resize,
        intensity_steps=None if window_only else list(state.steps),
        foreground_above=state.foreground_above,
        foreground_margin=state.foreground_margin,
        window_overlap=state.window_overlap,
        window_blend=state.window_blend,
        window_padding=state.window_padding,
    )


def _state_dict(path: Path) -> Tuple[Dict[str, torch.Tensor], Path]:
    folder = path / "models"
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        others = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        hint = f" (found {', '.join(others)}; TorchScript and other formats are not loaded)" if others else ""
        raise ModelPackageError(path, f"bundle has no models/{' or models/'.join(WEIGHT_FILES)}{hint}")
    if weights.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights)), weights
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelPackageError(weights, f"not a readable safetensors file: {exc}") from exc
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or others for unsafe files
        raise ModelPackageError(weights, f"not a weights-only state dict (refused to unpickle): {exc}") from exc
    while isinstance(state, dict) and len(state) == 1 and next(iter(state)) in WRAPPER_KEYS and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelPackageError(weights, "does not hold a state dict (names -> tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, weights


def bundle_metadata(path: Union[str, Path]) -> ModelMetadata:
    """What a MONAI bundle says about its model (network, classes, input spec), read without
    building the network or reading weights; nothing in it is run."""
    path = Path(path)
    meta = _metadata(path)
    inference_file = find_config(path / "configs", "inference")
    if inference_file is None:
        raise ModelPackageError(path, "bundle has no configs/inference.json (nor .yaml, .yml)")
    config = BundleConfig.read(inference_file)
    formats = meta.get("network_data_format", {})
    inputs = formats.get("inputs", {}) if isinstance(formats, dict) else {}
    image_key = next(iter(inputs), "image") if isinstance(inputs, dict) and inputs else "image"
    image = inputs.get(image_key, {}) if isinstance(inputs, dict) else {}
    name, kwargs = _network(config, len(image.get("spatial_shape", [0, 0, 0])))
    dims = int(kwargs["spatial_dims"])
    state = BundleInput()
    if not config.has("preprocessing"):
        raise ModelPackageError(inference_file, "bundle has no preprocessing entry")
    read_preprocessing(config, "preprocessing", image_key, dims, state)
    if config.has("inferer"):
        read_inferer(config, "inferer", dims, state)
    for note in state.notes:
        LOG.warning("%s: %s", inference_file, note)
    in_channels = kwargs.get("in_channels", kwargs.get("n_input_channels", image.get("num_channels", 1)))
    channel_def = image.get("channel_def", {}) if isinstance(image.get("channel_def"), dict) else {}
    channel_names = [str(channel_def.get(str(i), f"channel {i}")) for i in range(int(in_channels))]
    hounsfield = str(image.get("format", "")).lower() == "hounsfield" or str(image.get("modality", "")).upper() == "CT"
    outputs = formats.get("outputs", {}) if isinstance(formats, dict) else {}
    pred = next(iter(outputs.values()), {}) if isinstance(outputs, dict) and outputs else {}
    from ..networks import get_spec

    spec = get_spec(name)
    segmenter = spec.kind == "segmenter" or str(pred.get("format", "")).lower() == "segmentation"
    count = int(kwargs.get("out_channels", kwargs.get("num_classes", pred.get("num_channels", 1))))
    return ModelMetadata(
        name=str(meta.get("name", path.name)),
        version=str(meta.get("version", "0")),
        task="segmentation" if segmenter else ("multiclass" if count > 1 else "binary"),
        classes=_classes(meta, count),
        network=name,
        network_kwargs=kwargs,
        input=_input_spec(state, dims, channel_names, hounsfield),
        cam_target_layer=spec.target_layer,
        cam_linear_layer=spec.linear_layer,
        provenance={
            "monai_bundle": str(path),
            "config": str(inference_file),
            "description": meta.get("description", ""),
            "licence": meta.get("copyright", ""),
        },
    )


def load_monai_bundle(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """Read a MONAI bundle whose ``network_def`` names a registry network, with its weights; nothing in it is run."""
    from ..model_package import _build

    path = Path(path)
    metadata = bundle_metadata(path)
    network = _build(metadata, Path(metadata.provenance["config"]))
    state_dict, weights = _state_dict(path)
    _load_state(network, state_dict, weights)
    return LoadedModel(metadata, network.to(device).eval(), path)


def bundle_network(path: Union[str, Path]) -> torch.nn.Module:
    """The network a bundle's config describes, with fresh (random) weights: what its
    ``models/model.pt`` must fit. For tests and for making weights of the right shape."""
    from ..networks import build_network

    path = Path(path)
    inference_file = find_config(path / "configs", "inference")
    if inference_file is None:
        raise ModelPackageError(path, "bundle has no configs/inference.json (nor .yaml, .yml)")
    name, kwargs = _network(BundleConfig.read(inference_file), 3)
    return build_network(name, kwargs)


