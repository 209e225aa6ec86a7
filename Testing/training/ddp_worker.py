"""Run by ``torchrun`` in test_distributed.py: trains and records, after every optimizer step,
a checksum of this rank's parameters (all ranks' checksums gathered) and the loss.

    torchrun --standalone --nproc_per_node 2 ddp_worker.py RECIPE.json RECORD_PREFIX
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist

from CTExplainTraining.config import make_config, read_recipe
from CTExplainTraining.run import run_training


def main() -> int:
    recipe, prefix = Path(sys.argv[1]), sys.argv[2]
    records: List[Dict[str, Any]] = []

    def on_step(step: int, network: torch.nn.Module, loss: float) -> None:
        flat = torch.cat([p.detach().reshape(-1).double() for p in network.parameters()])
        mine = torch.stack([flat.sum(), (flat * flat).sum(), flat[::97].sum()])
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())] if dist.is_initialized() else [mine]
        if dist.is_initialized():
            dist.all_gather(gathered, mine)
        records.append({"step": step, "loss": loss, "checksums": [g.tolist() for g in gathered]})

    run_training(make_config(read_recipe(recipe)), on_step=on_step)
    Path(f"{prefix}-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
