"""End-to-end ``ctexplain explain`` on a real chest CT series, per stage, with peak memory.

Runs the real DICOM series ../shared/data/lidc-idri-0001 (512×512×133) and a 512×512×300
volume resampled from it, each in its own child process (so each peak RSS is its own), and
prints key=value lines:

    case=... stage_<name>_s=... total_s=... model_compute_s=... total_over_model_compute=...
    peak_rss_mb=... baseline_rss_mb=... input_float32_mb=... peak_rss_over_input=...
    (peak_rss_minus_baseline_over_input=... leaves out the fixed cost of importing torch)

    python bench/bench_pipeline.py [--model PKG] [--segmenter PKG] [--untrained-network DenseNet121]

``--untrained-network`` builds, for the run, an untrained 18-class 3D classifier of that
registry network at 128x128x64 (the size of the CAM benchmark) instead of ``--model``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIDC = REPO.parent / "shared" / "data" / "lidc-idri-0001"
MODEL_STAGES = ("classify+explain", "segment")  # networks (with their own preprocessing); not mapping or writing


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(input_path: Path, out: Path, model: str, segmenter: str) -> None:
    """Run one case in this process and print its numbers as JSON."""
    from CTExplainLib.model_package import load_package
    from CTExplainLib.models_catalog import resolve_package
    from CTExplainLib.pipeline import ExplainOptions, explain_case

    classifier = load_package(resolve_package(model))
    seg = None if segmenter == "none" else load_package(resolve_package(segmenter))
    baseline = peak_rss_mb()  # torch, MONAI and the models loaded: the fixed cost of any run
    result = explain_case(input_path, out, classifier, seg, ExplainOptions(device="cpu"))
    if not result.ok:
        raise SystemExit(result.error)
    grid = json.loads((out / "result.json").read_text())["input_grid"]["size"]
    voxels = grid[0] * grid[1] * grid[2]
    print(json.dumps({"timings": result.timings, "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(), "voxels": voxels, "size": grid}))


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


def report(name: str, numbers: dict) -> None:
    timings = numbers["timings"]
    total = sum(timings.values())
    model = sum(timings.get(s, 0.0) for s in MODEL_STAGES)
    input_mb = numbers["voxels"] * 4 / 2**20
    print(f"case={name}")
    print(f"size={'x'.join(map(str, numbers['size']))}")
    for stage, seconds in timings.items():
        print(f"stage_{stage.replace('+', '_').replace(' ', '_')}_s={seconds:.3f}")
    print(f"total_s={total:.3f}")
    print(f"model_compute_s={model:.3f}")
    print(f"total_over_model_compute={total / model:.3f}")
    print(f"input_float32_mb={input_mb:.1f}")
    print(f"baseline_rss_mb={numbers['baseline_rss_mb']:.1f}")
    print(f"peak_rss_mb={numbers['peak_rss_mb']:.1f}")
    print(f"peak_rss_over_input={numbers['peak_rss_mb'] / input_mb:.3f}")
    print(f"peak_rss_minus_baseline_over_input={(numbers['peak_rss_mb'] - numbers['baseline_rss_mb']) / input_mb:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo-chest-classifier-untrained")
    parser.add_argument("--segmenter", default="demo-chest-segmenter-untrained")
    parser.add_argument("--untrained-network", default=None, help="benchmark an untrained 18-class classifier of this registry network")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.model, args.segmenter)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        if args.untrained_network:
            args.model = str(untrained_classifier(Path(scratch) / "classifier", args.untrained_network))
        cases = {"lidc_512x512x133": LIDC, "lidc_512x512x300": make_300_slice_volume(Path(scratch) / "lidc300.nrrd")}
        print(f"model={args.model}")
        print(f"segmenter={args.segmenter}")
        for name, path in cases.items():
            out = Path(scratch) / name
            completed = subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(out), "--model", args.model, "--segmenter", args.segmenter],
                capture_output=True,
                text=True,
                check=True,
            )
            report(name, json.loads(completed.stdout.strip().splitlines()[-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
