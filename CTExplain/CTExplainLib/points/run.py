"""Point mode: a CT explained at the points a user marks (``ctexplain explain CT --point X Y Z``).

The CT is loaded once; for each point (LPS mm):

1. the point is checked: inside the image, and (for a CT in HU) inside the body, so that a
   point in the air or on the table gets an error naming it rather than a meaningless answer;
2. the nodule segmenter outlines the nodule at the point (:func:`.outline.outline_nodule`),
   which gives its diameter and volume (:func:`.outline.nodule_size`);
3. the classifier's input is cut around the nodule by the package's crop policy
   (:func:`.crop.crop_input`), and one CAM pass gives every class's probability and map
   (:func:`CTExplainLib.classify.classify_and_explain`);
4. each map is resampled onto the input's own grid inside the crop (zero elsewhere), and the
   share of its energy inside the nodule is set beside the share of the crop the nodule fills
   (a map that ignored the nodule would show about the latter).

A point that fails gets its error in its own entry; the other points still run. All of a
case's outputs are published together (``case_output_directory``), or none.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..anatomy import BODY_ABOVE_HU, body_mask
from ..classify import Classification, classify_and_explain
from ..devices import resolve_device
from ..errors import CTExplainError
from ..loading import load_volume
from ..model_package import LoadedModel
from ..montage import LegendEntry, finding_montage
from ..pipeline import CaseResult, ExplainOptions, Progress, StageTimer, case_failures, finding_records, slug, untrained_warnings
from ..resample import resample_array
from ..trust.faithfulness import DEFAULT as DEFAULT_FAITHFULNESS, caption as faithfulness_caption, measure as measure_faithfulness
from ..volume import Grid, Volume
from ..writing import case_output_directory, write_image, write_json, write_label_map, write_png
from .crop import PointError, crop_input
from .outline import NoduleSize, nodule_size, outline_nodule
from .points_file import MarkedPoint


# The montage shows this many millimetres in-plane around the point.
MONTAGE_MM = 60.0
LUNG_WINDOW = (-600.0, 1500.0)  # (level, width): a nodule and the lung around it
Box = Tuple[Tuple[int, int, int], Tuple[int, int, int]]  # (start, stop) voxel indices (i, j, k)


def check_point_models(classifier: LoadedModel, segmenter: Optional[LoadedModel]) -> None:
    """Point mode needs a classifier with a crop policy and, for a nodule crop, a point segmenter."""
    crop = classifier.metadata.input.crop
    if crop is None:
        raise CTExplainError(f"{classifier.path}: model {classifier.metadata.name} is not a point model (its input has no crop); "
                             "use --model lung-nodule-malignancy with --point")
    if segmenter is None:
        if crop.mode == "nodule":
            raise CTExplainError(f"{classifier.path}: model {classifier.metadata.name} cuts its input around the nodule's outline "
                                 "and needs a point segmenter (--segmenter lung-nodule-segmenter)")
        return
    seg_crop = segmenter.metadata.input.crop
    if seg_crop is None or seg_crop.mode != "point":
        raise CTExplainError(f"{segmenter.path}: model {segmenter.metadata.name} is not a point segmenter (input crop mode 'point'); "
                             "use --segmenter lung-nodule-segmenter with --point")


def covering_box(grid: Grid, other: Grid) -> Box:
    """The voxels of ``grid`` (start, stop per i, j, k) whose box covers ``other``'s voxel
    centres, clipped to ``grid``."""
    corners = np.array([[a, b, c] for a in (0, other.size[0] - 1) for b in (0, other.size[1] - 1) for c in (0, other.size[2] - 1)], float)
    indices = np.array([grid.point_to_index(other.index_to_point(corner)) for corner in corners])
    start = np.maximum(np.floor(indices.min(axis=0) + 1e-6).astype(int), 0)
    stop = np.minimum(np.ceil(indices.max(axis=0) - 1e-6).astype(int) + 1, np.asarray(grid.size))
    return (tuple(int(v) for v in start), tuple(int(v) for v in np.maximum(stop, start)))  # type: ignore[return-value]


def box_of(grid: Grid, box: Grid) -> Box:
    """(start, stop) of ``box``, a part of ``grid`` made of its own voxels (``Grid.box``)."""
    start = np.rint(grid.point_to_index(box.origin)).astype(int)
    return (tuple(int(v) for v in start), tuple(int(v) for v in start + np.asarray(box.size)))  # type: ignore[return-value]


def _view(array: np.ndarray, box: Box) -> np.ndarray:
    (i0, j0, k0), (i1, j1, k1) = box
    return array[k0:k1, j0:j1, i0:i1]


BODY_FIELD_MM = 100.0  # narrower fields of view are crops around a lesion: no body test there


@dataclass
class PointCase:
    """What all points of one CT share: the volume, and its body mask once a point needs it."""

    volume: Volume
    _body: Optional[np.ndarray] = None

    def body(self) -> Optional[np.ndarray]:
        """The body mask (k, j, i), for CTs in HU; None for other images and for crops narrower
        than BODY_FIELD_MM in-plane (a box around a lesion holds no body outline to find: there
        the largest soft-tissue region is a vessel or the chest wall, not the body)."""
        if self.volume.metadata.get("intensity", "hu") != "hu":
            return None
        grid = self.volume.grid
        if min(grid.size[0] * grid.spacing[0], grid.size[1] * grid.spacing[1]) < BODY_FIELD_MM:
            return None
        if self._body is None:
            self._body = body_mask(self.volume)
        return self._body


def check_location(case: PointCase, lps: Sequence[float]) -> None:
    """A :class:`PointError` for a point outside the image, in the air or outside the body."""
    grid = case.volume.grid
    index = grid.point_to_index(lps)
    if np.any(index < -0.5) or np.any(index > np.asarray(grid.size) - 0.5):
        raise PointError(lps, "lies outside the image (voxel ({:.0f}, {:.0f}, {:.0f}) of a {}x{}x{} grid)".format(*index, *grid.size))
    i, j, k = (int(v) for v in np.clip(np.rint(index), 0, np.asarray(grid.size) - 1))
    body = case.body()
    if body is None or body[k, j, i]:
        return
    value = float(case.volume.array[k, j, i])
    if value < BODY_ABOVE_HU:
        raise PointError(lps, f"is in the air outside the body ({value:.0f} HU)")
    raise PointError(lps, f"is outside the body ({value:.0f} HU: on the table or another object)")


@dataclass
class PointAnalysis:
    """One point explained, in memory: its record for result.json and what the maps are made from."""

    point: MarkedPoint
    error: str = ""
    classification: Optional[Classification] = None
    crop: Optional[Box] = None  # the classifier's crop on the input grid
    nodule_box: Optional[Box] = None  # where the nodule lies on the input grid
    nodule: Optional[np.ndarray] = None  # uint8 (k, j, i) on ``nodule_box``
    size: Optional[NoduleSize] = None
    record: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error

    def heat_map(self, index: int, grid: Grid, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Class ``index``'s map on the input ``grid``: inside the crop the map resampled there,
        zero elsewhere (float32, multiples of 1/1024 as the whole-CT maps)."""
        assert self.classification is not None and self.crop is not None
        heat = np.zeros(grid.shape, np.float32) if out is None else out
        if out is not None:
            heat[...] = 0
        self.classification.heat_map(index, grid.box(*self.crop), out=_view(heat, self.crop))
        return heat

    def nodule_labels(self, grid: Grid) -> np.ndarray:
        """The nodule (label 1) on the input ``grid``, uint8."""
        assert self.nodule is not None and self.nodule_box is not None
        labels = np.zeros(grid.shape, np.uint8)
        _view(labels, self.nodule_box)[...] = self.nodule
        return labels


def _nodule_on(mask: Volume, nodule: np.ndarray, target: Grid) -> np.ndarray:
    """The boolean nodule (on ``mask``'s grid) resampled (linear, >= 0.5) onto ``target``."""
    return resample_array(nodule.astype(np.float32), mask.grid, target, "linear", 0.0) >= 0.5


def analyse_point(case: PointCase, classifier: LoadedModel, segmenter: Optional[LoadedModel], point: MarkedPoint,
                  method: str, device: torch.device, faithfulness: str = DEFAULT_FAITHFULNESS) -> PointAnalysis:
    """One point through steps 1-4 of the module docstring, and the faithfulness of every class's
    map on the crop (``faithfulness``: a mode of trust/faithfulness.py; "auto" is fast for point
    models); a :class:`PointError` becomes the entry's error (naming the point), other failures
    propagate."""
    started = time.perf_counter()
    analysis = PointAnalysis(point, record={**point.to_dict(), "ok": False, "error": ""})
    volume = case.volume
    try:
        check_location(case, point.lps)
        mask = outline_nodule(segmenter, volume, point.lps, device) if segmenter is not None else None
        point_input = crop_input(volume, classifier.metadata.input, point.lps, mask)
    except PointError as exc:
        analysis.error = f"{volume.metadata.get('source', 'input')}: point {point.id} at ({point.lps[0]:.1f}, {point.lps[1]:.1f}, {point.lps[2]:.1f}) LPS: {exc.problem}"
        analysis.record["error"] = analysis.error
        return analysis
    classification = classify_and_explain(classifier, point_input.model_input, method, device)
    crop = box_of(volume.grid, point_input.box)
    analysis.classification, analysis.crop = classification, crop
    findings = finding_records(classification, classifier.metadata.threshold)
    measured = measure_faithfulness(classifier, point_input.model_input.tensor, classification, range(len(findings)), faithfulness, device)
    for index, faithful in measured.items():
        findings[index]["faithfulness"] = faithful.to_dict()
    record = analysis.record
    record.update(ok=True, findings=findings, centre_lps=[float(v) for v in point_input.centre],
                  crop={"start": list(crop[0]), "stop": list(crop[1])})
    if mask is not None:
        nodule = np.asarray(mask.array) > 0
        analysis.nodule_box = covering_box(volume.grid, mask.grid)
        analysis.nodule = _nodule_on(mask, nodule, volume.grid.box(*analysis.nodule_box)).astype(np.uint8)
        analysis.size = nodule_size(mask)
        in_crop = _nodule_on(mask, nodule, point_input.box)
        record["nodule"] = {**analysis.size.to_dict(), "share_of_crop": float(in_crop.mean())}
        for index, finding in enumerate(findings):
            heat = classification.heat_map(index, point_input.box)
            total = float(heat.sum(dtype=np.float64))
            finding["energy_in_nodule"] = float(heat[in_crop].sum(dtype=np.float64)) / total if total > 0 else 0.0
    record["seconds"] = time.perf_counter() - started
    return analysis


def explain_points(volume: Volume, classifier: LoadedModel, segmenter: Optional[LoadedModel], points: Sequence[MarkedPoint],
                   method: str = "gradcam", device: str = "auto", faithfulness: str = DEFAULT_FAITHFULNESS) -> List[PointAnalysis]:
    """Every point of one loaded CT, in memory (the Slicer module's entry point)."""
    check_point_models(classifier, segmenter)
    case = PointCase(volume)
    chosen = resolve_device(device)
    return [analyse_point(case, classifier, segmenter, point, method, chosen, faithfulness) for point in points]


def point_montage(volume: Volume, analysis: PointAnalysis, heat: np.ndarray, labels: Optional[np.ndarray], title: str,
                  segments: Optional[List[LegendEntry]] = None, caption: Optional[str] = None) -> np.ndarray:
    """Key slices of the crop, MONTAGE_MM in-plane around the point: CT, map, nodule outline."""
    assert analysis.crop is not None
    grid = volume.grid
    index = grid.point_to_index(analysis.point.lps)
    half = np.array([MONTAGE_MM / 2.0 / grid.spacing[0], MONTAGE_MM / 2.0 / grid.spacing[1]])
    start = np.maximum(np.floor(index[:2] - half).astype(int), 0)
    stop = np.minimum(np.ceil(index[:2] + half).astype(int) + 1, np.asarray(grid.size[:2]))
    box: Box = ((int(start[0]), int(start[1]), analysis.crop[0][2]), (int(stop[0]), int(stop[1]), analysis.crop[1][2]))
    view = Volume(_view(volume.array, box), grid.box(*box), metadata=dict(volume.metadata))
    return finding_montage(view, _view(heat, box), None if labels is None else _view(labels, box), title,
                           window=LUNG_WINDOW, radiological=True, first_slice=box[0][2], segments=segments, caption=caption)


def nodule_legend(segmenter: Optional[LoadedModel]) -> Optional[List[LegendEntry]]:
    """The montage legend of the nodule label: the segmenter's class 1, its name and colour."""
    if segmenter is None:
        return None
    nodule = segmenter.metadata.classes[1]
    return [(1, nodule.name, (float(nodule.color[0]), float(nodule.color[1]), float(nodule.color[2])))]


def write_point(volume: Volume, analysis: PointAnalysis, folder: Path, method: str, extension: str,
                heat: Optional[np.ndarray] = None, segments: Optional[List[LegendEntry]] = None) -> np.ndarray:
    """A point's files: ``point_<id>/heatmap_<class>``, ``point_<id>/nodule`` and
    ``montage_point_<id>.png`` (the first finding's map). Returns the heat buffer for reuse."""
    assert analysis.classification is not None
    sub = folder / f"point_{analysis.point.id}"
    sub.mkdir()
    labels = None
    if analysis.nodule is not None:
        labels = analysis.nodule_labels(volume.grid)
        write_label_map(volume.with_array(labels), sub / f"nodule{extension}")
        analysis.record["nodule"]["label_map"] = f"{sub.name}/nodule{extension}"
    for index, finding in enumerate(analysis.record["findings"]):
        heat = analysis.heat_map(index, volume.grid, out=heat)
        finding["heat_map"] = f"{sub.name}/heatmap_{slug(finding['name'])}{extension}"
        write_image(volume.with_array(heat), folder / finding["heat_map"])
        if index == 0:
            share = finding.get("energy_in_nodule")
            title = f"point {analysis.point.id}  {finding['name']} p={finding['probability']:.3f}  ({method})"
            if share is not None:
                title += f"  {100 * share:.0f}% of map in nodule"
            analysis.record["montage"] = f"montage_point_{analysis.point.id}.png"
            measured = finding.get("faithfulness")
            write_png(point_montage(volume, analysis, heat, labels, title, segments, faithfulness_caption(measured) if measured else None),
                      folder / analysis.record["montage"])
    assert heat is not None
    return heat


def point_warnings(volume: Volume, classifier: LoadedModel, segmenter: Optional[LoadedModel]) -> List[str]:
    return list(volume.metadata.get("warnings", [])) + untrained_warnings(classifier, segmenter)


def explain_points_case(input_path: Path, out_dir: Path, classifier: LoadedModel, segmenter: Optional[LoadedModel],
                        points: Sequence[MarkedPoint], options: Optional[ExplainOptions] = None,
                        progress: Optional[Progress] = None) -> CaseResult:
    """One CT at its ``points`` into ``out_dir`` (created complete or not at all). The case
    fails (``ok`` False) if any point does; the points that worked are still written."""
    options = options or ExplainOptions()
    timer = StageTimer(progress or (lambda stage, fraction: None), ["load", "points", "write"])
    result = CaseResult(input=str(input_path))
    started = time.perf_counter()
    with case_failures(result, input_path):
        if not points:
            raise CTExplainError(f"{input_path}: no points for this input")
        with timer.stage("load"):
            volume = load_volume(input_path, series_uid=options.series_uid, image_spacing=options.image_spacing)
        with timer.stage("points"):
            analyses = explain_points(volume, classifier, segmenter, points, options.method, options.device, options.faithfulness)
        extension = "." + options.image_format
        with case_output_directory(out_dir) as staging, timer.stage("write"):
            heat: Optional[np.ndarray] = None
            for analysis in analyses:
                if analysis.ok:
                    heat = write_point(volume, analysis, staging, options.method, extension, heat, nodule_legend(segmenter))
            record = {
                "input": str(volume.metadata.get("source", input_path)),
                "series_uid": volume.metadata.get("series_uid"),
                "classifier": classifier.identity,
                "segmenter": segmenter.identity if segmenter is not None else None,
                "method": options.method,
                "points": [a.record for a in analyses],
                "warnings": point_warnings(volume, classifier, segmenter),
                "input_grid": volume.grid.to_dict(),
                "timings_s": {**timer.seconds, "total": time.perf_counter() - started},
            }
            if options.keep_phi:
                record["patient"] = dict(volume.phi)
            write_json(record, staging / "result.json")
        failed = [a.error for a in analyses if not a.ok]
        result.output = out_dir
        result.ok = not failed
        result.error = "\n".join(failed)  # one line per point
        worked = [a for a in analyses if a.ok]
        result.probabilities = {f"{a.point.id}:{f['name']}": f["probability"] for a in worked for f in a.record["findings"]}
        result.faithfulness = {f"{a.point.id}:{f['name']}": f["faithfulness"] for a in worked for f in a.record["findings"] if "faithfulness" in f}
        result.warnings = record["warnings"]
    result.timings = dict(timer.seconds)
    result.elapsed_s = time.perf_counter() - started
    return result
