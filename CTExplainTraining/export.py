"""A trained network → a CTExplain model package, its metadata filled from the run."""
from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from CTExplainLib.demo_models import PALETTE
from CTExplainLib.model_package import ClassSpec, ModelMetadata, load_package, save_package
from CTExplainLib.networks import get_spec

from .config import TrainConfig
from .engine import build_model
from .manifest import Manifest

FINDING_COLOR = (1.0, 0.0, 0.0)


def class_specs(config: TrainConfig, manifest: Manifest) -> List[ClassSpec]:
    colors = config.class_colors
    specs = []
    for index, name in enumerate(manifest.classes):
        if colors and index < len(colors):
            color = tuple(float(c) for c in colors[index])
        elif config.task == "segmentation":
            color = PALETTE[index % len(PALETTE)]
        else:
            color = FINDING_COLOR
        specs.append(ClassSpec(name, color, config.max_parts.get(name)))  # type: ignore[arg-type]
    return specs


def package_metadata(config: TrainConfig, manifest: Manifest, metrics: Dict[str, Any], data: Dict[str, Any]) -> ModelMetadata:
    """Metadata of the exported package: what the network is, what it expects, how it was made."""
    network_spec = get_spec(config.network)
    is_classifier = config.task != "segmentation"
    network_kwargs = {"spatial_dims": config.spatial_dims, "in_channels": config.input_spec().network_channels, "out_channels": len(manifest.classes)}
    network_kwargs.update(config.network_kwargs)
    provenance = {
        "training_data": config.training_data or str(manifest.source),
        "training_data_licence": config.data_licence,
        "citation": config.citation,
        "licence": config.licence,
        "notes": config.notes,
        "metrics": metrics,
        "data": data,
        "trained": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software": {"torch": torch.__version__, "python": platform.python_version()},
        "recipe": config.to_json(),
    }
    return ModelMetadata(
        name=config.name,
        version=config.version,
        task=config.task,
        classes=class_specs(config, manifest),
        network=config.network,
        network_kwargs=network_kwargs,
        input=config.input_spec(),
        cam_target_layer=network_spec.target_layer if is_classifier else None,
        cam_linear_layer=network_spec.linear_layer if is_classifier else None,
        threshold=config.threshold,
        volume_score=config.volume_score,
        volume_score_k=config.volume_score_k,
        untrained=False,
        provenance=provenance,
        domain=config.package_domain(),
    )


def export_package(
    path: Path, config: TrainConfig, manifest: Manifest, network: torch.nn.Module, metrics: Dict[str, Any], data: Optional[Dict[str, Any]] = None
) -> Path:
    """Save the package and load it back through the core, so a package that the core
    cannot load is never left behind as a success."""
    metadata = package_metadata(config, manifest, metrics, data or {})
    reference = build_model(config, manifest)
    reference.load_state_dict(network.state_dict())  # the same architecture as the metadata says
    saved = save_package(path, metadata, reference.eval())
    load_package(saved)
    return saved
