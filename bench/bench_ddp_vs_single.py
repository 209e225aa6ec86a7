"""One training recipe fitted twice from the same seed: in one process, and under
``torchrun --nproc_per_node 2`` (DistributedDataParallel, gloo on CPU). Prints the validation
metrics of both side by side as key=value lines, and the wall clock of each:

    single_<metric>, ddp2_<metric>   the hold-out validation metrics (summary.json) of each run
    single_s, ddp2_s                 wall clock of each run
    ddp2_over_single_s               their ratio (on a 2-core machine two processes share the cores)

    python bench/bench_ddp_vs_single.py [--config RECIPE] [--epochs N] [--out DIR]

The default recipe is the COVID infection U-Net (CTExplainTraining/recipes/covid_infection_2d.json,
manifest from ``python -m CTExplainTraining.datasets.covid_infection ../shared/data/covid-infection-2d
build/covid-infection``) on a 20% hold-out with early stopping off, so both runs see the same number
of epochs. With two processes each one takes half of every batch (the distributed sampler), so
the global batch and the number of optimizer steps are those of the single run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]


def run(command: List[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as handle:
        completed = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(command)} failed with status {completed.returncode}; see {log}")
    return time.perf_counter() - started


def validation_metrics(out: Path) -> Dict[str, float]:
    metrics = json.loads((out / "summary.json").read_text())["metrics"]["validation"]
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="CTExplainTraining/recipes/covid_infection_2d.json")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "runs" / "ddp-vs-single")
    args = parser.parse_args()
    common = ["--config", args.config, "--cv", "0", "--val-fraction", "0.2", "--epochs", str(args.epochs),
              "--patience", "100000", "--workers", "0"]
    args.out.mkdir(parents=True, exist_ok=True)
    single_s = run([sys.executable, "-m", "CTExplainTraining.cli", *common, "--out", str(args.out / "single")], args.out / "single.log")
    ddp_s = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "CTExplainTraining.cli", *common, "--out", str(args.out / "ddp2")], args.out / "ddp2.log")
    single, ddp = validation_metrics(args.out / "single"), validation_metrics(args.out / "ddp2")
    for key in sorted(set(single) & set(ddp)):
        print(f"single_{key}={single[key]:.4g}")
        print(f"ddp2_{key}={ddp[key]:.4g}")
    print(f"single_s={single_s:.1f}")
    print(f"ddp2_s={ddp_s:.1f}")
    print(f"ddp2_over_single_s={ddp_s / single_s:.3f}")


if __name__ == "__main__":
    main()
