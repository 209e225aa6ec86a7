"""How fast ``ctexplain`` answers when nothing is computed: ``--help``, ``explain --help`` and
``models``, each in a fresh process, side by side with ``python -c "import torch"``.

Each command runs ``--repeat`` times, alternating with the torch import (the machines are
noisy: compare the ratios), and the medians are printed as key=value lines:

    <command>_wall_s             wall clock of the whole process (interpreter start included)
    <command>_peak_rss_mb        its peak resident memory (ru_maxrss of that child alone)
    import_torch_wall_s, import_torch_peak_rss_mb   the same for ``python -c "import torch"``
    <command>_over_torch_wall, <command>_over_torch_rss   the command over the torch import

    python bench/bench_cli.py [--repeat N] [--code DIR]

``--code DIR`` measures the ``CTExplainLib`` of another checkout (e.g. main's, from
``mkdir DIR && git -C /path/to/main archive HEAD | tar -x -C DIR``) instead of this one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
COMMANDS: Dict[str, List[str]] = {
    "help": ["-m", "CTExplainLib.cli", "--help"],
    "explain_help": ["-m", "CTExplainLib.cli", "explain", "--help"],
    "models": ["-m", "CTExplainLib.cli", "models"],
    "import_torch": ["-c", "import torch"],
}

# Runs one command as the only child of a fresh interpreter, so that RUSAGE_CHILDREN's
# ru_maxrss is that command's own peak (it is the maximum over every child waited for).
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - start
print(json.dumps({"status": status, "wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measure(arguments: List[str], code: Path) -> Tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code / "CTExplain"), str(code)])}
    completed = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, *arguments], env=env, capture_output=True, text=True, check=True)
    record = json.loads(completed.stdout)
    if record["status"] != 0:
        raise SystemExit(f"{' '.join(arguments)} exited with {record['status']}")
    return record["wall_s"], record["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (default: 5)")
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose CTExplainLib is measured (default: this one)")
    args = parser.parse_args()
    runs: Dict[str, List[Tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, arguments in COMMANDS.items():
            runs[name].append(measure(arguments, args.code.resolve()))
    print(f"code={args.code.resolve()} repeat={args.repeat} python={sys.executable}")
    medians = {name: (statistics.median(w for w, _ in r), statistics.median(m for _, m in r)) for name, r in runs.items()}
    for name, (wall, rss) in medians.items():
        print(f"{name}_wall_s={wall:.2f}")
        print(f"{name}_peak_rss_mb={rss:.0f}")
    torch_wall, torch_rss = medians["import_torch"]
    for name, (wall, rss) in medians.items():
        if name != "import_torch":
            print(f"{name}_over_torch_wall={wall / torch_wall:.2f}")
            print(f"{name}_over_torch_rss={rss / torch_rss:.2f}")


if __name__ == "__main__":
    main()
