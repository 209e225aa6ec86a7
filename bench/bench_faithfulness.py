"""Cost of the faithfulness curves (CTExplainLib/trust/faithfulness.py), against one forward pass.

Part 1, a 3D model: a MONAI registry network (random weights, float32; built as
bench/bench_cam.py builds it) with 18 classes on one input of 1x1x128x128x64; the maps of all
18 classes from the all-class Grad-CAM, then the faithfulness of every finding, per mode:

    forward_s                      model(x) under torch.no_grad() (the reference cost)
    allclass_gradcam_s             explain(..., "gradcam") for all 18 classes
    faithfulness_<mode>_s          deletion + insertion curves of all 18 maps and the random orders
    faithfulness_<mode>_inputs     network inputs the mode perturbs and scores
    faithfulness_<mode>_over_forward, faithfulness_<mode>_per_input_over_forward

Part 2 (``--lidc``): ``ctexplain explain`` end to end on ../shared/data/lidc-idri-0001 with the
default shipped models, through bench/bench_pipeline.py's child (a fresh process each run),
once per ``--faithfulness`` value, alternating, ``--repeat`` times; medians:

    lidc_<mode>_total_s, lidc_<mode>_stage_faithfulness_s, lidc_<mode>_stage_classify_explain_s,
    lidc_<mode>_faithfulness_over_classify_explain (within one run), lidc_<mode>_over_off

    .venv/bin/python bench/bench_faithfulness.py [--network DenseNet121] [--modes fast full] [--lidc] [--device cpu]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from CTExplainLib.cam import explain
from CTExplainLib.networks import NETWORKS, build_network
from CTExplainLib.trust.faithfulness import MODES, volume_faithfulness

HERE = Path(__file__).resolve().parent


def timed(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_3d(name: str, shape: Sequence[int], n_classes: int, modes: Sequence[str], repeats: int, device: torch.device) -> Dict[str, object]:
    torch.manual_seed(0)
    model = build_network(name, {"spatial_dims": 3, "in_channels": 1, "out_channels": n_classes}).eval().to(device)
    x = torch.randn((1, 1) + tuple(shape), device=device)
    classes = list(range(n_classes))
    target = NETWORKS[name].target_layer
    maps = explain(model, x, "gradcam", target, classes).maps[0].float()  # (classes, *feature)

    def forward(batch: torch.Tensor) -> torch.Tensor:  # as trust.faithfulness.network_forward does for multilabel
        with torch.inference_mode():
            return torch.sigmoid(model(batch.to(device)).float()).cpu()

    def no_grad_forward() -> None:
        with torch.no_grad():
            model(x)

    runs: Dict[str, Callable[[], object]] = {
        "forward_s": no_grad_forward,
        "allclass_gradcam_s": lambda: explain(model, x, "gradcam", target, classes),
    }
    for mode in modes:
        runs[f"faithfulness_{mode}_s"] = (lambda m: lambda: volume_faithfulness(forward, x[0], maps, classes, 3, m))(mode)
    times: Dict[str, List[float]] = {key: [] for key in runs}
    for round_index in range(repeats + 1):  # round 0 warms up (the one forward and Grad-CAM only)
        for key, run in runs.items():
            if round_index == 0 and key.startswith("faithfulness"):
                continue
            elapsed = timed(run, device)
            if round_index > 0:
                times[key].append(elapsed)
    medians = {key: statistics.median(values) for key, values in times.items()}
    result: Dict[str, object] = {"network": name, "classes": n_classes, "device": device.type}
    result.update({key: round(value, 4) for key, value in medians.items()})
    forward_s = medians["forward_s"]
    result["allclass_gradcam_over_forward"] = round(medians["allclass_gradcam_s"] / forward_s, 2)
    for mode in modes:
        result[f"faithfulness_{mode}_inputs"] = _inputs(mode, n_classes)
        result[f"faithfulness_{mode}_over_forward"] = round(medians[f"faithfulness_{mode}_s"] / forward_s, 2)
        result[f"faithfulness_{mode}_per_input_over_forward"] = round(medians[f"faithfulness_{mode}_s"] / forward_s / _inputs(mode, n_classes), 3)
    return result


def _inputs(mode: str, n_classes: int) -> int:
    """Network inputs one 3D measurement scores: every order's inner steps, both curves, and the two ends."""
    m = MODES[mode]
    return (n_classes + m.seeds) * 2 * (m.steps - 1) + 2


def bench_lidc(modes: Sequence[str], repeat: int) -> Dict[str, float]:
    spec = importlib.util.spec_from_file_location("bench_pipeline", HERE / "bench_pipeline.py")
    assert spec is not None and spec.loader is not None
    pipeline_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline_bench)
    from CTExplainLib.models_catalog import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER

    totals: Dict[str, List[float]] = {mode: [] for mode in modes}
    stages: Dict[str, List[float]] = {mode: [] for mode in modes}
    classify: Dict[str, List[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(repeat):
            for mode in modes:  # alternating, so that every mode sees the same machine load
                args = argparse.Namespace(model=DEFAULT_CLASSIFIER, segmenter=DEFAULT_SEGMENTER, faithfulness=mode)
                numbers = pipeline_bench.run_case(pipeline_bench.LIDC, Path(scratch) / f"{mode}-{index}", args, None)
                totals[mode].append(numbers["case_wall_s"])
                stages[mode].append(numbers["timings"].get("faithfulness", 0.0))
                classify[mode].append(numbers["timings"].get(pipeline_bench.CLASSIFIER_STAGE, 0.0))
    result: Dict[str, float] = {}
    for mode in modes:
        result[f"lidc_{mode}_total_s"] = round(statistics.median(totals[mode]), 2)
        result[f"lidc_{mode}_stage_faithfulness_s"] = round(statistics.median(stages[mode]), 2)
        result[f"lidc_{mode}_stage_classify_explain_s"] = round(statistics.median(classify[mode]), 2)
        if mode != "off":  # within one run, so robust to the machine's load drifting between runs
            per_run = [f / c for f, c in zip(stages[mode], classify[mode]) if c > 0]
            result[f"lidc_{mode}_faithfulness_over_classify_explain"] = round(statistics.median(per_run), 3) if per_run else float("nan")
        if "off" in modes and mode != "off":
            ratios = [t / o for t, o in zip(totals[mode], totals["off"])]
            result[f"lidc_{mode}_over_off"] = round(statistics.median(ratios), 3)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="DenseNet121", choices=sorted(n for n, s in NETWORKS.items() if s.kind == "classifier"))
    parser.add_argument("--shape", nargs=3, type=int, default=[128, 128, 64], metavar=("D", "H", "W"))
    parser.add_argument("--classes", type=int, default=18)
    parser.add_argument("--modes", nargs="+", default=["fast", "full"], choices=sorted(MODES))
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds after a warm-up round; medians")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lidc", action="store_true", help="also ctexplain explain on LIDC-IDRI-0001 with --faithfulness off and fast")
    parser.add_argument("--lidc-repeat", type=int, default=1)
    parser.add_argument("--no-3d", action="store_true", help="only the LIDC part")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} device={args.device}")
    if not args.no_3d:
        print(f"input_shape=1x1x{'x'.join(map(str, args.shape))} classes={args.classes} repeats={args.repeats} warmup=1")
        for key, value in bench_3d(args.network, args.shape, args.classes, args.modes, args.repeats, torch.device(args.device)).items():
            print(f"{key}={value}", flush=True)
    if args.lidc:
        for key, value in bench_lidc(["off", "fast"], args.lidc_repeat).items():
            print(f"{key}={value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
