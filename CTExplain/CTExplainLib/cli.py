"""``ctexplain``: the core pipeline on files and folders, outside Slicer.

    ctexplain explain INPUT... --out DIR [--model PKG] [--segmenter PKG] [--method gradcam] ...
    ctexplain explain --sample --out DIR
    ctexplain explain CT --point X Y Z [--point ...] [--points FILE.csv] [--ras] --out DIR
    ctexplain models
    ctexplain check-model PKG CASE... [--record]
    torchrun --nproc_per_node N -m CTExplainLib.cli explain INPUT... --out DIR

Every case gets its own output folder; a failing case is reported and the others still run;
the exit status is 2 if any case failed. Each sample case runs with its own models unless
--model/--segmenter are given; INPUT paths run with those, or with the installed packages
whose training domain fits each input (trust/choice.py). Under torchrun the cases are split
between the processes (see cohort/ranks.py).

Only light modules are imported here: torch, MONAI, SimpleITK and pydicom are imported inside
the functions that run cases, so that ``--help`` and ``models`` answer at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .cohort.ranks import CohortGroup, Rank, rank_from_environment, share
from .commandline.choices import DEVICE_CHOICES, IMAGE_FORMATS, METHODS
from .commandline.progress import LineProgress, QuietProgress
from .errors import CTExplainError
from .models_catalog import (
    POINT_CLASSIFIER,
    POINT_SEGMENTER,
    SAMPLES,
    SampleCase,
    chosen_segmenter,
    find_packages,
    locate_package,
    resolve_package,
)
from .points.points_file import MarkedPoint, add_point_arguments, command_line_points, points_for_cases, requested_points
from .slice_labels import read_slice_labels
from .trust.choices import DEFAULT_FAITHFULNESS, FAITHFULNESS_CHOICES

if TYPE_CHECKING:
    from .model_package import LoadedModel
    from .pipeline import CaseResult, ExplainOptions

LOG = logging.getLogger("ctexplain")
EXIT_CASE_FAILED = 2

# The folders of a classifier (None: chosen per case) and a segmenter (None: none, or chosen
# per case), and the loaded pair.
ModelKey = Tuple[Optional[Path], Optional[Path]]
Models = Tuple[Optional["LoadedModel"], Optional["LoadedModel"]]


def load_package(path: Path) -> "LoadedModel":
    """:func:`model_package.load_package`, imported when a case needs it (it imports torch)."""
    from .model_package import load_package as load

    return load(path)


def explain_case(*args: Any, **kwargs: Any) -> "CaseResult":
    """:func:`pipeline.explain_case`, imported when a case runs (it imports torch and MONAI)."""
    from .pipeline import explain_case as explain

    return explain(*args, **kwargs)


def explain_points_case(*args: Any, **kwargs: Any) -> "CaseResult":
    """:func:`points.run.explain_points_case` (point mode), imported when a case runs."""
    from .points.run import explain_points_case as explain

    return explain(*args, **kwargs)


@dataclass
class Job:
    """One case to run, where its outputs go, and with which models."""

    case: Path
    folder: Path
    models: ModelKey
    points: Optional[List[MarkedPoint]] = None  # point mode (points/run.py) at these
    choose_segmenter: bool = False  # the segmenter is chosen from the input (models[1] unused)

    @property
    def chooses(self) -> bool:
        return self.models[0] is None or self.choose_segmenter


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help; options without a fixed default (None, an empty
    list) say in their own help what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default == []:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctexplain", description=__doc__.split("\n\n")[0].replace("``", ""), formatter_class=_HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser(
        "explain", help="classify, explain and segment CT cases", formatter_class=_HelpFormatter,
        description="Classify, explain and segment CT cases: one output folder per case under --out.",
        epilog="cohorts: under\n"
               "  torchrun --nproc_per_node N [--nnodes M ...] -m CTExplainLib.cli explain INPUT... --out DIR\n"
               "the cases are split between the processes, each writing its own case folders;\n"
               "rank 0 writes DIR/summary.csv and summary.html once all are done.",
    )
    explain.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                         help="NIfTI/NRRD/MHA files, DICOM folders or any file in one, folders of PNG/JPEG slices "
                              "(with --spacing), or folders holding many of these")
    explain.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder, one sub-folder per case (required)")
    explain.add_argument("--sample", action="store_true", help="also run the sample cases shipped with CTExplain, each with its own models")
    explain.add_argument("--model", default=None,
                         help="classifier package (folder or name) for every case (default: per case, the installed one whose "
                              "training domain fits the input; sample cases: their own)")
    explain.add_argument("--segmenter", default=None,
                         help="segmenter package (folder or name), or 'none', for every case (default: per case, the installed "
                              "one whose training domain fits the input, else none; sample cases: their own)")
    explain.add_argument("--strict", action="store_true",
                         help="refuse a case that the domain check warns about (not the kind of CT the model was trained on)")
    explain.add_argument("--method", choices=METHODS, default="gradcam", help="class activation map method")
    explain.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                         help="findings to write heat maps for (default: every finding of a model with up to 8 classes, "
                              "otherwise those above its threshold)")
    explain.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device; auto: CUDA, then MPS, then the CPU")
    explain.add_argument("--series", dest="series_uid", default=None, metavar="UID",
                         help="SeriesInstanceUID to load from a DICOM folder (default: the CT series with the most slices)")
    explain.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"), default=None,
                         help="voxel spacing in mm of PNG/JPEG slices, which carry none (default: none; such inputs need it)")
    explain.add_argument("--format", dest="image_format", choices=IMAGE_FORMATS, default="nrrd", help="file format of heat maps and label maps")
    explain.add_argument("--slice-labels", type=Path, default=None, metavar="CSV",
                         help="CSV (case,slice,positive): report the CAM energy in positive slices (default: none; --sample uses the samples' own)")
    explain.add_argument("--faithfulness", choices=FAITHFULNESS_CHOICES, default=DEFAULT_FAITHFULNESS,
                         help="deletion/insertion faithfulness of each finding's map against random orders. auto, by measured "
                              "cost: fast for 2D slice models (a few key slices: about 5x the classifier's own pass on the "
                              "sample head CT), off for 3D models (about 100 forward passes for 18 findings); full: more "
                              "steps, random orders and key slices")
    explain.add_argument("--keep-phi", action="store_true", help="keep patient name/ID in result.json (and in the DICOM outputs)")
    explain.add_argument("--dicom-out", action="store_true",
                         help="DICOM input only: also write the label map as a DICOM SEG and each heat map as a DICOM Parametric Map")
    explain.add_argument("--no-progress", action="store_true", help="no progress output (otherwise a bar on a terminal, one line per stage in a log)")
    explain.add_argument("--progress-jsonl", action="store_true",
                         help="machine-readable progress: one JSON object per line on stdout (the summary goes to stderr)")
    add_point_arguments(explain)

    models = commands.add_parser("models", help="list the model packages CTExplain can find", formatter_class=_HelpFormatter)
    models.add_argument("--dir", action="append", type=Path, default=[], metavar="FOLDER",
                        help="also look in this folder, repeatable (default: only the shipped models, "
                             "~/.ctexplain/models and $CTEXPLAIN_MODELS)")

    from .trust.sanity_cli import add_check_model_parser  # light: its heavy imports are in its run

    add_check_model_parser(commands, _HelpFormatter)
    return parser


CHOOSE = "choose"  # a role whose package is chosen per case from the input


def _model_names(args: argparse.Namespace, sample: Optional[SampleCase]) -> Tuple[str, Optional[str]]:
    """The classifier and segmenter (None: none) a case runs with: --model/--segmenter when given,
    else the sample's own, else (point mode) the point packages, else CHOOSE."""
    point_mode = sample is None and (args.point or args.points is not None)
    defaults = (POINT_CLASSIFIER, POINT_SEGMENTER) if point_mode else (CHOOSE, CHOOSE)
    classifier = args.model or (sample.classifier if sample is not None else defaults[0])
    return classifier, chosen_segmenter(args.segmenter, sample.segmenter if sample is not None else defaults[1])


def _load_models(keys: Sequence[ModelKey], classes: Optional[Sequence[str]]) -> Dict[ModelKey, Models]:
    """Each package once, however many pairs use it; checked before any case runs."""
    loaded: Dict[Path, "LoadedModel"] = {}
    for path in dict.fromkeys(p for key in keys for p in key if p is not None):
        loaded[path] = load_package(path)
    for key in keys:
        for path, role in zip(key, ("classifier", "segmenter")):
            if path is None:
                continue
            model = loaded[path]
            if (model.metadata.task == "segmentation") != (role == "segmenter"):
                raise CTExplainError(f"{model.path}: a {model.metadata.task} model cannot be used as the {role}")
        if key[0] is None:
            continue
        classifier = loaded[key[0]]
        unknown = [name for name in classes or [] if name not in classifier.metadata.class_names]
        if unknown:
            raise CTExplainError(f"{classifier.path}: no finding named {', '.join(unknown)}; it has: {', '.join(classifier.metadata.class_names)}")
    return {key: tuple(loaded[p] if p is not None else None for p in key) for key in keys}  # type: ignore[misc]


def _jobs(args: argparse.Namespace) -> Tuple[List[Job], List[Tuple[Path, str]]]:
    """The cases to run (INPUT paths first, then the samples) and the inputs that are not there.

    Folders are named per job rather than per path: the same file may run twice, once as an
    input with the default models and once as a sample with its own. Every rank of a cohort
    gets the same list.
    """
    from .discovery import case_name, discover_cases  # pydicom: only when cases are looked for

    requests: List[Tuple[List[Path], Optional[SampleCase]]] = [(list(args.inputs), None)] if args.inputs else []
    if args.sample:
        requests += [([sample.path], sample) for sample in SAMPLES]
    jobs: List[Job] = []
    problems: List[Tuple[Path, str]] = []
    used: Dict[str, int] = {}
    marked = requested_points(args)
    for inputs, sample in requests:
        classifier, segmenter = _model_names(args, sample)
        key = (None if classifier == CHOOSE else resolve_package(classifier),
               None if segmenter in (None, CHOOSE) else resolve_package(segmenter))
        cases, missing = discover_cases(inputs)
        problems += missing
        if sample is not None:
            points = {case: command_line_points(sample.points, ras=False) for case in cases} if sample.points else None
        else:
            points = points_for_cases(marked, cases, args.points) if marked is not None else None
        for case in cases:
            if points is not None and not points[case]:
                continue  # a points file's rows name other inputs only
            name = sample.name if sample is not None else case_name(case)
            used[name] = used.get(name, 0) + 1
            jobs.append(Job(case, args.out / (name if used[name] == 1 else f"{name}_{used[name]}"), key,
                            points[case] if points else None, segmenter == CHOOSE))
    return jobs, problems


def _options(args: argparse.Namespace) -> "ExplainOptions":
    from .pipeline import ExplainOptions

    slice_labels = read_slice_labels(args.slice_labels) if args.slice_labels else None
    if args.sample:  # the samples' own labels, unless the user's file names the same case
        for sample in SAMPLES:
            if sample.slice_labels is not None:
                slice_labels = {**read_slice_labels(sample.slice_labels), **(slice_labels or {})}
    return ExplainOptions(
        method=args.method,
        classes=args.classes,
        device=args.device,
        image_format=args.image_format,
        keep_phi=args.keep_phi,
        dicom_out=args.dicom_out,
        series_uid=args.series_uid,
        image_spacing=tuple(args.spacing) if args.spacing else None,
        slice_labels=slice_labels,
        faithfulness=args.faithfulness,
        strict=args.strict,
    )


def faithfulness_cell(record: Optional[Dict[str, Any]]) -> str:
    """A finding's faithfulness as the summary shows it: "faithful +0.134", or "-" when not measured."""
    return "-" if not record else f"{record['verdict']} {float(record['score']):+.3f}"


def _summary(results: Sequence["CaseResult"]) -> str:
    """The table printed at the end; a failed case's error was printed when it failed."""
    rows = [("case", "status", "top finding", "its map", "time s", "warnings", "output")]
    for r in results:
        warned = f"{len(r.warnings)}: {r.warnings[0][:60]}" if r.warnings else "-"
        if r.ok:
            top = max(r.probabilities.items(), key=lambda kv: kv[1]) if r.probabilities else ("-", 0.0)
            rows.append((Path(r.input).name, "ok", f"{top[0]} {top[1]:.3f}", faithfulness_cell(r.faithfulness.get(top[0])),
                         f"{sum(r.timings.values()):.1f}", warned, str(r.output)))
        else:
            rows.append((Path(r.input).name, "FAILED", "-", "-", f"{sum(r.timings.values()):.1f}", warned, "- (see its error: line)"))
    widths = [max(len(row[c]) for row in rows[:]) for c in range(6)]
    lines = ["  ".join(row[c].ljust(widths[c]) for c in range(6)) + "  " + row[6] for row in rows]
    return "\n".join(lines)


def _choice_line(case: str, choice: Dict[str, Any]) -> str:
    models = f"{choice['classifier']} + {choice['segmenter'] or 'no segmenter'}"
    return f"models for {case}: {models}: " + " | ".join(str(w) for w in choice.get("why", []))


class JsonlProgress(QuietProgress):
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

    def end_case(self, result: "CaseResult") -> None:
        self._emit({"stage": "done", "fraction": 1.0, "ok": result.ok, "error": result.error,
                    "output": str(result.output) if result.output else None})

    def _emit(self, fields: Dict[str, object]) -> None:
        record = {"case": self.case, "index": self.index, "cases": self.cases, **fields}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


class _BarProgress(QuietProgress):
    """A tqdm bar, on a terminal only: the case as its description, the stage after it."""

    def __init__(self, cases: int) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm
        self.bar = tqdm(total=cases, unit="case")

    def start_case(self, case: str, index: int, cases: int) -> None:
        self.bar.set_description(case)

    def __call__(self, stage: str, fraction: float) -> None:
        self.bar.set_postfix_str(stage)

    def end_case(self, result: "CaseResult") -> None:
        self.bar.update(1)

    def write(self, line: str) -> None:
        self.tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _progress(args: argparse.Namespace, rank: Rank, cases: int) -> QuietProgress:
    if args.progress_jsonl:
        return JsonlProgress()
    if args.no_progress:
        return QuietProgress()
    if sys.stderr.isatty() and not rank.enabled:
        return _BarProgress(cases)
    return LineProgress(prefix=rank.prefix)


@contextmanager
def _warnings_once(verbose: bool) -> Iterator[None]:
    """The core logs a case's warnings as it finds them and also returns them with the case's
    result, whose warnings are printed after it: without --verbose the logged copy is held back."""
    core = logging.getLogger("CTExplainLib")
    level = core.level
    if not verbose:
        core.setLevel(logging.ERROR)
    try:
        yield
    finally:
        core.setLevel(level)


def _check_point_jobs(jobs: Sequence[Job], models: Dict[ModelKey, "Models"]) -> None:
    """Point-mode jobs need point models (see points/run.check_point_models)."""
    if any(job.points is not None for job in jobs):
        from .points.run import check_point_models

        for job in jobs:
            if job.points is not None:
                check_point_models(*models[job.models])


def _run_jobs(mine: Sequence[Tuple[int, Job]], total: int, models: Dict[ModelKey, Models], options: "ExplainOptions",
              args: argparse.Namespace, rank: Rank) -> List[Tuple[int, "CaseResult"]]:
    """This rank's cases, each with its index in the whole list; a failing case is reported and
    the next one runs."""
    from .trust.choice import model_chooser, read_candidates  # imports torch: only when cases run

    progress = _progress(args, rank, len(mine))
    done: List[Tuple[int, "CaseResult"]] = []
    candidates = read_candidates(find_packages()) if any(job.chooses for _, job in mine) else []
    loaded = {path: model for key, pair in models.items() for path, model in zip(key, pair) if path is not None}

    def load(path: Path) -> "LoadedModel":  # each chosen package once
        if path not in loaded:
            loaded[path] = load_package(path)
        return loaded[path]

    try:
        with _warnings_once(args.verbose):
            for index, job in mine:
                progress.start_case(job.folder.name, index, total)
                classifier, segmenter = models[job.models]
                if job.points is not None:
                    result = explain_points_case(job.case, job.folder, classifier, segmenter, job.points, options, progress)
                else:
                    chooser = model_chooser(candidates, job.models[0], job.models[1], job.choose_segmenter, load) if job.chooses else None
                    result = explain_case(job.case, job.folder, classifier, segmenter, options, progress, chooser)
                if result.model_choice:
                    progress.write(_choice_line(job.folder.name, result.model_choice))
                progress.end_case(result)
                for line in result.error.splitlines():  # one line per failed point in point mode
                    progress.write(f"error: {line}")
                for warning in result.warnings:
                    progress.write(f"warning: {job.folder.name}: {warning}")
                done.append((index, result))
    finally:
        progress.close()
    return done


def _write_cohort_summary(out: Path, results: Sequence["CaseResult"]) -> None:
    """summary.csv and summary.html in ``out`` when several cases ran (outputs/report.py)."""
    from .outputs.report import CaseEntry, cohort_summary

    try:
        cohort_summary(out, [CaseEntry(r.input, r.output if r.ok else None, r.error) for r in results])
    except OSError as exc:
        print(f"error: {out}: cannot write the cohort summary: {exc}", file=sys.stderr)


def _finish(out: Path, out_existed: bool, results: Sequence["CaseResult"], to_stderr: bool) -> None:
    """Rank 0, once every case is done: the cohort summary, no empty --out, the table."""
    _write_cohort_summary(out, results)
    if not out_existed and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # every case failed: leave no empty folder behind
    print(_summary(results), file=sys.stderr if to_stderr else sys.stdout)


def run_explain(args: argparse.Namespace) -> int:
    if not args.inputs and not args.sample:
        print("ctexplain explain: give INPUT paths or --sample", file=sys.stderr)
        return EXIT_CASE_FAILED
    try:
        rank = rank_from_environment()
    except CTExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CASE_FAILED
    if not rank.is_main and not args.verbose:  # what every rank finds alike is said once, by rank 0
        logging.getLogger().setLevel(logging.ERROR)
    out_existed = args.out.exists()
    try:
        jobs, problems = _jobs(args)
        models = _load_models([job.models for job in jobs], args.classes)
        options = _options(args)
        _check_point_jobs(jobs, models)
    except CTExplainError as exc:
        if rank.is_main:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_CASE_FAILED
    from .pipeline import CaseResult

    if rank.is_main:
        for _, problem in problems:
            print(f"error: {problem}", file=sys.stderr)
    try:
        with CohortGroup(rank, args.device) as group:
            mine = _run_jobs(share(list(enumerate(jobs)), rank), len(jobs), models, options, args, rank)
            done = sorted(group.gather(mine), key=lambda pair: pair[0])
            results = [CaseResult(input=str(path), error=problem) for path, problem in problems] + [result for _, result in done]
            if rank.is_main:
                _finish(args.out, out_existed, results, args.progress_jsonl)
            group.barrier()  # no rank exits (torchrun stops the rest when one exits 2) before the summary is written
    except CTExplainError as exc:  # joining the group failed (cases report their own errors)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CASE_FAILED
    return 0 if all(r.ok for r in results) else EXIT_CASE_FAILED


def run_models(args: argparse.Namespace) -> int:
    packages = find_packages(args.dir)
    if not packages:
        print("no model packages found")
        return 0
    # Which package each sample case runs with (without the stand-in warnings: they are listed here).
    used_by: Dict[Path, List[str]] = {}
    sample_lines: List[str] = []
    for sample in SAMPLES:
        roles = []
        for role, name in (("classifier", sample.classifier), ("segmenter", sample.segmenter)):
            if name is None:
                roles.append(f"{role} none")
                continue
            try:
                path, missing = locate_package(name)
            except CTExplainError:
                roles.append(f"{role} {name} (NOT FOUND)")
                continue
            used_by.setdefault(path.resolve(), []).append(sample.name)
            roles.append(f"{role} {name}" if missing is None else f"{role} {path.name} (stand-in: {name} is not installed)")
        sample_lines.append(f"  {sample.name:20s} " + ", ".join(roles))
    for info in packages:
        samples = used_by.get(info.path.resolve())
        mark = f"  [sample: {', '.join(samples)}]" if samples else ""
        print(f"{info.name:32s} {info.task:13s} {info.version:8s} {'UNTRAINED ' if info.untrained else ''}{info.path}{mark}")
    print("\nsample cases (ctexplain explain --sample):")
    print("\n".join(sample_lines))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "explain":
        return run_explain(args)
    if args.command == "check-model":
        from .trust.sanity_cli import run_check_model

        return run_check_model(args)
    return run_models(args)


if __name__ == "__main__":
    sys.exit(main())
