"""GPU check: ``ctexplain explain`` on the shipped samples on CUDA against the CPU, AMP against full
precision, the out-of-memory fallback, and one training epoch on each device.

Runs on a machine with a CUDA GPU (never in the test suite) and prints ``key=value`` lines:

    <case>_prob_max_abs_diff_<run>     largest |p_cuda - p_cpu| over the case's findings
    <case>_heat_max_abs_diff_<run>     largest voxel difference of any heat map (maps are stored in
                                       steps of 1/1024, so 0.000977 is one step)
    <case>_labels_agree_<run>          share of voxels whose label equals the CPU run's
    <case>_seconds_<run>               the case's wall clock (result.json timings_s.total)
    oom_fallback_warned / oom_*        a run with the CUDA allocator capped to a few MB: the case must
                                       fall back to the CPU, say so, and equal the CPU outputs
    train_epoch_s_<device>             second epoch of the COVID U-Net recipe (the first warms up)

``<run>`` is ``cuda_amp`` (the default: float16 autocast), ``cuda_fp32`` (autocast switched off)
and ``oom``. Usage, from the repository root:

    python bench/device_check.py --out OUT [--covid-data DIR]

``--covid-data`` is ``shared/data/covid-infection-2d`` (carried along, since ``../shared`` is not
on the GPU machine); without it the training epoch is skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from CTExplainLib import classify, cli, segment

REPO = Path(__file__).resolve().parents[1]


def explain(out: Path, device: str) -> None:
    """``explain --sample``; a failed case is printed and the check goes on (its numbers are missing)."""
    code = cli.main(["explain", "--sample", "--out", str(out), "--device", device, "--no-progress"])
    print(f"explain_exit_{out.name}={code}", flush=True)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """The core's networks without float16 autocast (the modules import ``autocast`` by name)."""
    saved = classify.autocast, segment.autocast
    classify.autocast = segment.autocast = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        classify.autocast, segment.autocast = saved


@contextlib.contextmanager
def tiny_gpu_memory() -> Iterator[None]:
    """Cap the CUDA caching allocator to about 4 MB so the networks' first allocations fail."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(4e6 / total)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def probabilities(result: dict) -> Dict[str, float]:
    """Each finding's probability; in point mode, each point's (``<id>:<finding>``)."""
    if "points" in result:
        return {f"{p['id']}:{f['name']}": f["probability"] for p in result["points"] for f in p.get("findings", [])}
    return {f["name"]: f["probability"] for f in result["findings"]}


def compare(reference: Path, other: Path, run: str) -> Dict[str, float]:
    numbers: Dict[str, float] = {}
    for case in sorted(p for p in reference.iterdir() if (p / "result.json").is_file()):
        if not (other / case.name / "result.json").is_file():
            numbers[f"{case.name}_failed_{run}"] = 1
            continue
        ref = json.loads((case / "result.json").read_text())
        got = json.loads((other / case.name / "result.json").read_text())
        p_ref, p_got = probabilities(ref), probabilities(got)
        numbers[f"{case.name}_prob_max_abs_diff_{run}"] = max(abs(p_ref[k] - p_got[k]) for k in p_ref)
        heat = [abs(read(h) - read(other / case.name / h.relative_to(case))).max() for h in sorted(case.glob("**/heatmap_*.nrrd"))]
        numbers[f"{case.name}_heat_max_abs_diff_{run}"] = float(max(heat)) if heat else float("nan")
        for labels in sorted(case.glob("**/labels.nrrd")) + sorted(case.glob("**/nodule.nrrd")):
            agree = float((read(labels) == read(other / case.name / labels.relative_to(case))).mean())
            numbers[f"{case.name}_{labels.stem}_agree_{run}"] = min(agree, numbers.get(f"{case.name}_{labels.stem}_agree_{run}", 1.0))
        numbers[f"{case.name}_seconds_{run}"] = got["timings_s"]["total"]
        numbers[f"{case.name}_warnings_{run}"] = len(got.get("warnings", []))
    return numbers


def train_epoch_seconds(covid: Path, work: Path, device: str) -> float:
    """The second epoch's step time of the COVID U-Net recipe on ``device`` (no CV, no final fit)."""
    run = work / f"train-{device}"
    command = [
        sys.executable, "-m", "CTExplainTraining.cli", "--config", str(REPO / "CTExplainTraining/recipes/covid_infection_2d.json"),
        "--manifest", str(work / "covid/manifest.csv"), "--out", str(run), "--cv", "0", "--epochs", "2",
        "--patience", "5", "--device", device, "--workers", "4",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(run / "fit" / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return float(rows[-1]["step_seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--covid-data", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here")
    print(f"gpu={torch.cuda.get_device_name(0)} torch={torch.__version__}")
    out = args.out
    numbers: Dict[str, float] = {}
    explain(out / "cpu", "cpu")
    explain(out / "cuda_warmup", "cuda")  # CUDA context, cuDNN autotuning
    explain(out / "cuda_amp", "cuda")
    numbers.update(compare(out / "cpu", out / "cuda_amp", "cuda_amp"))
    with full_precision():
        explain(out / "cuda_fp32", "cuda")
    numbers.update(compare(out / "cpu", out / "cuda_fp32", "cuda_fp32"))
    for case in (out / "cpu").iterdir():
        if (case / "result.json").is_file():
            numbers[f"{case.name}_seconds_cpu"] = json.loads((case / "result.json").read_text())["timings_s"]["total"]
    with tiny_gpu_memory():
        explain(out / "oom", "cuda")
    numbers.update(compare(out / "cpu", out / "oom", "oom"))
    warned = [
        w for case in (out / "oom").iterdir() if (case / "result.json").is_file()
        for w in json.loads((case / "result.json").read_text())["warnings"] if "out of memory" in w
    ]
    numbers["oom_fallback_warnings"] = len(warned)
    if args.covid_data is not None:
        work = out / "train"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "CTExplainTraining.datasets.covid_infection", str(args.covid_data), str(work / "covid")], check=True, stdout=subprocess.DEVNULL)
        numbers["covid_prep_s"] = time.perf_counter() - started
        for device in ("cuda", "cpu"):
            numbers[f"train_epoch_s_{device}"] = train_epoch_seconds(args.covid_data, work, device)
        numbers["train_epoch_cpu_over_cuda"] = numbers["train_epoch_s_cpu"] / numbers["train_epoch_s_cuda"]
    for key, value in numbers.items():
        print(f"{key}={value:.6g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
