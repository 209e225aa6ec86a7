"""A shipped segmenter's Dice on its own training cases, computed as training validates them,
recorded in its package so that a test can check the core gives the same.

A package whose numbers all come from cross-validation folds' networks (``covid-infection-2d``:
no case is kept apart as a test set, the shipped network is the final fit on all of them) holds
no number its own network can reproduce. This records, per case of the recipe's manifest, the
Dice the training code's validation gives the shipped network (``training_case_dice``: the
network was trained on these cases, so it is not an estimate of performance), and
``Testing/test_shipped_models.py`` checks that the core (``ctexplain explain``'s path) gives
the same on the same files, as the head model's ``training_case_scores`` are checked:

    python -m CTExplainTraining.case_scores CTExplain/Resources/Models/covid-infection-2d \\
        CTExplainTraining/recipes/covid_infection_2d.json --record
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from CTExplainLib.errors import CTExplainError
from CTExplainLib.model_package import load_package
from CTExplainLib.writing import record_in_metadata

from .config import make_config, read_recipe
from .data import PreprocessedCases
from .engine import make_loss
from .run import load_manifest
from .validate import validate_segmenter

NOTE = ("Dice of the shipped network on each of its own training cases (it was trained on them: not an estimate of performance), "
        "by the training code's validation; reproduced through the core by Testing/test_shipped_models.py")


def training_case_dice(package: Path, recipe: Path) -> Dict[str, float]:
    """{image file name: mean Dice over the segments defined in it} for every case of the recipe's manifest."""
    config = make_config(read_recipe(recipe))
    if config.task != "segmentation":
        raise ValueError(f"{recipe}: not a segmentation recipe")
    manifest = load_manifest(config)
    model = load_package(package)
    cases = PreprocessedCases(config, manifest.examples)
    loss_fn = make_loss(config, manifest, manifest.examples)
    device = torch.device("cpu")
    return {
        Path(example.image).name: float(validate_segmenter(model.network, config, manifest.classes, cases, [example], loss_fn, device).metrics["dice_mean"])
        for example in manifest.examples
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CTExplainTraining.case_scores", description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("recipe", type=Path, help="the recipe the package was trained by (its manifest names the cases)")
    parser.add_argument("--record", action="store_true", help="write them into the package's metadata (provenance.metrics.training_case_dice)")
    args = parser.parse_args(argv)
    try:
        dice = training_case_dice(args.package, args.recipe)
    except (CTExplainError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, value in dice.items():
        print(f"{name}: dice_mean={value:.4f}")
    if args.record:
        path = record_in_metadata(args.package, ["provenance", "metrics", "training_case_dice"], {"note": NOTE, "cases": dice})
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
