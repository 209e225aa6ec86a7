"""Untrained model packages: the demo defaults until trained ones ship, and test fixtures.

Their weights are random (from a fixed seed): they exercise the mechanics (loading,
preprocessing, CAM, segmentation, alignment, writing), not accuracy, and their metadata
says ``untrained: true`` so every result made with them is labelled as such.

    python -m CTExplainLib.demo_models CTExplain/Resources/Models
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .model_package import ChannelSpec, ClassSpec, Domain, InputSpec, ModelMetadata, save_package
from .models_catalog import DEMO_CLASSIFIER, DEMO_SEGMENTER
from .networks import NETWORKS, build_network

LUNG = ChannelSpec("lung", -600.0, 1500.0)
SOFT_TISSUE = ChannelSpec("soft tissue", 40.0, 400.0)
# The domain of the chest packages the demos stand in for.
DEMO_DOMAIN = Domain(regions=("chest",), note="untrained (random weights): the domain of the chest packages it stands in for")
PALETTE = [(0.0, 0.0, 0.0), (0.85, 0.33, 0.1), (0.2, 0.6, 0.85), (0.47, 0.67, 0.19), (0.93, 0.69, 0.13), (0.49, 0.18, 0.56)]


def untrained_package(
    path: Path,
    name: str,
    task: str,
    network: str,
    class_names: Sequence[str],
    input_spec: InputSpec,
    network_kwargs: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    domain: Optional[Domain] = None,
) -> Path:
    """Save a package whose network has random weights drawn from ``seed``."""
    kwargs = {"spatial_dims": input_spec.spatial_dims, "in_channels": input_spec.network_channels, "out_channels": len(class_names)}
    kwargs.update(network_kwargs or {})
    torch.manual_seed(seed)
    model = build_network(network, kwargs)
    spec = NETWORKS[network]
    classes: List[ClassSpec] = [ClassSpec(n, PALETTE[i % len(PALETTE)] if task == "segmentation" else (1.0, 0.0, 0.0)) for i, n in enumerate(class_names)]
    metadata = ModelMetadata(
        name=name,
        version="0.0.1",
        task=task,
        classes=classes,
        network=network,
        network_kwargs=kwargs,
        input=input_spec,
        cam_target_layer=spec.target_layer if task != "segmentation" else None,
        cam_linear_layer=spec.linear_layer if task != "segmentation" else None,
        untrained=True,
        provenance={"training_data": "none: random weights (seed %d)" % seed, "licence": "Apache-2.0"},
        domain=domain,
    )
    return save_package(path, metadata, model)


def demo_classifier(path: Path) -> Path:
    spec = InputSpec(3, [LUNG, SOFT_TISSUE], spacing=(2.5, 2.5, 5.0), size=(128, 128, 64), orientation="LPS")
    return untrained_package(path, DEMO_CLASSIFIER, "multilabel", "CompactCNN", ["demo finding A", "demo finding B", "demo finding C"], spec, domain=DEMO_DOMAIN)


def demo_segmenter(path: Path) -> Path:
    spec = InputSpec(3, [LUNG], spacing=(3.0, 3.0, 3.0), size=(96, 96, 96), orientation="LPS")
    kwargs = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}
    return untrained_package(path, DEMO_SEGMENTER, "segmentation", "UNet", ["background", "lungs", "body"], spec, kwargs, domain=DEMO_DOMAIN)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="write the untrained demo packages")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    for make, name in ((demo_classifier, DEMO_CLASSIFIER), (demo_segmenter, DEMO_SEGMENTER)):
        print(make(args.folder / name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
