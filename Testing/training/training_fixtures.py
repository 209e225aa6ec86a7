"""Recipes for the training tests: a 2D slice classifier that trains for a few steps in seconds."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict


def tiny_recipe(manifest: Path, out: Path, **overrides: Any) -> Dict[str, Any]:
    """A 2D slice classifier small enough to train for a few steps in seconds."""
    recipe: Dict[str, Any] = {
        "manifest": str(manifest),
        "task": "multilabel",
        "labels": ["any_hemorrhage", "skull_fracture"],
        "out": str(out),
        "name": "tiny-head-test",
        "network": "CompactCNN",
        "network_kwargs": {"channels": [8, 16]},
        "spatial_dims": 2,
        "channels": [{"name": "brain", "level": 40, "width": 120}, {"name": "bone", "level": 700, "width": 3200}],
        "spacing": [7.0, 7.0],
        "size": [32, 32],
        "epochs": 2,
        "batch_size": 8,
        "max_steps_per_epoch": 3,
        "val_fraction": 0.25,
        "report_cases": 1,
        "training_data": "8 CT-ICH patients (test)",
    }
    recipe.update(overrides)
    return recipe


def write_recipe(path: Path, recipe: Dict[str, Any]) -> Path:
    path.write_text(json.dumps(recipe))
    return path
