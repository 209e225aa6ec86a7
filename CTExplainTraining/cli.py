"""``ctexplain-train``: fit a CT classifier or U-Net segmenter into a CTExplain model package.

    ctexplain-train --config recipe.json [--OPTION VALUE ...]
    ctexplain-train --manifest cases.csv --task multilabel --labels a b c --out runs/x [--cv 5]
    torchrun --nproc_per_node 2 -m CTExplainTraining.cli --config recipe.json

Every option of the run (see ``TrainConfig``) is a flag here and a key in a JSON recipe; flags
override the recipe. The exit status is 0 on success, 2 when the input (manifest, recipe,
images) is wrong, which is found before training starts.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from CTExplainLib.errors import CTExplainError

from .config import TrainConfig, make_config, read_recipe
from .distributed import launched_by_torchrun

LOG = logging.getLogger("ctexplain-train")
EXIT_BAD_INPUT = 2


def _add_field(parser: argparse.ArgumentParser, name: str, kind: str, default: Any) -> None:
    flag = "--" + name.replace("_", "-")
    shown = None if default is MISSING else default
    if kind == "bool":
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=f"(default {shown})")
    elif kind.startswith(("Dict", "Optional[Dict")):
        parser.add_argument(flag, dest=name, type=json.loads, default=None, help="JSON object")
    elif kind.startswith("List[Dict"):
        parser.add_argument(flag, dest=name, type=json.loads, default=None, help="JSON list, e.g. [{\"name\": \"brain\", \"level\": 40, \"width\": 80}]")
    elif "List[Tuple" in kind:
        parser.add_argument(flag, dest=name, type=json.loads, default=None, help="JSON list of RGB triples in [0, 1]")
    elif "List[float]" in kind:
        parser.add_argument(flag, dest=name, type=float, nargs="+", default=None, help=f"(default {shown})")
    elif "List[int]" in kind:
        parser.add_argument(flag, dest=name, type=int, nargs="+", default=None, help=f"(default {shown})")
    elif "List[str]" in kind:
        parser.add_argument(flag, dest=name, nargs="+", default=None, help=f"(default {shown})")
    else:
        convert = {"int": int, "float": float}.get(kind.replace("Optional[", "").rstrip("]"), str)
        parser.add_argument(flag, dest=name, type=convert, default=None, help=f"(default {shown})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctexplain-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="JSON recipe (keys are the options below, with _)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    parser.add_argument("-v", "--verbose", action="store_true")
    for item in fields(TrainConfig):
        default = item.default if item.default is not MISSING else (item.default_factory() if item.default_factory is not MISSING else MISSING)  # type: ignore[misc]
        _add_field(parser, item.name, str(item.type), default)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: Dict[str, Any] = read_recipe(args.config) if args.config else {}
    for item in fields(TrainConfig):
        given = getattr(args, item.name)
        if given is not None:
            values[item.name] = given
    return make_config(values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    rank_zero = not launched_by_torchrun() or os.environ.get("RANK", "0") == "0"
    level = logging.DEBUG if args.verbose else (logging.INFO if rank_zero else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        from .run import run_training  # heavy imports only once the arguments are good

        summary = run_training(config, resume=args.resume)
    except CTExplainError as exc:
        print(f"ctexplain-train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if summary.package is not None:
        print(f"package: {summary.package}\nreport: {summary.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
