"""The allowlist of networks a model package may name, and how to build them.

A package names its network by registry name and gives JSON keyword arguments; nothing
else is ever instantiated (no pickled modules, no import paths from files). Every entry
takes the same three uniform arguments, mapped here onto each constructor's own names:

    spatial_dims  2 or 3
    in_channels   input channels (HU windows)
    out_channels  classes (classifiers) or segments including background (segmenters)

Extra arguments are passed to the constructor as they are, provided they are JSON values
(numbers, strings, booleans, null, lists and objects of those). A constructor's own name
for a uniform argument (``num_classes``, ``n_input_channels``) is accepted too, so that
MONAI bundle configs load, as long as it agrees with the uniform one.

Each classifier's CAM target layer is the last spatial feature map before global pooling,
taken *after* its activation so that maps show where positive evidence lies:

    DenseNet121/169/201  class_layers.relu   (features -> ReLU -> GAP -> Linear ``class_layers.out``)
    ResNet10 ... 200     layer4              (its last block ends with the ReLU; -> GAP -> ``fc``)
    SEResNet50           layer4              (-> GAP -> [dropout] -> ``last_linear``)
    EfficientNetBN       _head_swish         (see below; -> GAP -> dropout -> ``_fc``)
    CompactCNN           features            (-> GAP -> dropout -> ``fc``)

Segmenters (no CAM): MONAI's UNet, SegResNet, SwinUNETR, DynUNet, UNETR, BasicUNet and
AttentionUnet, given their constructors' own keyword arguments.

MONAI's EfficientNet applies one module, ``_swish``, twice (after the stem and after the
head convolution), so no module's single call is the head's activated feature map: a hook on
``_swish`` fires twice and ``_bn1`` is taken before the activation (and plain CAM does not
hold there). :class:`EfficientNetBNCam` is MONAI's ``EfficientNetBN`` with a second,
parameter-free activation module ``_head_swish`` used after ``_bn1``; its state dict and its
outputs are those of MONAI's network, so MONAI weights load unchanged.
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

UNIFORM_KWARGS = ("spatial_dims", "in_channels", "out_channels")
# Constructors' own names for uniform kwargs, as MONAI bundle configs write them.
NATIVE_ALIASES = {"in_channels": ("n_input_channels",), "out_channels": ("num_classes",)}
EFFICIENTNET_MODELS = tuple(f"efficientnet-b{i}" for i in range(8))
RESNET_DEPTHS = (10, 18, 34, 50, 101, 152, 200)
MONAI_SEGMENTERS = ("SegResNet", "SwinUNETR", "DynUNet", "UNETR", "BasicUNet", "AttentionUnet")


@dataclass(frozen=True)
class NetworkSpec:
    """One allowlisted network: how to build it and where to explain it."""

    name: str
    builder: Callable[[Dict[str, Any]], nn.Module]  # takes the uniform + extra kwargs
    kind: str  # "classifier" or "segmenter"
    target_layer: Optional[str]  # default CAM target layer (dotted module name); None for segmenters
    linear_layer: Optional[str]  # final Linear after global average pooling, for plain CAM
    monai_class: Optional[str] = None  # the monai.networks.nets class whose constructor takes the kwargs


# --- our own small classifier -------------------------------------------------------------


class CompactCNN(nn.Module):
    """A small 2D/3D CNN: conv-BatchNorm-ReLU blocks with max-pooling, GAP, dropout, Linear.

    Every block but the last ends with a 2x max-pool: pooling right before the global
    average pool would only halve the resolution of the CAM target map (``features``).
    Its head is a global average pool and one Linear (``fc``), so plain CAM applies.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        kernel_size: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(channels)}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        pool = nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d
        gap = nn.AdaptiveAvgPool3d if spatial_dims == 3 else nn.AdaptiveAvgPool2d
        blocks: List[nn.Module] = []
        width_in = in_channels
        for index, width in enumerate(int(c) for c in channels):
            layers: List[nn.Module] = [
                conv(width_in, width, kernel_size, padding=kernel_size // 2, bias=False),
                norm(width),
                nn.ReLU(),
            ]
            if index < len(channels) - 1:
                layers.append(pool(2))
            blocks.append(nn.Sequential(*layers))
            width_in = width
        self.features = nn.Sequential(*blocks)
        self.pool = gap(1)
        self.dropout = nn.Dropout(float(dropout))
        self.fc = nn.Linear(width_in, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


# --- MONAI EfficientNet with a head activation of its own ----------------------------------


@functools.lru_cache(maxsize=None)
def _efficientnet_class() -> type:
    from monai.networks.layers.factories import Act
    from monai.networks.nets import EfficientNetBN

    class EfficientNetBNCam(EfficientNetBN):
        """MONAI EfficientNetBN whose head activation is its own module, ``_head_swish``.

        Same parameters, state dict and outputs as MONAI's; only the forward differs, in
        calling ``_head_swish`` instead of reusing ``_swish`` after ``_bn1``.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_swish = Act["memswish"]()

        def set_swish(self, memory_efficient: bool = True) -> None:
            super().set_swish(memory_efficient)
            self._head_swish = Act["memswish"]() if memory_efficient else Act["swish"](alpha=1.0)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            # Mirrors monai.networks.nets.EfficientNet.forward (MONAI 1.4 - 1.6).
            x = self._conv_stem(self._conv_stem_padding(inputs))
            x = self._swish(self._bn0(x))
            x = self._blocks(x)
            x = self._conv_head(self._conv_head_padding(x))
            x = self._head_swish(self._bn1(x))
            x = self._avg_pooling(x)
            x = x.flatten(start_dim=1)
            x = self._dropout(x)
            return self._fc(x)

    return EfficientNetBNCam


# --- builders: uniform kwargs -> constructor kwargs ----------------------------------------


def _renamed(kwargs: Dict[str, Any], network: str, mapping: Mapping[str, str]) -> Dict[str, Any]:
    """Rename uniform kwargs to the constructor's names; a native duplicate must agree."""
    result = dict(kwargs)
    for uniform, native in mapping.items():
        value = result.pop(uniform)
        if native in result and result[native] != value:
            raise ValueError(f"network {network!r}: {uniform}={value!r} contradicts {native}={result[native]!r}")
        result[native] = value
    return result


def _build_densenet121(kwargs: Dict[str, Any]) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(pretrained=False, **kwargs)


def _resnet_builder(depth: int) -> Callable[[Dict[str, Any]], nn.Module]:
    def build(kwargs: Dict[str, Any]) -> nn.Module:
        from monai.networks import nets

        native = _renamed(kwargs, f"ResNet{depth}", {"in_channels": "n_input_channels", "out_channels": "num_classes"})
        return getattr(nets, f"resnet{depth}")(pretrained=False, **native)

    return build


def _build_seresnet50(kwargs: Dict[str, Any]) -> nn.Module:
    from monai.networks.nets import SEResNet50

    return SEResNet50(pretrained=False, **_renamed(kwargs, "SEResNet50", {"out_channels": "num_classes"}))


def _build_efficientnet(kwargs: Dict[str, Any]) -> nn.Module:
    native = _renamed(kwargs, "EfficientNetBN", {"out_channels": "num_classes"})
    model_name = native.pop("model_name", "efficientnet-b0")
    if model_name not in EFFICIENTNET_MODELS:
        raise ValueError(f"network 'EfficientNetBN': model_name must be one of {', '.join(EFFICIENTNET_MODELS)}, got {model_name!r}")
    return _efficientnet_class()(model_name, pretrained=False, **native)


def _build_compact_cnn(kwargs: Dict[str, Any]) -> nn.Module:
    return CompactCNN(**kwargs)


def _monai_builder(class_name: str, **fixed: Any) -> Callable[[Dict[str, Any]], nn.Module]:
    """A MONAI network whose constructor already takes the uniform kwargs by their names."""

    def build(kwargs: Dict[str, Any]) -> nn.Module:
        from monai.networks import nets

        return getattr(nets, class_name)(**fixed, **kwargs)

    return build


def _build_unet(kwargs: Dict[str, Any]) -> nn.Module:
    from monai.networks.nets import UNet

    options = {"channels": (16, 32, 64, 128, 256), "num_res_units": 2, **kwargs}
    # Halving between every pair of levels unless told otherwise, whatever the depth.
    options.setdefault("strides", (2,) * (len(options["channels"]) - 1))
    return UNet(**options)


NETWORKS: Dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec("DenseNet121", _build_densenet121, "classifier", "class_layers.relu", "class_layers.out", "DenseNet121"),
        NetworkSpec("DenseNet169", _monai_builder("DenseNet169", pretrained=False), "classifier", "class_layers.relu", "class_layers.out", "DenseNet169"),
        NetworkSpec("DenseNet201", _monai_builder("DenseNet201", pretrained=False), "classifier", "class_layers.relu", "class_layers.out", "DenseNet201"),
        *(NetworkSpec(f"ResNet{depth}", _resnet_builder(depth), "classifier", "layer4", "fc", "ResNet") for depth in RESNET_DEPTHS),
        NetworkSpec("SEResNet50", _build_seresnet50, "classifier", "layer4", "last_linear", "SEResNet50"),
        NetworkSpec("EfficientNetBN", _build_efficientnet, "classifier", "_head_swish", "_fc", "EfficientNetBN"),
        NetworkSpec("CompactCNN", _build_compact_cnn, "classifier", "features", "fc"),
        NetworkSpec("UNet", _build_unet, "segmenter", None, None, "UNet"),
        *(NetworkSpec(name, _monai_builder(name), "segmenter", None, None, name) for name in MONAI_SEGMENTERS),
    )
}


def accepted_kwargs(name: str) -> Optional[List[str]]:
    """The keyword arguments the constructor behind registry network ``name`` takes (its own
    and, through ``**kwargs``, its base classes'), or None when they cannot be listed."""
    spec = get_spec(name)
    if spec.monai_class is None:
        target: Any = CompactCNN
    else:
        from monai.networks import nets

        target = getattr(nets, spec.monai_class)
    names: List[str] = []
    for cls in target.__mro__:
        if cls in (nn.Module, object) or "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters
        names.extend(p for p, v in parameters.items() if p != "self" and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL))
        if not any(v.kind == v.VAR_KEYWORD for v in parameters.values()):
            return sorted(set(names))
    return None


def constructor_default(name: str, key: str) -> Any:
    """The default the constructor behind ``name`` gives ``key`` (``inspect.Parameter.empty`` when none)."""
    spec = get_spec(name)
    if spec.monai_class is None:
        return inspect.Parameter.empty
    from monai.networks import nets

    parameter = inspect.signature(getattr(nets, spec.monai_class).__init__).parameters.get(key)
    return inspect.Parameter.empty if parameter is None else parameter.default


def list_networks(kind: Optional[str] = None) -> List[str]:
    """Registry names, optionally only those of one kind ("classifier" or "segmenter")."""
    return [name for name, spec in NETWORKS.items() if kind is None or spec.kind == kind]


def get_spec(name: str) -> NetworkSpec:
    """The registry entry for ``name``; case is ignored (MONAI bundles write ``resnet18``)."""
    if name in NETWORKS:
        return NETWORKS[name]
    by_lower = {key.lower(): spec for key, spec in NETWORKS.items()}
    spec = by_lower.get(str(name).lower())
    if spec is None:
        raise ValueError(f"network {name!r} is not in the allowlisted registry; allowed: {', '.join(NETWORKS)}")
    return spec


def _is_json_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


def _checked_kwargs(name: str, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"network {name!r}: kwargs must be a mapping, got {type(kwargs).__name__}")
    checked = dict(kwargs)
    for uniform, aliases in NATIVE_ALIASES.items():
        for alias in aliases:
            if uniform not in checked and alias in checked:
                checked[uniform] = checked[alias]
    missing = [key for key in UNIFORM_KWARGS if key not in checked]
    if missing:
        raise ValueError(f"network {name!r}: missing required kwargs {', '.join(missing)}")
    if checked["spatial_dims"] not in (2, 3) or isinstance(checked["spatial_dims"], bool):
        raise ValueError(f"network {name!r}: spatial_dims must be 2 or 3, got {checked['spatial_dims']!r}")
    for key in ("in_channels", "out_channels"):
        value = checked[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"network {name!r}: {key} must be a positive integer, got {value!r}")
    if checked.pop("pretrained", False):
        raise ValueError(
            f"network {name!r}: pretrained=True is not allowed: CTExplain never downloads weights; "
            "ship them in the model package instead"
        )
    checked.pop("progress", None)  # only meaningful for downloads
    bad = sorted(key for key, value in checked.items() if not _is_json_value(value))
    if bad:
        raise ValueError(f"network {name!r}: kwargs must be JSON values (numbers, strings, lists...); not: {', '.join(bad)}")
    return checked


def build_network(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build registry network ``name`` from uniform kwargs plus constructor extras.

    Raises ``ValueError`` naming the network when it is not allowlisted or the kwargs are
    invalid (missing, wrong type, unknown to the constructor, ``pretrained=True``).
    """
    spec = get_spec(name)
    checked = _checked_kwargs(spec.name, kwargs)
    try:
        network = spec.builder(checked)
    except ValueError as exc:
        if spec.name in str(exc):
            raise
        raise ValueError(f"network {spec.name!r}: invalid kwargs {sorted(checked)}: {exc}") from exc
    except (TypeError, KeyError, AssertionError, IndexError) as exc:
        raise ValueError(f"network {spec.name!r}: invalid kwargs {sorted(checked)}: {exc}") from exc
    logger.debug("built %s (%s) with %s", spec.name, type(network).__name__, checked)
    return network
