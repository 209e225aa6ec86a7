"""Point mode's cost per point on a real chest CT series, beside the networks' own compute.

Loads ../shared/data/lidc-idri-0001 (512x512x133) once, then explains it at ``--points`` points
around its nodule (the nodules.csv centre and points a few mm from it, each outlining and
classifying the same nodule), in memory, and prints key=value lines:

All times are CPU seconds of the process with one torch thread (the machine is shared: the
wall clock there measures other jobs' load), medians over points and repeats:

    load_s                      loading the series and its body mask (once per CT)
    seconds_per_point           median seconds of one point's analysis once the CT is loaded:
                                location check, segmenter, crop, classifier with Grad-CAM of
                                every class, nodule size and map share (points/run.analyse_point,
                                --faithfulness off)
    seconds_per_point_faithful  the same with the maps' faithfulness (fast, the default "auto"
                                for point models), measured on the same points in the same run
    faithful_over_point         seconds_per_point_faithful / seconds_per_point
    seconds_per_point_written   the same plus writing the point's files (full-grid heat maps and
                                nodule label map, gzip NRRD, and the montage)
    extra_points_s              all points of a repeat minus its first, per extra point
    model_compute_s             the networks' own forward passes at one point: the segmenter's
                                over its slices plus the classifier's (no CAM), medians
    point_over_model_compute    seconds_per_point / model_compute_s
    wall_seconds_per_point      seconds_per_point by the wall clock (includes waiting for a core)
    load_average_1min           the machine's load while measuring (2 cores shared)

    python bench/bench_points.py [--model PKG] [--segmenter PKG] [--points 6] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "CTExplain"), str(ROOT)]

from CTExplainLib.loading import load_volume  # noqa: E402
from CTExplainLib.model_package import load_package  # noqa: E402
from CTExplainLib.models_catalog import NODULE_SAMPLE, POINT_CLASSIFIER, POINT_SEGMENTER, resolve_package  # noqa: E402
from CTExplainLib.points.crop import crop_input  # noqa: E402
from CTExplainLib.points.outline import outline_nodule  # noqa: E402
from CTExplainLib.points.points_file import MarkedPoint  # noqa: E402
from CTExplainLib.points.run import PointCase, analyse_point, write_point  # noqa: E402

SERIES = ROOT.parent / "shared" / "data" / "lidc-idri-0001"
OFFSETS_MM = [(0, 0, 0), (2, 0, 0), (0, 2, 0), (-2, 0, 0), (0, -2, 0), (0, 0, 2.5), (2, 2, 0), (-2, -2, 0)]


def _timed(work) -> float:
    """CPU seconds of this process doing ``work`` (all its threads): on a machine shared by
    many jobs the wall clock measures the queue, this the work (on an idle machine with one
    thread they agree)."""
    start = time.process_time()
    work()
    return time.process_time() - start


def model_compute(volume, classifier, segmenter, point, device) -> float:
    """The segmenter's forward pass over its slices at ``point`` plus the classifier's forward
    pass on its crop: the work the networks themselves do, without Grad-CAM's backward pass."""
    seg_spec = segmenter.metadata.input
    seg_batch = crop_input(volume, seg_spec, point).model_input
    seg_batch = seg_batch.slices() if seg_spec.spatial_dims == 2 else seg_batch.batch()
    mask = outline_nodule(segmenter, volume, point, device)
    cls_batch = crop_input(volume, classifier.metadata.input, point, mask).model_input.batch()
    with torch.no_grad():
        return _timed(lambda: segmenter.network(seg_batch)) + _timed(lambda: classifier.network(cls_batch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=POINT_CLASSIFIER)
    parser.add_argument("--segmenter", default=POINT_SEGMENTER)
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    classifier, segmenter = load_package(resolve_package(args.model)), load_package(resolve_package(args.segmenter))
    case = PointCase(load_volume(SERIES))
    load_s = _timed(lambda: case.body()) + 0.0
    load_s += _timed(lambda: load_volume(SERIES))  # the load itself, timed again as the body mask was
    centre = np.asarray(NODULE_SAMPLE.points[0])
    points = [MarkedPoint(str(n), tuple(centre + np.asarray(o, float))) for n, o in enumerate(OFFSETS_MM[: args.points], 1)]
    analyse_point(case, classifier, segmenter, points[0], "gradcam", device, "fast")  # warm-up (first-call allocations)
    per_point, wall_per_point, written, extra, compute, faithful = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeat):
            times = []
            for point in points:
                wall = time.perf_counter()
                seconds = _timed(lambda: times.append(analyse_point(case, classifier, segmenter, point, "gradcam", device, "off")))
                wall_per_point.append(time.perf_counter() - wall)
                per_point.append(seconds)
                analysis = times[-1]
                assert analysis.ok, analysis.error
                folder = Path(scratch) / f"r{repeat}"
                folder.mkdir(exist_ok=True)
                written.append(seconds + _timed(lambda: write_point(case.volume, analysis, folder, "gradcam", ".nrrd")))
                faithful.append(_timed(lambda: analyse_point(case, classifier, segmenter, point, "gradcam", device, "fast")))
            extra.append((sum(per_point[-len(points):]) - per_point[-len(points)]) / max(1, len(points) - 1))
            compute += [model_compute(case.volume, classifier, segmenter, point.lps, device) for point in points]
    seconds_per_point = statistics.median(per_point)
    model_s = statistics.median(compute)
    print(f"points={len(points)} repeats={args.repeat}")
    print(f"load_s={load_s:.3f}")
    print(f"seconds_per_point={seconds_per_point:.3f}")
    print(f"wall_seconds_per_point={statistics.median(wall_per_point):.3f}")
    print(f"seconds_per_point_faithful={statistics.median(faithful):.3f}")
    print(f"faithful_over_point={statistics.median(faithful) / seconds_per_point:.2f}")
    print(f"seconds_per_point_written={statistics.median(written):.3f}")
    print(f"extra_points_s={statistics.median(extra):.3f}")
    print(f"model_compute_s={model_s:.3f}")
    print(f"point_over_model_compute={seconds_per_point / model_s:.2f}")
    print(f"load_average_1min={os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
