"""CAM, Grad-CAM and Grad-CAM++ for every requested class from one forward pass.

Designed after pytorch-grad-cam: one explainer, each method a subclass that only says how
channel weights come from the target layer's activations ``A`` (B, K, *spatial) and
gradients; the map of class c is ``ReLU(sum_k w_ck A_k)`` at the target layer's resolution.

How all classes share one pass: a forward hook on the target layer detaches ``A`` and hands
the rest of the network a leaf tensor holding one copy of ``A`` per requested class (batch
C*B). Only the layers after the target therefore run batched, and one
``torch.autograd.grad`` of ``sum_c score[copy c, class c]`` with respect to that leaf gives
every class's gradient at once, through those layers only. Parameters are frozen meanwhile,
so no graph is recorded before the target layer and no parameter gradient is computed. The
network runs in eval mode, where BatchNorm and dropout treat batch items independently, so
the copies do not interact.

The layers after the target must take their batch size from their input (as every
classifier head does); a network that mixes in a tensor computed before the target layer
after it (a skip connection around the target) cannot be explained at that layer.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

logger = logging.getLogger(__name__)

GRADCAMPP_EPS = 1e-6  # as pytorch-grad-cam's GradCAMPlusPlus


@dataclass
class CamResult:
    """Scores and per-class maps of one batch."""

    logits: torch.Tensor  # (B, N) raw scores of the network
    maps: torch.Tensor  # (B, len(classes), *feature_shape), ReLU'd, unnormalised
    classes: List[int]
    feature_shape: Tuple[int, ...]  # spatial shape of the target layer's output


class _TargetCalledTwice(RuntimeError):
    pass


@dataclass
class _Capture:
    """What the target-layer hook saw and handed on."""

    copies: int  # class copies to hand on; 0 = pass the output through unchanged
    calls: int = 0
    activations: Optional[torch.Tensor] = None  # (B, K, *S), detached
    leaf: Optional[torch.Tensor] = None  # (copies, B, K, *S), requires grad


class CamExplainer:
    """Base explainer: subclasses define ``channel_weights`` (and whether they need gradients)."""

    name = "base"
    needs_gradients = True

    def channel_weights(
        self, activations: torch.Tensor, gradients: Optional[torch.Tensor], classes: List[int], model: nn.Module, linear_layer: Optional[str]
    ) -> torch.Tensor:
        """Weights (C, B, K) from activations (B, K, *S) and gradients (C, B, K, *S)."""
        raise NotImplementedError

    def explain(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target_layer: str,
        classes: Optional[Sequence[int]] = None,
        linear_layer: Optional[str] = None,
    ) -> CamResult:
        target = _module(model, target_layer, "target layer")
        class_list = _requested_classes(model, classes, linear_layer)
        inputs = inputs.detach()
        if inputs.is_inference():
            inputs = inputs.clone()  # inference tensors cannot enter an autograd graph
        capture = _Capture(copies=len(class_list) if self.needs_gradients else 0)
        with torch.inference_mode(False), _eval_mode(model), _frozen_parameters(model), _hooked(target, capture):
            with torch.set_grad_enabled(self.needs_gradients):
                output = _run(model, inputs, capture, target_layer)
            logits, gradients = self._scores_and_gradients(output, capture, class_list, inputs.shape[0])
        activations = capture.activations
        assert activations is not None
        # Weights and maps in at least float32, outside autocast: float16 grads**3 underflow.
        with torch.autocast(device_type=activations.device.type, enabled=False):
            dtype = torch.promote_types(activations.dtype, torch.float32)
            activations = activations.to(dtype)
            gradients = gradients.to(dtype) if gradients is not None else None
            weights = self.channel_weights(activations, gradients, class_list, model, linear_layer).to(dtype)
            if not self.needs_gradients:
                _check_gap_linear_head(activations, weights, logits, class_list, model, linear_layer)
            maps = torch.relu(torch.einsum("cbk,bk...->bc...", weights, activations))
        return CamResult(logits=logits, maps=maps.detach(), classes=class_list, feature_shape=tuple(activations.shape[2:]))

    def _scores_and_gradients(
        self, output: torch.Tensor, capture: _Capture, classes: List[int], batch: int
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        copies = max(capture.copies, 1)
        if output.ndim != 2 or output.shape[0] != copies * batch:
            raise ValueError(
                f"the network's output has shape {tuple(output.shape)}; expected (batch, classes) = ({copies * batch}, N): "
                "CAM needs a classifier whose layers after the target keep the batch size of their input"
            )
        scores = output.reshape(copies, batch, output.shape[1])
        bad = [c for c in classes if not 0 <= c < output.shape[1]]
        if bad:
            raise ValueError(f"classes {bad} out of range: the network has {output.shape[1]} outputs")
        logits = scores[0].detach()
        if not self.needs_gradients:
            return logits, None
        index = torch.tensor(classes, device=output.device).view(copies, 1, 1).expand(copies, batch, 1)
        chosen = scores.gather(2, index)  # (C, B, 1): copy c holds class classes[c]
        assert capture.leaf is not None
        (gradients,) = torch.autograd.grad(chosen.sum(), capture.leaf)
        return logits, gradients


class CAM(CamExplainer):
    """Plain CAM (Zhou et al. 2016): the final Linear's weight rows, for GAP + Linear heads."""

    name = "cam"
    needs_gradients = False

    def channel_weights(self, activations, gradients, classes, model, linear_layer):
        if not linear_layer:
            raise ValueError("plain CAM needs the name of the final Linear layer (linear_layer); use gradcam for other heads")
        linear = _module(model, linear_layer, "linear layer")
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"plain CAM: {linear_layer!r} is a {type(linear).__name__}, not a Linear layer")
        channels = activations.shape[1]
        if linear.in_features != channels:
            raise ValueError(
                f"plain CAM: linear layer {linear_layer!r} takes {linear.in_features} features but the target layer has "
                f"{channels} channels: the network has no global-average-pool + Linear head after the target"
            )
        rows = linear.weight.detach()[classes].to(activations.dtype)  # (C, K)
        return rows.unsqueeze(1).expand(len(classes), activations.shape[0], channels)


class GradCAM(CamExplainer):
    """Grad-CAM (Selvaraju et al. 2017): weights are the spatial mean of the gradients."""

    name = "gradcam"

    def channel_weights(self, activations, gradients, classes, model, linear_layer):
        return gradients.mean(dim=_after(gradients, 3))


class GradCAMPlusPlus(CamExplainer):
    """Grad-CAM++ (Chattopadhyay et al. 2018), as pytorch-grad-cam's GradCAMPlusPlus."""

    name = "gradcampp"

    def channel_weights(self, activations, gradients, classes, model, linear_layer):
        spatial = _after(gradients, 3)
        grads_2 = gradients.pow(2)
        grads_3 = grads_2 * gradients
        sum_activations = activations.sum(dim=_after(activations, 2), keepdim=True).unsqueeze(0)  # (1, B, K, 1...)
        aij = grads_2 / (2 * grads_2 + sum_activations * grads_3 + GRADCAMPP_EPS)
        aij = torch.where(gradients != 0, aij, torch.zeros_like(aij))
        return (torch.relu(gradients) * aij).sum(dim=spatial)


METHODS: Dict[str, Type[CamExplainer]] = {cls.name: cls for cls in (CAM, GradCAM, GradCAMPlusPlus)}


def explain(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    target_layer: str,
    classes: Optional[Sequence[int]] = None,
    linear_layer: Optional[str] = None,
) -> CamResult:
    """Scores and maps of ``classes`` (default: all) by ``method`` ("cam", "gradcam", "gradcampp").

    ``inputs`` is (B, channels, *spatial) for 2D or 3D networks. One forward pass; for the
    gradient methods, one backward through the layers after ``target_layer`` only.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]().explain(model, inputs, target_layer, classes, linear_layer)


def normalise_maps(maps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each (batch, class) map divided by its maximum, and those maxima (B, C).

    Maps are non-negative; a map with no positive value stays all zero (never NaN, never
    inverted). Negative values, which ``explain`` does not produce, are clipped to zero.
    """
    if maps.ndim < 3:
        raise ValueError(f"maps must be (batch, classes, *spatial); got shape {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps hold NaN or infinite values")
    raw_max = maps.flatten(2).amax(dim=2)
    divisor = torch.where(raw_max > 0, raw_max, torch.ones_like(raw_max))
    shape = tuple(raw_max.shape) + (1,) * (maps.ndim - 2)
    return maps.clamp(min=0) / divisor.reshape(shape), raw_max


# --- helpers -------------------------------------------------------------------------------


def _after(tensor: torch.Tensor, first: int) -> Tuple[int, ...]:
    """The spatial dimensions: those from ``first`` on (3 for gradients (C, B, K, ...), 2 for activations)."""
    return tuple(range(first, tensor.ndim))


def _module(model: nn.Module, name: str, what: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise ValueError(f"{what} {name!r} is not a module of {type(model).__name__}")
    return modules[name]


def _requested_classes(model: nn.Module, classes: Optional[Sequence[int]], linear_layer: Optional[str]) -> List[int]:
    if classes is not None:
        class_list = [int(c) for c in classes]
        if not class_list:
            raise ValueError("classes is empty: ask for at least one class")
        return class_list
    # The class count must be known before the forward pass (it sizes the batched copies):
    # take it from the named Linear head, else from the network's last Linear.
    linear = _module(model, linear_layer, "linear layer") if linear_layer else None
    if not isinstance(linear, nn.Linear):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        linear = linears[-1] if linears else None
    if linear is None:
        raise ValueError(f"cannot tell how many classes {type(model).__name__} has; pass classes explicitly")
    return list(range(linear.out_features))


def _run(model: nn.Module, inputs: torch.Tensor, capture: _Capture, target_layer: str) -> torch.Tensor:
    try:
        output = model(inputs)
    except _TargetCalledTwice:
        raise ValueError(
            f"target layer {target_layer!r} runs more than once per forward pass (a shared module); "
            "choose a module that is called once"
        ) from None
    except RuntimeError as exc:
        if capture.copies > 1 and capture.calls:
            raise ValueError(
                f"the layers after target layer {target_layer!r} failed on the class-batched activations ({exc}); "
                "a tensor from before the target may be reused after it: choose a later target layer"
            ) from exc
        raise
    if capture.calls == 0:
        raise ValueError(f"target layer {target_layer!r} did not run in the forward pass")
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"the network returned {type(output).__name__}, not a tensor of class scores")
    return output


def _target_hook(capture: _Capture):
    def hook(module: nn.Module, args: Tuple, output: torch.Tensor) -> Optional[torch.Tensor]:
        capture.calls += 1
        if capture.calls > 1:
            raise _TargetCalledTwice()
        if not isinstance(output, torch.Tensor) or output.ndim not in (4, 5):
            raise ValueError(f"the target layer must output a (B, K, H, W) or (B, K, D, H, W) tensor; got {getattr(output, 'shape', type(output))}")
        if capture.copies == 0:
            # Later layers may modify the output in place (e.g. ReLU(inplace=True)): keep a copy.
            capture.activations = output.detach().clone()
            return None
        activations = output.detach()
        capture.activations = activations
        # The leaf is an expanded view (no memory); the reshape below makes the one real copy.
        capture.leaf = activations.unsqueeze(0).expand(capture.copies, *activations.shape).requires_grad_(True)
        batched = capture.leaf.reshape(capture.copies * activations.shape[0], *activations.shape[1:])
        if batched.data_ptr() == capture.leaf.data_ptr():
            batched = batched.clone()  # one class: a view of the leaf must not be modified in place
        return batched

    return hook


@contextlib.contextmanager
def _hooked(target: nn.Module, capture: _Capture) -> Iterator[None]:
    handle = target.register_forward_hook(_target_hook(capture))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    if any(training for _, training in modes):
        logger.debug("explain: switching %s to eval mode for the pass", type(model).__name__)
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _check_gap_linear_head(
    activations: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor, classes: List[int], model: nn.Module, linear_layer: Optional[str]
) -> None:
    """Plain CAM is only meaningful when score = mean(signed map) + bias; check it."""
    linear = _module(model, linear_layer or "", "linear layer")
    signed = torch.einsum("cbk,bk...->bc...", weights, activations).flatten(2).mean(dim=2)
    bias = linear.bias.detach()[classes].to(signed.dtype) if linear.bias is not None else torch.zeros_like(signed[0])
    expected = signed + bias
    actual = logits[:, classes].to(signed.dtype)
    loose = logits.dtype in (torch.float16, torch.bfloat16)
    tolerance = (2e-2 if loose else 1e-3) * (1.0 + float(actual.abs().max()))
    error = float((expected - actual).abs().max())
    if error > tolerance:
        raise ValueError(
            f"plain CAM: the scores are not a global average pool + {linear_layer!r} of the target layer "
            f"(difference {error:.3g}); use gradcam or gradcampp for this network or target"
        )
