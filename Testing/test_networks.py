"""The allowlisted network registry: every entry builds in 2D and 3D, bad requests are refused."""
from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn

from CTExplainLib.networks import NETWORKS, CompactCNN, build_network, get_spec, list_networks

SEGMENTERS = ["UNet", "SegResNet", "SwinUNETR", "DynUNet", "UNETR", "BasicUNet", "AttentionUnet"]
EXPECTED = {
    "DenseNet121", "DenseNet169", "DenseNet201", "ResNet10", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152",
    "ResNet200", "SEResNet50", "EfficientNetBN", "CompactCNN", *SEGMENTERS,
}
# Deep classifiers are built and run on the meta device (shapes only, no arithmetic): for real
# each takes tens of seconds here; their layers are those of the smaller ones of their family.
HEAVY = {"DenseNet169", "DenseNet201", "ResNet101", "ResNet152", "ResNet200"}
# Small inputs every entry accepts (UNet needs sizes divisible by 16, SwinUNETR by 32).
SHAPES = {2: (64, 64), 3: (32, 32, 32)}
# Constructor arguments some networks need, at small sizes.
EXTRA = {
    "UNETR": lambda dims: {"img_size": SHAPES[dims], "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
    "DynUNet": lambda dims: {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2]},
    "AttentionUnet": lambda dims: {"channels": [4, 8, 16], "strides": [2, 2]},
    # Batch norm: instance norm refuses the 1-voxel bottleneck a 32-voxel input leaves.
    "SwinUNETR": lambda dims: {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm_name": "batch"},
    "SegResNet": lambda dims: {"init_filters": 8},
    "BasicUNet": lambda dims: {"features": [4, 4, 8, 8, 16, 4]},
}


def uniform(dims: int, in_channels: int = 2, out_channels: int = 3, **extra) -> Dict:
    return {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels, **extra}


def test_registry_lists_the_expected_networks() -> None:
    assert set(list_networks()) == EXPECTED
    assert list_networks("segmenter") == SEGMENTERS
    assert set(list_networks("classifier")) == EXPECTED - set(SEGMENTERS)
    for name, spec in NETWORKS.items():
        assert spec.name == name
        assert spec.kind in ("classifier", "segmenter")
        assert (spec.target_layer is None) == (spec.kind == "segmenter")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_entry_builds_and_runs(name: str, dims: int) -> None:
    torch.manual_seed(0)
    device = torch.device("meta" if name in HEAVY else "cpu")
    with device:
        model = build_network(name, uniform(dims, **EXTRA.get(name, lambda d: {})(dims))).eval()
        x = torch.randn((2, 2) + SHAPES[dims])
    spec = NETWORKS[name]
    seen: List[Tuple[int, ...]] = []
    if spec.target_layer:
        # The default target layer exists, runs once per forward and gives a spatial map.
        target = dict(model.named_modules())[spec.target_layer]
        target.register_forward_hook(lambda _m, _a, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        out = model(x)
    if spec.kind == "segmenter":
        assert out.shape == (2, 3) + SHAPES[dims]
        return
    assert out.shape == (2, 3)
    assert len(seen) == 1, f"{spec.target_layer} ran {len(seen)} times"
    assert len(seen[0]) == dims + 2 and seen[0][0] == 2
    linear = dict(model.named_modules())[spec.linear_layer]
    assert isinstance(linear, nn.Linear) and linear.out_features == 3 and linear.in_features == seen[0][1]


def test_unknown_network_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(ValueError) as info:
        build_network("torchvision.models.vgg16", uniform(3))
    message = str(info.value)
    assert "torchvision.models.vgg16" in message and "not in the allowlisted registry" in message
    assert all(name in message for name in EXPECTED)


@pytest.mark.parametrize("name", ["DenseNet121", "ResNet18", "SEResNet50", "EfficientNetBN", "UNet"])
def test_pretrained_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}.*pretrained=True is not allowed"):
        build_network(name, uniform(2, pretrained=True))


def test_pretrained_false_is_accepted() -> None:
    assert isinstance(build_network("DenseNet121", uniform(2, pretrained=False)), nn.Module)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"spatial_dims": 3, "in_channels": 1}, "missing required kwargs out_channels"),
        (uniform(4), "spatial_dims must be 2 or 3"),
        (uniform(3, in_channels=0), "in_channels must be a positive integer"),
        (uniform(3, out_channels="3"), "out_channels must be a positive integer"),
        (uniform(3, no_such_option=1), "no_such_option"),
        (uniform(3, act=nn.ReLU), "must be JSON values"),
        (uniform(3, num_classes=5), "contradicts"),
    ],
)
def test_invalid_kwargs_are_refused(kwargs: Dict, problem: str) -> None:
    with pytest.raises(ValueError, match="ResNet18") as info:
        build_network("ResNet18", kwargs)
    assert problem in str(info.value)


def test_efficientnet_variants() -> None:
    model = build_network("EfficientNetBN", uniform(2, model_name="efficientnet-b1"))
    assert isinstance(model, nn.Module)
    with pytest.raises(ValueError, match="efficientnet-b0.*efficientnet-b7"):
        build_network("EfficientNetBN", uniform(2, model_name="efficientnet-l2"))


@pytest.mark.parametrize("dims", [2, 3])
def test_efficientnet_is_monai_efficientnet_with_its_own_head_activation(dims: int) -> None:
    """Same state dict keys and outputs as MONAI's EfficientNetBN, so MONAI weights load."""
    from monai.networks.nets import EfficientNetBN

    torch.manual_seed(0)
    ours = build_network("EfficientNetBN", uniform(dims)).eval()
    monai = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=dims, in_channels=2, num_classes=3).eval()
    monai.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn((1, 2) + SHAPES[dims])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), monai(x))


def test_native_kwargs_and_case_of_monai_bundles() -> None:
    model = build_network("resnet18", {"spatial_dims": 3, "n_input_channels": 2, "num_classes": 4})
    assert model.fc.out_features == 4 and model.conv1.in_channels == 2
    assert get_spec("seresnet50").name == "SEResNet50"


def test_compact_cnn_is_configurable() -> None:
    model = build_network("CompactCNN", uniform(3, channels=[8, 16], dropout=0.0))
    assert isinstance(model, CompactCNN)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv3d)] == [8, 16]
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 2, 16, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match="CompactCNN"):
        build_network("CompactCNN", uniform(3, channels=[]))


def test_unet_defaults_and_depth() -> None:
    model = build_network("UNet", uniform(3, channels=[8, 16, 32], num_res_units=1))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
