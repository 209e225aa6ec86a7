"""All-class CAM / Grad-CAM / Grad-CAM++ against an independent per-class reference.

The reference computes each class the slow, standard way: a forward hook keeps the target
layer's output, a tensor hook its gradient, and one full forward + ``backward()`` runs per
class (parameters require grad, as in training code); the weight formulas are written again
here in NumPy, after pytorch-grad-cam. Models run in float64 so that the comparison at 1e-5
measures the method, not float32 rounding (batched vs single matrix products differ there
by ~1e-7 relative, which Grad-CAM++'s cubes amplify). Convolutions are re-drawn with He
initialisation and BatchNorm statistics randomised, because MONAI's default initialisation
makes EfficientNet's features vanish (~1e-13) and would make the comparison vacuous.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from CTExplainLib.cam import CamResult, explain, normalise_maps
from CTExplainLib.networks import NETWORKS, build_network, list_networks

CLASSIFIERS = list_networks("classifier")
# The deepest ResNet and DenseNet variants are built from the same blocks, with the same CAM
# target rule, as ResNet50 and DenseNet169 (test_networks builds each one on the meta device):
# comparing their CAMs again tests nothing new and cost 2.5 minutes (ResNet200-3D alone 55 s).
SAME_AS_SHALLOWER = {"ResNet101", "ResNet152", "ResNet200", "DenseNet201"}
CAM_CHECKED = [name for name in CLASSIFIERS if name not in SAME_AS_SHALLOWER]
N_OUT = 4
CLASSES = [3, 0, 2]  # a subset, out of order: catches mixed-up class copies
# Inputs giving a target map of at least 2 voxels per axis where cheap (2 channels).
SHAPES_3D = {"ResNet18": (32, 32, 16), "ResNet34": (32, 32, 16), "ResNet50": (32, 32, 16), "CompactCNN": (32, 32, 16)}
SHAPE_3D_DEFAULT = (64, 64, 32)
SHAPE_2D = (96, 96)
TOL = 1e-5


# --- models and inputs ---------------------------------------------------------------------


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """He-initialised convolutions, random BatchNorm affine and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / module.in_features**0.5)
    return model


def make_model(name: str, dims: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_network(name, {"spatial_dims": dims, "in_channels": 2, "out_channels": N_OUT})
    return randomise(model, seed).double().eval()


def make_input(name: str, dims: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    shape = SHAPES_3D.get(name, SHAPE_3D_DEFAULT) if dims == 3 else SHAPE_2D
    return torch.randn((batch, 2) + shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the independent reference -------------------------------------------------------------


def reference_activations_and_gradients(
    model: nn.Module, x: torch.Tensor, target_layer: str, classes: Sequence[int]
) -> Tuple[np.ndarray, List[np.ndarray], np.ndarray]:
    """A (B, K, *S), per-class dScore/dA, and logits: one full forward + backward per class."""
    module = dict(model.named_modules())[target_layer]
    store: Dict[str, torch.Tensor] = {}

    def keep(_module, _args, output):
        store["A"] = output.detach().clone()
        output.register_hook(lambda grad: store.__setitem__("G", grad.detach().clone()))

    handle = module.register_forward_hook(keep)
    gradients = []
    try:
        for c in classes:
            model.zero_grad(set_to_none=True)
            logits = model(x)
            logits[:, c].sum().backward()  # items are independent in eval mode
            gradients.append(store["G"].numpy())
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return store["A"].numpy(), gradients, logits.detach().numpy()


def _expand(weights: np.ndarray, ndim: int) -> np.ndarray:
    return weights.reshape(weights.shape + (1,) * (ndim - 2))


def reference_gradcam(activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    axes = tuple(range(2, activations.ndim))
    weights = np.mean(grads, axis=axes)
    return np.maximum((_expand(weights, activations.ndim) * activations).sum(axis=1), 0)


def reference_gradcampp(activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    axes = tuple(range(2, activations.ndim))
    grads_power_2 = grads**2
    grads_power_3 = grads_power_2 * grads
    sum_activations = np.sum(activations, axis=axes)
    aij = grads_power_2 / (2 * grads_power_2 + _expand(sum_activations, activations.ndim) * grads_power_3 + 0.000001)
    aij = np.where(grads != 0, aij, 0)
    weights = np.sum(np.maximum(grads, 0) * aij, axis=axes)
    return np.maximum((_expand(weights, activations.ndim) * activations).sum(axis=1), 0)


def reference_cam(activations: np.ndarray, row: np.ndarray) -> np.ndarray:
    return np.maximum(np.tensordot(row, activations, axes=([0], [1])), 0)


def reference_normalised(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(maps.shape[0], maps.shape[1], -1).max(axis=2)
    return maps / _expand(np.where(peak > 0, peak, 1.0), maps.ndim)


def assert_maps_equal(fast: torch.Tensor, reference: np.ndarray, what: str) -> None:
    """Raw maps to 1e-5 of their scale, and normalised maps to 1e-5."""
    fast_np = fast.numpy()
    scale = max(float(np.abs(reference).max()), 1e-300)
    np.testing.assert_allclose(fast_np, reference, rtol=TOL, atol=TOL * scale, err_msg=f"{what}: raw maps")
    normalised, raw_max = normalise_maps(fast)
    np.testing.assert_allclose(normalised.numpy(), reference_normalised(reference), atol=TOL, err_msg=f"{what}: normalised maps")
    np.testing.assert_allclose(raw_max.numpy(), reference.reshape(reference.shape[0], reference.shape[1], -1).max(axis=2), rtol=TOL, atol=TOL * scale)


def assert_informative(reference: np.ndarray, what: str) -> None:
    """Guard against a vacuous comparison: some map must vary over space."""
    per_map = reference.reshape(reference.shape[0], reference.shape[1], -1)
    assert np.any(per_map.max(axis=2) - per_map.min(axis=2) > 1e-6 * max(float(per_map.max()), 1e-300)), f"{what}: all maps flat"


# --- all classes at once == one class at a time --------------------------------------------


def _compare_network(name: str, dims: int) -> None:
    spec = NETWORKS[name]
    model = make_model(name, dims)
    x = make_input(name, dims, batch=1 if dims == 3 else 2)
    activations, gradients, ref_logits = reference_activations_and_gradients(model, x, spec.target_layer, CLASSES)
    with torch.no_grad():
        expected_logits = model(x)
    results: Dict[str, CamResult] = {m: explain(model, x, m, spec.target_layer, CLASSES, spec.linear_layer) for m in ("cam", "gradcam", "gradcampp")}
    for method, result in results.items():
        assert result.classes == CLASSES
        assert result.maps.shape == (x.shape[0], len(CLASSES)) + activations.shape[2:]
        assert result.feature_shape == activations.shape[2:]
        torch.testing.assert_close(result.logits, expected_logits, rtol=1e-10, atol=1e-10, msg=f"{name}-{dims}D {method}: logits")
    np.testing.assert_allclose(ref_logits, expected_logits.numpy(), rtol=1e-10, atol=1e-10)
    gradcam = np.stack([reference_gradcam(activations, g) for g in gradients], axis=1)
    gradcampp = np.stack([reference_gradcampp(activations, g) for g in gradients], axis=1)
    weight = dict(model.named_modules())[spec.linear_layer].weight.detach().numpy()
    cam = np.stack([reference_cam(activations, weight[c]) for c in CLASSES], axis=1)
    assert_informative(gradcam, f"{name}-{dims}D gradcam")
    assert_informative(gradcampp, f"{name}-{dims}D gradcampp")
    assert_maps_equal(results["gradcam"].maps, gradcam, f"{name}-{dims}D gradcam")
    assert_maps_equal(results["gradcampp"].maps, gradcampp, f"{name}-{dims}D gradcampp")
    assert_maps_equal(results["cam"].maps, cam, f"{name}-{dims}D cam")
    # GAP + Linear head: dScore/dA = W/N, so Grad-CAM is CAM / N (a cross-check between methods).
    n_voxels = int(np.prod(activations.shape[2:]))
    np.testing.assert_allclose(results["gradcam"].maps.numpy() * n_voxels, results["cam"].maps.numpy(), rtol=1e-8, atol=1e-10 * max(cam.max(), 1e-300))


@pytest.mark.parametrize("name", CAM_CHECKED)
def test_all_classes_match_per_class_reference_2d(name: str) -> None:
    _compare_network(name, 2)


SLOW_3D = {"ResNet34", "ResNet50", "SEResNet50"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_3D else n for n in CAM_CHECKED]
)
def test_all_classes_match_per_class_reference_3d(name: str) -> None:
    _compare_network(name, 3)


def test_default_classes_are_all_outputs() -> None:
    model = make_model("CompactCNN", 3)
    x = make_input("CompactCNN", 3)
    result = explain(model, x, "gradcam", "features")
    assert result.classes == list(range(N_OUT))
    picked = explain(model, x, "gradcam", "features", classes=[1])
    torch.testing.assert_close(result.maps[:, 1:2], picked.maps, rtol=1e-10, atol=1e-12)


# --- one pass, no parameter gradients, backward only after the target ----------------------


def _instrument(model: nn.Module, modules: Sequence[str]) -> Dict[str, Dict[str, int]]:
    """Per module: forward calls whose output needs grad, and gradients that reached it."""
    counts = {m: {"forward": 0, "graph": 0, "backward": 0} for m in modules}
    named = dict(model.named_modules())

    def hook_for(name: str):
        def hook(_module, _args, output):
            counts[name]["forward"] += 1
            if output.requires_grad:
                counts[name]["graph"] += 1

                def seen(_grad):
                    counts[name]["backward"] += 1

                output.register_hook(seen)

        return hook

    for name in modules:
        named[name].register_forward_hook(hook_for(name))
    return counts


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_backward_runs_only_after_the_target_and_leaves_parameters_alone(method: str) -> None:
    model = make_model("CompactCNN", 3)
    x = make_input("CompactCNN", 3)
    frozen = {"features.0.0.weight", "features.0.1.bias"}  # a mix, to check each flag comes back
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    pre, post = ["features.0.0", "features.1", "features.3.1"], ["pool", "fc"]
    counts = _instrument(model, pre + post)
    during: List[bool] = []
    model.fc.register_forward_hook(lambda *_: during.append(any(p.requires_grad for p in model.parameters())))

    explain(model, x, method, "features", classes=[0, 1, 2])

    for name in pre:
        assert counts[name]["forward"] == 1, name  # one forward pass
        assert counts[name]["graph"] == 0, f"{name}: a graph was recorded before the target layer"
        assert counts[name]["backward"] == 0, f"{name}: the backward reached a layer before the target"
    for name in post:
        assert counts[name]["backward"] == 1, f"{name}: one batched backward after the target"
    assert during == [False], "parameters must not require grad during the pass"
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags

    # Positive control: the same instruments do see the slow reference's full backward.
    reference_activations_and_gradients(model, x, "features", [0])
    assert counts["features.1"]["backward"] == 1 and counts["features.3.1"]["backward"] == 1


def test_state_is_restored_after_an_error() -> None:
    model = make_model("ResNet18", 2)
    model.train()
    model.conv1.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    with pytest.raises(ValueError, match="out of range"):
        explain(model, make_input("ResNet18", 2), "gradcam", "layer4", classes=[0, 7])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(not m._forward_hooks for m in model.modules()), "hooks left behind"
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_model_is_explained_in_eval_mode_and_left_in_train_mode() -> None:
    model = make_model("CompactCNN", 2)
    x = make_input("CompactCNN", 2, batch=2)
    model.train()
    result = explain(model, x, "gradcam", "features", classes=[0, 1, 2])
    assert model.training and model.features[0][1].training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(x), rtol=1e-10, atol=1e-10)


def test_works_inside_inference_mode() -> None:
    model = make_model("CompactCNN", 2)
    x = make_input("CompactCNN", 2)
    expected = explain(model, x, "gradcampp", "features", classes=[0, 1, 2])
    with torch.inference_mode():
        result = explain(model, x, "gradcampp", "features", classes=[0, 1, 2])
    torch.testing.assert_close(result.maps, expected.maps, rtol=1e-10, atol=1e-12)


def test_one_class_and_in_place_layer_after_the_target() -> None:
    """A one-class leaf copy must not be modified in place by DenseNet's inplace ReLU."""
    model = make_model("DenseNet121", 2)
    x = make_input("DenseNet121", 2)
    for method in ("gradcam", "gradcampp"):
        # "features" ends before class_layers.relu (inplace): the target output is modified after.
        one = explain(model, x, method, "features", classes=[2])
        three = explain(model, x, method, "features", classes=[0, 1, 2])
        torch.testing.assert_close(one.maps, three.maps[:, 2:3], rtol=1e-10, atol=1e-12)


def test_target_modified_in_place_afterwards() -> None:
    """ResNet adds the skip connection in place to ``bn2``'s output: the maps must use the
    activations as the target produced them."""
    model = make_model("ResNet18", 2)
    x = make_input("ResNet18", 2, batch=1)
    target = "layer4.1.bn2"
    activations, gradients, _ = reference_activations_and_gradients(model, x, target, CLASSES)
    result = explain(model, x, "gradcam", target, CLASSES)
    assert_maps_equal(result.maps, np.stack([reference_gradcam(activations, g) for g in gradients], axis=1), "layer4.1.bn2")
    # bn2 is not followed by GAP + fc (the skip and a ReLU come first): plain CAM is refused,
    # which it would not be if the captured map were the in-place updated block output.
    with pytest.raises(ValueError, match="global average pool"):
        explain(model, x, "cam", target, CLASSES, linear_layer="fc")
    # With B > 1 the pre-target skip tensor cannot meet the class-batched copies: a clear error.
    with pytest.raises(ValueError, match="choose a later target layer"):
        explain(model, make_input("ResNet18", 2, batch=2), "gradcam", target, CLASSES)


# --- batches -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dims", "batch"), [("ResNet18", 2, 3), ("CompactCNN", 3, 2)])
@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp"])
def test_batch_items_equal_running_them_alone(name: str, dims: int, batch: int, method: str) -> None:
    spec = NETWORKS[name]
    model = make_model(name, dims)
    x = make_input(name, dims, batch=batch)
    together = explain(model, x, method, spec.target_layer, CLASSES, spec.linear_layer)
    for b in range(batch):
        alone = explain(model, x[b : b + 1], method, spec.target_layer, CLASSES, spec.linear_layer)
        torch.testing.assert_close(together.maps[b : b + 1], alone.maps, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(together.logits[b : b + 1], alone.logits, rtol=1e-10, atol=1e-12)


# --- errors --------------------------------------------------------------------------------


def test_plain_cam_refuses_a_head_that_is_not_gap_linear() -> None:
    model = make_model("EfficientNetBN", 2)
    x = make_input("EfficientNetBN", 2)
    # _bn1 is followed by the swish activation, not directly by GAP + _fc.
    with pytest.raises(ValueError, match="global average pool"):
        explain(model, x, "cam", "_bn1", [0, 1, 2], linear_layer="_fc")
    with pytest.raises(ValueError, match="linear_layer"):
        explain(model, x, "cam", "_head_swish", [0, 1, 2])
    with pytest.raises(ValueError, match="channels"):
        explain(make_model("CompactCNN", 2), make_input("CompactCNN", 2), "cam", "features.2", [0], linear_layer="fc")


def test_bad_arguments_raise_clear_errors() -> None:
    model = make_model("EfficientNetBN", 2)
    x = make_input("EfficientNetBN", 2)
    with pytest.raises(ValueError, match="more than once"):
        explain(model, x, "gradcam", "_blocks.1.1._swish", [0])  # MONAI applies one module 3 times per block
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="not a module"):
        explain(model, x, "gradcam", "no.such.layer", [0])
    with pytest.raises(ValueError, match="unknown CAM method"):
        explain(model, x, "scorecam", "_head_swish", [0])
    with pytest.raises(ValueError, match="empty"):
        explain(model, x, "gradcam", "_head_swish", [])


# --- normalisation -------------------------------------------------------------------------


def test_normalise_maps() -> None:
    maps = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    maps[0, 0] = torch.arange(20, dtype=torch.float64).reshape(4, 5)  # max 19
    maps[0, 2, 1, 1] = 1e-30  # tiny but positive
    maps[1, 0] = 2.0  # flat positive
    maps[1, 1, 3, 4] = 0.5
    normalised, raw_max = normalise_maps(maps)
    torch.testing.assert_close(raw_max, torch.tensor([[19.0, 0.0, 1e-30], [2.0, 0.5, 0.0]], dtype=torch.float64))
    assert torch.isfinite(normalised).all()
    peaks = normalised.flatten(2).amax(dim=2)
    torch.testing.assert_close(peaks, torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64))
    assert torch.equal(normalised[0, 1], torch.zeros(4, 5, dtype=torch.float64)), "an all-zero map must stay zero"
    # Not inverted: a scaled copy, hottest voxel where it was.
    torch.testing.assert_close(normalised[0, 0], maps[0, 0] / 19.0)
    assert int(normalised[1, 1].argmax()) == int(maps[1, 1].argmax()) == 19
    assert (normalised >= 0).all() and (normalised <= 1).all()
    with pytest.raises(ValueError, match="NaN"):
        normalise_maps(torch.full((1, 1, 2, 2), float("nan")))
