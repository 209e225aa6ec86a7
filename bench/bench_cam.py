"""All-class Grad-CAM / Grad-CAM++ cost against a plain forward and against MONAI's GradCAM.

For MONAI DenseNet121 and ResNet18 in 3D (random weights, float32, CPU), one input of shape
(1, 1, D, H, W) = (1, 1, 128, 128, 64) by default and 18 classes, each round times, in turn:

    forward_s              model(x) under torch.no_grad()       (the reference cost)
    inference_forward_s    model(x) under torch.inference_mode() (is no_grad an honest baseline?)
    allclass_cam_s         explain(..., "cam"): the explain forward alone (no backward)
    allclass_gradcam_s     explain(..., "gradcam") for all 18 classes
    allclass_gradcampp_s   explain(..., "gradcampp") for all 18 classes
    monai_gradcam_loop_s   monai.visualize.GradCAM(...).compute_map(x, class_idx=c) for c in 0..17
                           (one full forward + backward per class, maps at the same resolution
                           as ours, so the work compared is the same)

after one warm-up round; rounds are interleaved (every measurement once per round) so that
drifts in machine speed hit all of them alike, and each figure is the median over rounds.
Prints ``key=value`` lines, one block per network, with the ratios to ``forward_s`` and
``monai_vs_ours_max_abs_diff`` (normalised maps, all classes) as a check that both compute
the same thing.

    .venv/bin/python bench/bench_cam.py [--repeats 3] [--networks DenseNet121 ResNet18]
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from CTExplainLib.cam import explain, normalise_maps
from CTExplainLib.networks import NETWORKS, build_network

logger = logging.getLogger("bench_cam")


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def forward_no_grad(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def forward_inference(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model(x)


def monai_loop(monai_cam, x: torch.Tensor, classes: Sequence[int]) -> List[torch.Tensor]:
    return [monai_cam.compute_map(x, class_idx=c).detach() for c in classes]


def agreement(model: torch.nn.Module, monai_cam, x: torch.Tensor, target: str, classes: List[int]) -> float:
    """Largest difference of max-normalised maps, ours vs MONAI's, over all classes."""
    ours, _ = normalise_maps(explain(model, x, "gradcam", target, classes).maps)
    theirs, _ = normalise_maps(torch.cat(monai_loop(monai_cam, x, classes), dim=1))
    return float((ours - theirs).abs().max())


def bench_network(name: str, shape: Sequence[int], n_classes: int, repeats: int, with_monai: bool) -> Dict[str, object]:
    from monai.visualize import GradCAM

    torch.manual_seed(0)
    spec = NETWORKS[name]
    model = build_network(name, {"spatial_dims": 3, "in_channels": 1, "out_channels": n_classes}).eval()
    x = torch.randn((1, 1) + tuple(shape))
    classes = list(range(n_classes))
    target = spec.target_layer
    assert target is not None
    # MONAI's GradCAM hooks its model for good (and turns off the target's inplace flag):
    # give it its own copy, so that its hooks do not run inside our timings.
    monai_cam = GradCAM(nn_module=copy.deepcopy(model), target_layers=target) if with_monai else None

    runs: Dict[str, Callable[[], object]] = {
        "forward_s": lambda: forward_no_grad(model, x),
        "inference_forward_s": lambda: forward_inference(model, x),
        "allclass_cam_s": lambda: explain(model, x, "cam", target, classes, spec.linear_layer),
        "allclass_gradcam_s": lambda: explain(model, x, "gradcam", target, classes),
        "allclass_gradcampp_s": lambda: explain(model, x, "gradcampp", target, classes),
    }
    if monai_cam is not None:
        runs["monai_gradcam_loop_s"] = lambda: monai_loop(monai_cam, x, classes)

    times: Dict[str, List[float]] = {key: [] for key in runs}
    for round_index in range(repeats + 1):  # round 0 is the warm-up
        for key, run in runs.items():
            elapsed = timed(run)
            if round_index > 0:
                times[key].append(elapsed)
            logger.info("%s round %d %s %.3f", name, round_index, key, elapsed)

    result: Dict[str, object] = {"network": name, "target_layer": target}
    medians = {key: statistics.median(values) for key, values in times.items()}
    result.update({key: round(value, 4) for key, value in medians.items()})
    forward = medians["forward_s"]
    for key, value in medians.items():
        if key != "forward_s":
            result[key[: -len("_s")] + "_over_forward"] = round(value / forward, 3)
    result["forward_over_inference_forward"] = round(forward / medians["inference_forward_s"], 3)
    result["allclass_gradcam_over_inference_forward"] = round(medians["allclass_gradcam_s"] / medians["inference_forward_s"], 3)
    if monai_cam is not None:
        result["monai_loop_over_allclass_gradcam"] = round(medians["monai_gradcam_loop_s"] / medians["allclass_gradcam_s"], 2)
        result["monai_vs_ours_max_abs_diff"] = f"{agreement(model, monai_cam, x, target, classes):.2e}"
    # Per round, explain and forward ran back to back: their ratio is robust to load drifts.
    result["forward_s_per_round"] = ",".join(f"{t:.3f}" for t in times["forward_s"])
    for key in ("allclass_gradcam_s", "allclass_gradcampp_s"):
        paired = [t / f for t, f in zip(times[key], times["forward_s"])]
        result[key[: -len("_s")] + "_over_forward_per_round"] = ",".join(f"{r:.3f}" for r in paired)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["DenseNet121", "ResNet18"], choices=sorted(n for n, s in NETWORKS.items() if s.kind == "classifier"))
    parser.add_argument("--shape", nargs=3, type=int, default=[128, 128, 64], metavar=("D", "H", "W"), help="input spatial shape (tensor axes 2, 3, 4)")
    parser.add_argument("--classes", type=int, default=18)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round; medians are reported")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-monai", action="store_true", help="skip MONAI's per-class GradCAM loop (the slow part)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} device=cpu dtype=float32")
    print(f"input_shape=1x1x{'x'.join(map(str, args.shape))} (B x C x D x H x W) classes={args.classes} repeats={args.repeats} warmup=1")
    for name in args.networks:
        result = bench_network(name, args.shape, args.classes, args.repeats, not args.no_monai)
        for key, value in result.items():
            print(f"{key}={value}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
