"""``ctexplain``: the core pipeline on files and folders, outside Slicer.

    ctexplain explain INPUT... --out DIR [--model PKG] [--segmenter PKG] [--method gradcam] ...
    ctexplain explain --sample --out DIR
    ctexplain models

Every case gets its own output folder; a failing case is reported and the others still run;
the exit status is 2 if any case failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .discovery import discover_cases, unique_case_folders
from .errors import CTExplainError
from .model_package import LoadedModel, load_package
from .models_catalog import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER, SAMPLE_CASES, find_packages, resolve_package
from .pipeline import METHODS, CaseResult, ExplainOptions, explain_case
from .slice_labels import read_slice_labels

LOG = logging.getLogger("ctexplain")
EXIT_CASE_FAILED = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctexplain", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    commands = parser.add_subparsers(dest="command", required=True)

    explain = commands.add_parser("explain", help="classify, explain and segment CT cases")
    explain.add_argument("inputs", nargs="*", type=Path, help="CT files or folders (DICOM, NIfTI, NRRD, MHA, image stacks)")
    explain.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per case)")
    explain.add_argument("--sample", action="store_true", help="run on the sample case(s) shipped with CTExplain")
    explain.add_argument("--model", default=None, help=f"classifier package (folder or name; default {DEFAULT_CLASSIFIER})")
    explain.add_argument("--segmenter", default=None, help=f"segmenter package, or 'none' (default {DEFAULT_SEGMENTER})")
    explain.add_argument("--method", choices=METHODS, default="gradcam")
    explain.add_argument("--classes", nargs="+", default=None, help="findings to write heat maps for")
    explain.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    explain.add_argument("--series", dest="series_uid", default=None, help="SeriesInstanceUID to load from a DICOM folder")
    explain.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"), help="mm spacing of 2D image stacks")
    explain.add_argument("--format", dest="image_format", choices=("nrrd", "nii.gz"), default="nrrd")
    explain.add_argument("--slice-labels", type=Path, default=None, help="CSV (case,slice,positive): report CAM energy in positive slices")
    explain.add_argument("--keep-phi", action="store_true", help="keep patient name/ID in result.json")
    explain.add_argument("--no-progress", action="store_true", help="no progress bar")
    explain.add_argument("--progress-jsonl", action="store_true",
                         help="machine-readable progress: one JSON object per line on stdout (the summary goes to stderr)")

    models = commands.add_parser("models", help="list the model packages CTExplain can find")
    models.add_argument("--dir", action="append", type=Path, default=[], help="also look in this folder")
    return parser


def _load_models(args: argparse.Namespace) -> Tuple[LoadedModel, Optional[LoadedModel]]:
    classifier = load_package(resolve_package(args.model or DEFAULT_CLASSIFIER))
    segmenter_name = args.segmenter if args.segmenter is not None else DEFAULT_SEGMENTER
    segmenter = None if segmenter_name.lower() == "none" else load_package(resolve_package(segmenter_name))
    for model, role in ((classifier, "classifier"), (segmenter, "segmenter")):
        if model is None:
            continue
        wants_segmentation = role == "segmenter"
        if (model.metadata.task == "segmentation") != wants_segmentation:
            raise CTExplainError(f"{model.path}: a {model.metadata.task} model cannot be used as the {role}")
    return classifier, segmenter


def _summary(results: Sequence[CaseResult]) -> str:
    rows = [("case", "status", "top finding", "time s", "output / error")]
    for r in results:
        if r.ok:
            top = max(r.probabilities.items(), key=lambda kv: kv[1]) if r.probabilities else ("-", 0.0)
            rows.append((Path(r.input).name, "ok", f"{top[0]} {top[1]:.3f}", f"{sum(r.timings.values()):.1f}", str(r.output)))
        else:
            rows.append((Path(r.input).name, "FAILED", "-", f"{sum(r.timings.values()):.1f}", r.error))
    widths = [max(len(row[c]) for row in rows[:]) for c in range(4)]
    lines = ["  ".join(row[c].ljust(widths[c]) for c in range(4)) + "  " + row[4] for row in rows]
    return "\n".join(lines)


class JsonlProgress:
    """``--progress-jsonl``: one JSON object per line on stdout, flushed at once, for a parent process.

    A line when a case enters a stage for the first time (stages such as "heat maps" are entered
    once per finding) and a last line when it ends::

        {"case": "chest_ct", "index": 0, "cases": 1, "stage": "preprocess", "fraction": 0.125}
        {"case": "chest_ct", "index": 0, "cases": 1, "stage": "done", "fraction": 1.0, "ok": true, "error": "", "output": "..."}

    ``fraction`` is the case's own progress and never decreases within a case.
    """

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.case, self.index, self.cases = "", 0, 0
        self.seen: set = set()
        self.fraction = 0.0

    def start_case(self, case: str, index: int, cases: int) -> None:
        self.case, self.index, self.cases = case, index, cases
        self.seen, self.fraction = set(), 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        if stage in self.seen:
            return
        self.seen.add(stage)
        self.fraction = max(self.fraction, min(float(fraction), 1.0))
        self._emit({"stage": stage, "fraction": self.fraction})

    def end_case(self, result: CaseResult) -> None:
        self._emit({"stage": "done", "fraction": 1.0, "ok": result.ok, "error": result.error,
                    "output": str(result.output) if result.output else None})

    def _emit(self, fields: Dict[str, object]) -> None:
        record = {"case": self.case, "index": self.index, "cases": self.cases, **fields}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


def run_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    inputs: List[Path] = list(args.inputs)
    if args.sample:
        inputs += SAMPLE_CASES
    if not inputs:
        print("ctexplain explain: give INPUT paths or --sample", file=sys.stderr)
        return EXIT_CASE_FAILED
    try:
        classifier, segmenter = _load_models(args)
        unknown = [name for name in args.classes or [] if name not in classifier.metadata.class_names]
        if unknown:
            raise CTExplainError(f"{classifier.path}: no finding named {', '.join(unknown)}; it has: {', '.join(classifier.metadata.class_names)}")
    except CTExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CASE_FAILED
    try:
        slice_labels = read_slice_labels(args.slice_labels) if args.slice_labels else None
    except CTExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CASE_FAILED
    options = ExplainOptions(
        method=args.method,
        classes=args.classes,
        device=args.device,
        image_format=args.image_format,
        keep_phi=args.keep_phi,
        series_uid=args.series_uid,
        image_spacing=tuple(args.spacing) if args.spacing else None,
        slice_labels=slice_labels,
    )
    cases, problems = discover_cases(inputs)
    results: List[CaseResult] = [CaseResult(input=str(path), error=problem) for path, problem in problems]
    folders: Dict[Path, Path] = unique_case_folders(cases, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = JsonlProgress() if args.progress_jsonl else None
    bar = tqdm(total=len(cases), unit="case", disable=args.no_progress or jsonl is not None or not sys.stderr.isatty() and "CI" in os.environ)
    for index, case in enumerate(cases):
        bar.set_description(case.name)

        def progress(stage: str, fraction: float) -> None:
            bar.set_postfix_str(stage)

        if jsonl is not None:
            jsonl.start_case(folders[case].name, index, len(cases))
        result = explain_case(case, folders[case], classifier, segmenter, options, jsonl if jsonl is not None else progress)
        if jsonl is not None:
            jsonl.end_case(result)
        if not result.ok:
            tqdm.write(f"error: {result.error}", file=sys.stderr)
        for warning in result.warnings:
            tqdm.write(f"warning: {case.name}: {warning}", file=sys.stderr)
        results.append(result)
        bar.update(1)
    bar.close()
    for path, problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(_summary(results), file=sys.stderr if jsonl is not None else sys.stdout)
    return 0 if all(r.ok for r in results) else EXIT_CASE_FAILED


def run_models(args: argparse.Namespace) -> int:
    packages = find_packages(args.dir)
    if not packages:
        print("no model packages found")
        return 0
    for info in packages:
        print(f"{info.name:32s} {info.task:13s} {info.version:8s} {'UNTRAINED ' if info.untrained else ''}{info.path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "explain":
        return run_explain(args)
    return run_models(args)


if __name__ == "__main__":
    sys.exit(main())
