"""``torchrun --nproc_per_node 2`` on the CPU (gloo): both ranks hold identical weights after
every optimizer step, the loss goes down, and only rank 0 writes the package."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training_fixtures import tiny_recipe, write_recipe

WORKER = Path(__file__).with_name("ddp_worker.py")


def fixed_batch_manifest(prepared: Path, path: Path) -> Path:
    """8 positive and 8 negative training slices, plus validation slices of two other patients."""
    with open(prepared / "slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    positive = [r for r in rows if r["patient"] in ("049", "050") and r["any_hemorrhage"] == "1" and r["skull_fracture"] == "1"][:8]
    negative = [r for r in rows if r["patient"] in ("054", "056")][10:18]
    val = [r for r in rows if r["patient"] in ("051", "060")]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "split"])
        writer.writeheader()
        writer.writerows([{**r, "image": str(prepared / r["image"]), "split": "train"} for r in positive + negative])
        writer.writerows([{**r, "image": str(prepared / r["image"]), "split": "val"} for r in val])
    return path


@pytest.mark.slow
def test_two_processes_stay_in_step_and_learn(ct_ich_small: Path, tmp_path: Path) -> None:
    # No augmentation and the same 16 slices in every step: the loss must fall within 24 steps.
    manifest = fixed_batch_manifest(ct_ich_small, tmp_path / "fixed.csv")
    recipe = tiny_recipe(manifest, tmp_path / "run", augment=False, epochs=24, batch_size=16, lr=1e-2, warmup_epochs=0, report_cases=0, patience=100)
    path = write_recipe(tmp_path / "recipe.json", recipe)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(path), str(tmp_path / "record")]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"record-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 24
    for step0, step1 in zip(*ranks):
        assert step0["step"] == step1["step"]
        first, second = np.array(step0["checksums"][0]), np.array(step0["checksums"][1])
        np.testing.assert_allclose(first, second, rtol=1e-12, atol=1e-12)  # identical weights on both ranks
    losses = [np.mean([r[i]["loss"] for r in ranks]) for i in range(24)]
    assert np.mean(losses[-6:]) < 0.85 * np.mean(losses[:6])
    assert (tmp_path / "run" / "model" / "ctexplain-model.json").exists()
    assert not list(tmp_path.glob("run/**/*.tmp"))
