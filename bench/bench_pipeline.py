"""End-to-end ``ctexplain explain`` on a real chest CT series, per stage, with peak memory.

Runs the real DICOM series ../shared/data/lidc-idri-0001 (512×512×133) and a 512×512×300
volume resampled from it, each through the ``ctexplain explain`` command line in a fresh
child process (so each peak RSS is that case's own), and prints key=value lines per case:

    stage_<name>_s            seconds of each pipeline stage (result.json's timings_s)
    total_s                   wall clock of the case in the command, from loading the CT to
                              the published output folder (everything the case does)
    model_compute_s           the networks' own work: the classifier's forward and backward
                              pass with the CAMs (stage classify+explain) plus the segmenter's
                              forward passes (timed by hooks on the network, so MONAI's
                              sliding-window tiling and stitching are not counted)
    sliding_window_overhead_s the rest of the segment stage (tiling, stitching, softmax)
    total_over_model_compute  total_s / model_compute_s
    peak_rss_mb               ru_maxrss of the whole child process (imports, models, case)
    baseline_rss_mb           its ru_maxrss when the case starts (torch, MONAI, SimpleITK
                              and the models loaded: the fixed cost of any run)
    peak_rss_over_input, peak_rss_minus_baseline_over_input   the two over the input's size
                              as float32

    python bench/bench_pipeline.py [--model PKG] [--segmenter PKG] [--untrained-network DenseNet121]
                                   [--baseline-code DIR] [--repeat N]

``--model`` and ``--segmenter`` default to what ``ctexplain explain`` runs (the shipped chest
models). ``--untrained-network`` builds, for the run, an untrained 18-class 3D classifier of that
registry network at 128x128x64 (the size of the CAM benchmark) instead of ``--model``.
``--baseline-code DIR`` also runs every case with the CTExplainLib of another checkout (e.g.
``mkdir DIR && git archive HEAD | tar -x -C DIR``), alternating with this one, and prints the
ratios of the two measured side by side (the machines are noisy: compare only such ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
LIDC = REPO.parent / "shared" / "data" / "lidc-idri-0001"
CLASSIFIER_STAGE = "classify+explain"  # the classifier's forward + backward + CAMs, nothing else


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(input_path: Path, out: Path, model: str, segmenter: str, faithfulness: Optional[str] = None) -> None:
    """Run ``ctexplain explain`` on one case in this process and print its numbers as JSON."""
    started = time.perf_counter()
    from CTExplainLib import cli

    marks: Dict[str, Any] = {"segmenter_network_s": 0.0}
    real_load, real_explain = cli.load_package, cli.explain_case

    def load_package(path: Any) -> Any:
        loaded = real_load(path)
        if loaded.metadata.task == "segmentation":  # time the network's own forward passes
            entered: List[float] = []
            loaded.network.register_forward_pre_hook(lambda module, args: entered.append(time.perf_counter()))

            def leave(module: Any, args: Any, output: Any) -> None:
                marks["segmenter_network_s"] += time.perf_counter() - entered.pop()

            loaded.network.register_forward_hook(leave)
        return loaded

    def explain_case(*args: Any, **kwargs: Any) -> Any:
        marks["baseline_rss_mb"] = peak_rss_mb()  # torch, MONAI and the models loaded
        start = time.perf_counter()
        result = real_explain(*args, **kwargs)
        marks["case_wall_s"] = time.perf_counter() - start
        return result

    cli.load_package, cli.explain_case = load_package, explain_case
    extra = ["--faithfulness", faithfulness] if faithfulness else []
    status = cli.main(["explain", str(input_path), "--out", str(out), "--model", model, "--segmenter", segmenter, "--device", "cpu", "--no-progress", *extra])
    if status != 0:
        raise SystemExit(f"ctexplain explain failed with status {status}")
    folders = [p for p in out.iterdir() if (p / "result.json").is_file()]
    record = json.loads((folders[0] / "result.json").read_text())
    grid = record["input_grid"]["size"]
    print(
        json.dumps(
            {
                **marks,
                "timings": record["timings_s"],
                "peak_rss_mb": peak_rss_mb(),
                "process_wall_s": time.perf_counter() - started,
                "voxels": grid[0] * grid[1] * grid[2],
                "size": grid,
                "module": str(Path(cli.__file__).resolve().parent),
            }
        )
    )


def make_300_slice_volume(target: Path) -> Path:
    """The LIDC series resampled to 300 slices over the same extent (linear, SimpleITK)."""
    import SimpleITK as sitk

    from CTExplainLib.loading import load_volume
    from CTExplainLib.resample import resample_volume
    from CTExplainLib.volume import Grid

    volume = load_volume(LIDC)
    grid = volume.grid
    extent = grid.spacing[2] * (grid.size[2] - 1)
    new_grid = Grid((grid.size[0], grid.size[1], 300), (grid.spacing[0], grid.spacing[1], extent / 299), grid.origin, grid.direction)
    resampled = resample_volume(volume, new_grid, "linear", output_type=sitk.sitkInt16)
    sitk.WriteImage(resampled.to_sitk(), str(target), useCompression=False)
    return target


def untrained_classifier(path: Path, network: str) -> Path:
    from CTExplainLib.demo_models import LUNG, untrained_package
    from CTExplainLib.model_package import InputSpec

    spec = InputSpec(3, [LUNG], spacing=(2.8, 2.8, 5.2), size=(128, 128, 64), orientation="LPS")
    names = [f"finding {n + 1}" for n in range(18)]
    return untrained_package(path, f"untrained-{network}-18", "multilabel", network, names, spec)


def run_case(path: Path, out: Path, args: argparse.Namespace, code: Optional[Path]) -> Dict[str, Any]:
    env = dict(os.environ)
    if code is not None:  # another checkout's CTExplainLib, found before the installed one
        env["PYTHONPATH"] = os.pathsep.join([str(code / "CTExplain")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    completed = subprocess.run(
        [sys.executable, __file__, "--child", str(path), str(out), "--model", args.model, "--segmenter", args.segmenter,
         *(["--faithfulness", args.faithfulness] if getattr(args, "faithfulness", None) else [])],
        capture_output=True,
        text=True,
        env=env,
    )
    if completed.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{completed.stderr[-3000:]}")
    numbers = json.loads(completed.stdout.strip().splitlines()[-1])
    expected = (code or REPO) / "CTExplain" / "CTExplainLib"
    if Path(numbers["module"]) != expected.resolve():
        raise SystemExit(f"the child ran {numbers['module']}, not {expected}")
    return numbers


def figures(numbers: Dict[str, Any]) -> Dict[str, float]:
    timings = numbers["timings"]
    segment = timings.get("segment", 0.0)
    network = numbers["segmenter_network_s"]
    model = timings.get(CLASSIFIER_STAGE, 0.0) + network
    input_mb = numbers["voxels"] * 4 / 2**20
    result = {f"stage_{stage.replace('+', '_').replace(' ', '_')}_s": seconds for stage, seconds in timings.items() if stage != "total"}
    result.update(
        {
            "total_s": numbers["case_wall_s"],
            "stages_sum_s": sum(s for name, s in timings.items() if name != "total"),
            "process_wall_s": numbers["process_wall_s"],
            "classifier_compute_s": timings.get(CLASSIFIER_STAGE, 0.0),
            "segmenter_network_s": network,
            "sliding_window_overhead_s": max(0.0, segment - network),
            "model_compute_s": model,
            "total_over_model_compute": numbers["case_wall_s"] / model,
            "input_float32_mb": input_mb,
            "baseline_rss_mb": numbers["baseline_rss_mb"],
            "peak_rss_mb": numbers["peak_rss_mb"],
            "peak_rss_over_input": numbers["peak_rss_mb"] / input_mb,
            "peak_rss_minus_baseline_over_input": (numbers["peak_rss_mb"] - numbers["baseline_rss_mb"]) / input_mb,
        }
    )
    return result


def report(prefix: str, runs: List[Dict[str, float]]) -> None:
    """Median over the repeats of every figure (each line as key=value)."""
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        print(f"{prefix}{key}={statistics.median(values):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from CTExplainLib.models_catalog import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER  # light: no torch

    parser.add_argument("--model", default=DEFAULT_CLASSIFIER, help="classifier package (default: ctexplain explain's)")
    parser.add_argument("--segmenter", default=DEFAULT_SEGMENTER, help="segmenter package (default: ctexplain explain's)")
    parser.add_argument("--untrained-network", default=None, help="benchmark an untrained 18-class classifier of this registry network")
    parser.add_argument("--baseline-code", type=Path, default=None, help="also run each case with the CTExplainLib of this checkout, side by side")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (and code); medians are printed")
    parser.add_argument("--faithfulness", default=None, help="ctexplain explain's --faithfulness (default: its default)")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.model, args.segmenter, args.faithfulness)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        if args.untrained_network:
            args.model = str(untrained_classifier(Path(scratch) / "classifier", args.untrained_network))
        cases = {"lidc_512x512x133": LIDC, "lidc_512x512x300": make_300_slice_volume(Path(scratch) / "lidc300.nrrd")}
        print(f"model={args.model}")
        print(f"segmenter={args.segmenter}")
        if args.baseline_code:
            print(f"baseline_code={args.baseline_code}")
        for name, path in cases.items():
            runs: Dict[str, List[Dict[str, float]]] = {"": [], "baseline_": []}
            size: List[int] = []
            for repeat in range(args.repeat):
                # Alternate the two codes so that both see the same machine load.
                for prefix, code in [("", None)] + ([("baseline_", args.baseline_code)] if args.baseline_code else []):
                    numbers = run_case(path, Path(scratch) / f"{name}-{prefix}{repeat}", args, code)
                    size = numbers["size"]
                    runs[prefix].append(figures(numbers))
            print(f"case={name}")
            print(f"size={'x'.join(str(n) for n in size)}")
            print(f"runs={args.repeat}")
            report("", runs[""])
            if args.baseline_code:
                report("baseline_", runs["baseline_"])
                for key in ("total_s", "model_compute_s", "peak_rss_mb", "peak_rss_minus_baseline_over_input"):
                    ratios = [new[key] / old[key] for new, old in zip(runs[""], runs["baseline_"])]
                    print(f"{key}_over_baseline={statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
