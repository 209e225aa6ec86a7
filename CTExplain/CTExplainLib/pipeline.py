"""One case through the whole core: load → preprocess → classify + explain → segment → map back
→ statistics → write. Used by the ``ctexplain`` command line and by the Slicer module alike.

Outputs of a case go to a staging folder that is renamed into place only when the case is
complete, so a failure or Ctrl-C never leaves a half-written result. Heat maps are produced,
measured and written one at a time, all in one buffer that is the pixel memory of the image
being written: memory grows with the CT, not with the number of classes, and the file is
compressed on a thread while the statistics and the montage of the same map are computed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .anatomy import AnatomyStats, Regions, anatomy_stats
from .classify import Classification, classify_and_explain
from .commandline.choices import METHODS
from .devices import resolve_device
from .errors import CTExplainError, InputError
from .loading import load_volume
from .model_package import LoadedModel
from .montage import finding_montage, legend_of
from .outputs.report import write_case_report
from .preprocess import preprocess
from .segment import Segmentation, segment
from .slice_labels import positive_slices
from .trust.faithfulness import CHOICES as FAITHFULNESS_CHOICES, DEFAULT as DEFAULT_FAITHFULNESS, Faithfulness, measure as measure_faithfulness, resolve_for
from .trust.choice import Chooser
from .trust.domain import DomainReport, InputProfile, check_input, enforce
from .volume import Volume, image_backed_array
from .writing import case_output_directory, write_image, write_json, write_label_map, write_png, write_segmentation

LOG = logging.getLogger(__name__)

ALL_CLASSES_UP_TO = 8  # models with more classes get heat maps only for findings above threshold
Progress = Callable[[str, float], None]


@dataclass
class ExplainOptions:
    method: str = "gradcam"
    classes: Optional[List[str]] = None  # heat maps for these findings (default: see select_findings)
    device: str = "auto"
    image_format: str = "nrrd"  # heat maps and label map: "nrrd" or "nii.gz"
    keep_phi: bool = False
    series_uid: Optional[str] = None
    image_spacing: Optional[Tuple[float, float, float]] = None  # for 2D image stacks
    dicom_out: bool = False  # also a DICOM SEG and Parametric Maps (DICOM input only; outputs/dicom_export.py)
    slice_labels: Optional[Dict[str, Dict[int, bool]]] = None  # per case, see slice_labels.py
    faithfulness: str = DEFAULT_FAITHFULNESS  # "auto", "off", "fast" or "full": see trust/faithfulness.py
    strict: bool = False  # a warning of the domain check refuses the case (trust/domain.py)


@dataclass
class CaseResult:
    input: str
    output: Optional[Path] = None
    ok: bool = False
    error: str = ""
    probabilities: Dict[str, float] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per stage
    elapsed_s: float = 0.0  # wall-clock seconds of the whole case, loading to publishing
    warnings: List[str] = field(default_factory=list)
    faithfulness: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per finding, as in result.json
    model_choice: Dict[str, Any] = field(default_factory=dict)  # when the models were chosen from the input


def _no_progress(stage: str, fraction: float) -> None:
    return None


class StageTimer:
    """Wall-clock time of each named stage, reported to a progress callback as it starts."""

    def __init__(self, progress: Progress, stages: Sequence[str]) -> None:
        self.progress = progress
        self.stages = list(stages)
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self.stages:
            self.stages.append(name)
        self.progress(name, self.stages.index(name) / len(self.stages))
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class BackgroundWriter:
    """Runs one write at a time on a thread (SimpleITK releases the GIL while it compresses),
    so that writing a heat map overlaps computing the next one. At most one write is pending,
    so at most two heat maps are in memory; a failed write raises at the next call."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctexplain-writer")
        self.pending: Optional[Future] = None

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        self.wait()
        self.pending = self.pool.submit(write, *args)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)


def select_findings(classification: Classification, threshold: float, requested: Optional[Sequence[str]]) -> List[int]:
    """Which findings get a heat map: those asked for; else all (≤ 8 classes); else those above threshold."""
    names = classification.class_names
    if requested:
        unknown = [n for n in requested if n not in names]
        if unknown:
            raise CTExplainError(f"unknown finding(s) {', '.join(unknown)}; this model has: {', '.join(names)}")
        return [names.index(n) for n in requested]
    if len(names) <= ALL_CLASSES_UP_TO:
        return list(range(len(names)))
    return [i for i, p in enumerate(classification.probabilities) if p >= threshold]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "finding"


@dataclass
class Analysis:
    """Everything computed for one volume, before writing."""

    volume: Volume
    classification: Classification
    segmentation: Optional[Segmentation]
    positive_slices: Optional[Sequence[bool]] = None  # per axial slice, where slice labels exist
    faithfulness: Dict[int, Faithfulness] = field(default_factory=dict)  # per finding index
    domain: Optional[DomainReport] = None  # the input against the models' training domains


def analyse(
    volume: Volume,
    classifier: LoadedModel,
    segmenter: Optional[LoadedModel],
    options: ExplainOptions,
    timer: StageTimer,
    profile: Optional[InputProfile] = None,
) -> Analysis:
    """Classify, explain and segment an already loaded volume (the Slicer module's entry point),
    after checking it against the models' training domains (``profile``: already computed)."""
    if options.method not in METHODS:
        raise CTExplainError(f"method must be one of {', '.join(METHODS)}, got {options.method!r}")
    if options.faithfulness not in FAITHFULNESS_CHOICES:
        raise CTExplainError(f"faithfulness must be one of {', '.join(FAITHFULNESS_CHOICES)}, got {options.faithfulness!r}")
    source = volume.metadata.get("source", "input")
    if classifier.metadata.input.spatial_dims == 3 and volume.metadata.get("dims") == 2:
        raise InputError(source, f"is a single 2D image but model {classifier.metadata.name} needs a 3D volume")
    if np.issubdtype(volume.array.dtype, np.floating) and not _all_finite(volume.array):
        raise InputError(source, "holds NaN or infinite voxel values")
    with timer.stage("domain check"):
        domain = check_input(volume, classifier, segmenter, profile)
    enforce(domain, options.strict)
    for warning in domain.warnings:  # callers show them from the record (result.json, the Slicer module)
        LOG.info("%s: %s", source, warning)
    device = resolve_device(options.device)
    with timer.stage("preprocess"):
        model_input = preprocess(volume, classifier.metadata.input)
    with timer.stage("classify+explain"):
        classification = classify_and_explain(classifier, model_input, options.method, device)
    faithful: Dict[int, Faithfulness] = {}
    if _measures_faithfulness(options, classifier):
        with timer.stage("faithfulness"):
            findings = select_findings(classification, classifier.metadata.threshold, options.classes)
            faithful = measure_faithfulness(classifier, model_input.tensor, classification, findings, options.faithfulness, device)
    del model_input  # not kept while the segmenter runs
    segmentation = None
    if segmenter is not None:
        segmentation = segment(segmenter, volume, device, timer.stage)
    return Analysis(volume, classification, segmentation, faithfulness=faithful, domain=domain)


def _measures_faithfulness(options: ExplainOptions, classifier: LoadedModel) -> bool:
    valid = options.faithfulness in FAITHFULNESS_CHOICES  # else analyse reports it
    return valid and resolve_for(options.faithfulness, classifier) != "off"


def case_stages(with_segmenter: bool, before: Sequence[str], after: Sequence[str], faithful: bool = False) -> List[str]:
    """The progress stages of one case: ``before``, those of :func:`analyse`, then ``after``."""
    return [*before, "domain check", "preprocess", "classify+explain", *(["faithfulness"] if faithful else []),
            *(["segment", "map labels"] if with_segmenter else []), *after]


@dataclass
class InMemoryResult:
    """A volume explained in memory, for callers that keep the outputs as arrays (the Slicer
    module): the result.json-shaped ``record`` and the label map; :meth:`heat_maps` yields each
    finding's map on the input grid and adds its anatomy to ``record`` as it goes."""

    analysis: Analysis
    record: Dict[str, Any]
    regions: Optional[Regions]
    threshold: float
    timer: StageTimer

    @property
    def labels(self) -> Optional[np.ndarray]:
        segmentation = self.analysis.segmentation
        return segmentation.labels.array if segmentation is not None else None

    def heat_maps(self) -> Iterator[Tuple[str, np.ndarray]]:
        classification, findings = self.analysis.classification, self.record["findings"]
        for index in select_findings(classification, self.threshold, None):
            name = classification.class_names[index]
            heat = classification.heat_map(index, self.analysis.volume.grid)  # float32, a new array each
            findings[index]["anatomy"] = finding_anatomy(self.analysis, name, heat, self.regions)
            yield name, heat


def explain_in_memory(
    volume: Volume,
    classifier: LoadedModel,
    segmenter: Optional[LoadedModel],
    options: ExplainOptions,
    progress: Progress,
    after: Sequence[str] = (),
) -> InMemoryResult:
    """Classify, explain and segment ``volume`` and prepare its statistics; the heat maps are
    made when :meth:`InMemoryResult.heat_maps` is iterated. ``after`` names the caller's own
    stages, timed with the result's ``timer``, so that progress reaches 1 only at their end."""
    timer = StageTimer(progress, case_stages(segmenter is not None, [], ["statistics", *after],
                                             _measures_faithfulness(options, classifier)))
    analysis = analyse(volume, classifier, segmenter, options, timer)
    with timer.stage("statistics"):
        regions = case_regions(analysis)
    record = analysis_record(analysis, classifier, segmenter, options.method)
    return InMemoryResult(analysis, record, regions, classifier.metadata.threshold, timer)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Freed temporaries of up to 32 MB stay in the heap, and the many made while segmenting,
    mapping labels and building the body mask leave a ~100 MB gap on a 512x512x300 CT; given
    back before the heat-map buffer is allocated, it no longer adds to the peak memory.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # another C library: nothing to do
        pass


def _all_finite(array: np.ndarray) -> bool:
    # min and max are NaN or infinite if any voxel is, and need no full-size boolean array.
    return bool(array.size == 0 or (np.isfinite(array.min()) and np.isfinite(array.max())))


def case_regions(analysis: Analysis) -> Optional[Regions]:
    """The regions every finding's energy is split into: the segments, and (for CTs in HU) in
    and outside the body; without a segmentation, the body mask alone still splits the map.
    None for neither (no segmentation of a non-HU image)."""
    volume = analysis.volume
    labels = analysis.segmentation.labels.array if analysis.segmentation is not None else None
    if volume.metadata.get("intensity", "hu") == "hu":
        return Regions.for_ct(volume, labels)
    return Regions.of(labels) if labels is not None else None


def finding_stats(analysis: Analysis, name: str, heat: np.ndarray, regions: Optional[Regions]) -> AnatomyStats:
    """Where the finding's map (on the input grid) lies: energy per region of ``regions``
    (:func:`case_regions`), in positive slices, and the peak's position and region."""
    names = {s.label: s.name for s in analysis.segmentation.segments} if analysis.segmentation is not None else {}
    return anatomy_stats(name, analysis.volume.with_array(heat), names=names, positive_slices=analysis.positive_slices, regions=regions)


def finding_anatomy(analysis: Analysis, name: str, heat: np.ndarray, regions: Optional[Regions]) -> Dict[str, Any]:
    """:func:`finding_stats` as the plain record result.json holds for the finding."""
    record = finding_stats(analysis, name, heat, regions).to_dict()
    del record["finding"]
    return record


def finding_records(classification: Classification, threshold: float) -> List[Dict[str, Any]]:
    """One result.json record per class: probability, threshold decision, raw CAM maximum (the
    heat map's file is filled in when it is written)."""
    return [
        {
            "name": name,
            "probability": float(probability),
            "above_threshold": bool(probability >= threshold),
            "cam_raw_max": float(raw_max),
            "heat_map": None,
        }
        for name, probability, raw_max in zip(classification.class_names, classification.probabilities, classification.raw_max)
    ]


def untrained_warnings(classifier: LoadedModel, segmenter: Optional[LoadedModel]) -> List[str]:
    warnings = []
    if classifier.metadata.untrained:
        warnings.append(f"model {classifier.metadata.name} is UNTRAINED (random weights): its outputs show the mechanics only")
    if segmenter is not None and segmenter.metadata.untrained:
        warnings.append(f"segmenter {segmenter.metadata.name} is UNTRAINED (random weights): its mask is meaningless")
    return warnings


def analysis_record(analysis: Analysis, classifier: LoadedModel, segmenter: Optional[LoadedModel], method: str) -> Dict[str, Any]:
    """What the CLI's result.json and the Slicer module's table share: models, method, one
    record per finding (probability, threshold decision, raw CAM maximum), segments, warnings."""
    classification, segmentation = analysis.classification, analysis.segmentation
    findings = finding_records(classification, classifier.metadata.threshold)
    for index, measured in analysis.faithfulness.items():
        findings[index]["faithfulness"] = measured.to_dict()
    warnings = analysis.domain.warnings if analysis.domain is not None else []
    warnings += list(analysis.volume.metadata.get("warnings", [])) + classification.warnings
    if segmentation is not None:
        warnings += segmentation.warnings
    warnings += untrained_warnings(classifier, segmenter)
    return {
        "classifier": classifier.identity,
        "segmenter": segmenter.identity if segmenter is not None else None,
        "method": method,
        "findings": findings,
        "segments": [{"label": s.label, "name": s.name, "color": list(s.color)} for s in segmentation.segments] if segmentation is not None else [],
        "warnings": warnings,
        "domain": analysis.domain.to_dict() if analysis.domain is not None else None,
    }


def _write_labels(segmentation: Segmentation, folder: Path, extension: str) -> None:
    write_label_map(segmentation.labels, folder / f"labels{extension}")
    write_segmentation(segmentation.labels, segmentation.segments, folder / "segmentation.seg.nrrd")


def _start_dicom(analysis: Analysis, options: ExplainOptions, result: Dict[str, Any], timer: StageTimer):
    """``--dicom-out``: the case's DICOM writer (its warnings added to ``result``), or None."""
    if not options.dicom_out:
        return None
    from .outputs.dicom_export import CaseDicom  # highdicom only when asked for

    with timer.stage("dicom"):
        dicom = CaseDicom.start(analysis.volume, options.keep_phi, options.method)
    result["warnings"] += dicom.warnings
    return dicom


def write_analysis(analysis: Analysis, folder: Path, classifier: LoadedModel, segmenter: Optional[LoadedModel], options: ExplainOptions, timer: StageTimer) -> Dict[str, Any]:
    """Write heat maps, masks and montages into ``folder``; returns the record for result.json."""
    volume, classification = analysis.volume, analysis.classification
    extension = "." + options.image_format
    labels = analysis.segmentation.labels.array if analysis.segmentation is not None else None
    chosen = select_findings(classification, classifier.metadata.threshold, options.classes)
    result: Dict[str, Any] = {
        "input": str(volume.metadata.get("source", "")),
        "series_uid": volume.metadata.get("series_uid"),
        **analysis_record(analysis, classifier, segmenter, options.method),
    }
    segments = legend_of(result["segments"])
    dicom = _start_dicom(analysis, options, result, timer)
    with BackgroundWriter() as writer:
        if analysis.segmentation is not None:
            with timer.stage("write"):
                writer.submit(_write_labels, analysis.segmentation, folder, extension)  # while the body mask is made
            if dicom is not None:
                with timer.stage("dicom"):
                    result["dicom_segmentation"] = dicom.write_segmentation(labels, analysis.segmentation.segments, segmenter.identity, folder)
        with timer.stage("statistics"):
            regions = case_regions(analysis)
        heat: Optional[np.ndarray] = None  # one buffer for every finding's map
        for index in sorted(chosen):
            record = result["findings"][index]
            name, probability = record["name"], record["probability"]
            with timer.stage("write"):
                writer.wait()  # the previous map is written: its buffer is free
            with timer.stage("heat maps"):
                if heat is None:
                    release_free_memory()
                    heat = image_backed_array(volume.grid, np.float32)
                classification.heat_map(index, volume.grid, out=heat)
            with timer.stage("write"):
                record["heat_map"] = f"heatmap_{slug(name)}{extension}"
                writer.submit(write_image, volume.with_array(heat), folder / record["heat_map"])
            with timer.stage("statistics"):  # reads the map while the writer compresses it
                stats = finding_stats(analysis, name, heat, regions)
                record["anatomy"] = stats.to_dict()
                del record["anatomy"]["finding"]
            if dicom is not None:
                with timer.stage("dicom"):
                    record["dicom_heat_map"] = dicom.write_heat_map(heat, name, index, f"heatmap_{slug(name)}", classifier.identity, folder)
            with timer.stage("write"):
                title = f"{name}  p={probability:.3f}  ({options.method})"
                measured = analysis.faithfulness.get(index)
                montage = finding_montage(volume, heat, labels, title, radiological=True, energy=stats.slice_energy, segments=segments,
                                          caption=measured.caption() if measured is not None else None)
                record["montage"] = f"montage_{slug(name)}.png"
                write_png(montage, folder / record["montage"])
        with timer.stage("write"):
            writer.wait()
    result["input_grid"] = volume.grid.to_dict()
    result["model_grid"] = classification.model_grid.to_dict()
    result["timings_s"] = dict(timer.seconds)
    if classification.slice_probabilities is not None:
        result["slice_probabilities"] = classification.slice_probabilities.tolist()
    if options.keep_phi:
        result["patient"] = dict(volume.phi)
    return result


@contextmanager
def case_failures(result: CaseResult, input_path: Path) -> Iterator[None]:
    """Run one case's work: a failure, whatever it is, becomes ``result.error`` (one line
    naming the input) instead of stopping the other cases."""
    try:
        yield
    except CTExplainError as exc:
        result.error = str(exc)
    except Exception as exc:
        LOG.debug("case %s failed", input_path, exc_info=True)
        result.error = f"{input_path}: {type(exc).__name__}: {exc}"


def explain_case(
    input_path: Path,
    out_dir: Path,
    classifier: Optional[LoadedModel],
    segmenter: Optional[LoadedModel] = None,
    options: Optional[ExplainOptions] = None,
    progress: Optional[Progress] = None,
    choose: Optional[Chooser] = None,
) -> CaseResult:
    """Run one case into ``out_dir`` (created complete or not at all); errors are reported, not raised.
    With ``choose``, the models are chosen from the loaded volume (``classifier``/``segmenter`` unused)."""
    options = options or ExplainOptions()
    with_segmenter = segmenter is not None or choose is not None
    faithful = _measures_faithfulness(options, classifier) if classifier is not None else False  # chosen later: not known yet
    timer = StageTimer(progress or _no_progress, case_stages(with_segmenter, ["load"], ["heat maps", "statistics", "write"], faithful))
    result = CaseResult(input=str(input_path))
    started = time.perf_counter()
    with case_failures(result, input_path):
        with timer.stage("load"):
            volume = load_volume(input_path, series_uid=options.series_uid, image_spacing=options.image_spacing)
        profile, choice = None, None
        if choose is not None:
            with timer.stage("domain check"):
                classifier, segmenter, profile, choice = choose(volume)
        if classifier is None:
            raise CTExplainError("explain_case needs a classifier or a chooser")
        analysis = analyse(volume, classifier, segmenter, options, timer, profile)
        if options.slice_labels is not None:
            analysis.positive_slices = positive_slices(options.slice_labels, out_dir.name, volume.grid.size[2])
        with case_output_directory(out_dir) as staging:
            record = write_analysis(analysis, staging, classifier, segmenter, options, timer)
            if choice is not None:
                record["model_choice"] = result.model_choice = choice
            record["timings_s"]["total"] = time.perf_counter() - started  # wall clock, stages and all between
            write_json(record, staging / "result.json")
            write_case_report(record, staging, title=out_dir.name)
        result.ok, result.output = True, out_dir
        result.probabilities = {f["name"]: f["probability"] for f in record["findings"]}
        result.warnings = record["warnings"]
        result.faithfulness = {f["name"]: f["faithfulness"] for f in record["findings"] if "faithfulness" in f}
    result.timings = dict(timer.seconds)
    result.elapsed_s = time.perf_counter() - started
    return result
