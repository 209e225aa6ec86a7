"""``ctexplain check-model PKG CASE...``: the model sanity check (:mod:`.sanity`) from the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..commandline.choices import DEVICE_CHOICES, METHODS
from ..errors import CTExplainError

# Only light modules at the top: the parser is built for every ``ctexplain --help``; torch and
# the check itself are imported when the command runs.

EXIT_FAILED = 2


def add_check_model_parser(commands: "argparse._SubParsersAction", formatter: type = argparse.HelpFormatter) -> None:
    check = commands.add_parser("check-model", help="sanity check of a classifier's maps under cascading randomisation (Adebayo et al. 2018)",
                                formatter_class=formatter)
    check.add_argument("package", help="classifier package (folder or name)")
    check.add_argument("cases", nargs="+", type=Path, help="CT files or folders the maps are compared on")
    check.add_argument("--segmenter", help="point models that cut their box around the nodule's outline (lung-nodule-malignancy): the "
                       "point segmenter that outlines each case at its centre; the cases are then nodule crops (default: none)")
    check.add_argument("--method", choices=METHODS, default="gradcam", help="class activation map method")
    check.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"), help="voxel spacing in mm of PNG/JPEG slices, which carry none (default: none; such inputs need it)")
    check.add_argument("--device", choices=DEVICE_CHOICES, default="cpu", help="compute device")
    check.add_argument("--seed", type=int, default=0, help="seed of the re-initialisation")
    check.add_argument("--record", action="store_true",
                       help="write the result into the package's ctexplain-model.json as 'sanity_check' (cases named as given)")
    check.add_argument("--note", default=None, help="with --record: how the cases were made or where they come from (default: none)")


def run_check_model(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..model_package import load_package
    from ..models_catalog import locate_package
    from ..writing import record_in_metadata
    from .sanity import check_files, format_result, sanity_record

    try:
        path, missing = locate_package(args.package)
        if missing is not None:
            raise CTExplainError(f"{args.package}: no such package installed (only its untrained stand-in {path.name})")
        model = load_package(path)
        segmenter = load_package(locate_package(args.segmenter)[0]) if args.segmenter else None
        if model.metadata.task == "segmentation" or not model.metadata.cam_target_layer:
            raise CTExplainError(f"{model.path}: is not a classifier with a CAM target layer: there are no maps to check")
        result = check_files(model, args.cases, args.spacing, args.method, resolve_device(args.device), args.seed, segmenter)
    except (CTExplainError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_result(model.metadata.name, result))
    if args.record:
        metadata_file = record_in_metadata(model.path, ["sanity_check"], sanity_record(result, [str(case) for case in args.cases], args.note))
        print(f"recorded in {metadata_file}")
    return 0
