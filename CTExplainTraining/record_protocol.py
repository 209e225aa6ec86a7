"""A nested cross-validation run's numbers into a shipped package's metadata, beside its own.

A package trained before the nested protocol existed keeps its network and its numbers; the
recipe is then re-run under nested cross-validation without a final fit (``--nested-cv 5
--no-final-fit``), which scores the recipe's procedure on folds nothing that chose a model
saw. This writes that run's protocol and numbers into the package's provenance as
``nested_cross_validation``, with the command that made them, so the metadata says which
numbers come from which protocol:

    python -m CTExplainTraining.record_protocol CTExplain/Resources/Models/covid-consolidation-2d \\
        build/runs/covid-consolidation-nested --command "ctexplain-train --config ... --nested-cv 5 --no-final-fit ..."
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from CTExplainLib.model_package import load_package
from CTExplainLib.writing import record_in_metadata

SUMMARY = "summary.json"


def nested_record(run: Path, command: str) -> Dict[str, Any]:
    """The protocol, the outer folds' mean ± sd, the pooled out-of-fold scores and each fold's
    choice, from a nested run's summary.json."""
    metrics = json.loads((Path(run) / SUMMARY).read_text(encoding="utf-8"))["metrics"]
    if "nested_cross_validation" not in metrics:
        raise ValueError(f"{run / SUMMARY}: not a nested cross-validation run (no nested_cross_validation)")
    entry = {
        "command": command,
        "protocol": metrics["protocol"],
        "outer_folds": metrics["outer_folds"],
        "mean_sd": metrics["nested_cross_validation"],
        "selections": [{k: v for k, v in s.items() if k != "test_patients"} for s in metrics["selections"]],
    }
    if "pooled_out_of_fold" in metrics:  # classifiers only: a segmenter's Dice is a mean over cases
        entry["pooled_out_of_fold"] = metrics["pooled_out_of_fold"]
    return entry


def record(package: Path, run: Path, command: str) -> Dict[str, Any]:
    load_package(package)  # a package the core loads, before and after
    entry = nested_record(run, command)
    record_in_metadata(package, ["provenance", "nested_cross_validation"], entry)
    load_package(package)
    return entry


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("run", type=Path, help="the nested run's --out folder (its summary.json)")
    parser.add_argument("--command", required=True, help="the command that made the run, recorded with it")
    args = parser.parse_args(argv)
    try:
        entry = record(args.package, args.run, args.command)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.package}: nested_cross_validation recorded ({entry['outer_folds']} outer folds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
