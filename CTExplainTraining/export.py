"""A trained network → a CTExplain model package, its metadata filled from the run."""
from __future__ import annotations

import dataclasses
import datetime
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from CTExplainLib.demo_models import PALETTE
from CTExplainLib.model_package import ClassSpec, ModelMetadata, load_package, save_package
from CTExplainLib.networks import build_network, get_spec

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
        specs.append(ClassSpec(name, color, config.max_parts.get(name), config.not_below.get(name)))  # type: ignore[arg-type]
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


def keep_labels(package: Path, labels: Sequence[str], out: Path, note: str) -> Path:
    """A copy of the multilabel classifier ``package`` at ``out`` that answers only ``labels``:
    the other rows of its output layer (the metadata's ``cam_linear_layer``) are removed. A
    multilabel label's probability is the sigmoid of its own row, and its Grad-CAM weights
    are that row's gradient, so every kept label's probability, map and recorded score is
    exactly what it was; ``note`` (why the others went) is kept in the provenance."""
    model = load_package(package)
    metadata = model.metadata
    names = metadata.class_names
    unknown = [label for label in labels if label not in names]
    if metadata.task != "multilabel" or unknown or not labels:
        raise ValueError(f"{package}: can keep labels of a multilabel classifier only, among {', '.join(names)}; got {list(labels)}")
    keep = [names.index(label) for label in labels]
    layer = metadata.cam_linear_layer or ""
    linear = dict(model.network.named_modules()).get(layer)
    if not isinstance(linear, torch.nn.Linear) or linear.out_features != len(names):
        raise ValueError(f"{package}: its output layer {layer!r} is not a linear layer with one row per label")
    state = model.network.state_dict()
    for key in (f"{layer}.weight", f"{layer}.bias"):
        if key in state:
            state[key] = state[key][keep].clone()
    kwargs = dict(metadata.network_kwargs, out_channels=len(keep))
    network = build_network(metadata.network, kwargs)
    network.load_state_dict(state)
    dropped = [name for name in names if name not in labels]
    provenance = dict(metadata.provenance, labels_kept={"kept": list(labels), "dropped": dropped, "note": note})
    kept = dataclasses.replace(metadata, classes=[metadata.classes[i] for i in keep], network_kwargs=kwargs, provenance=provenance)
    saved = save_package(out, kept, network.eval())
    load_package(saved)
    return saved
