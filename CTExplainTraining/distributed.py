"""DistributedDataParallel under ``torchrun``: gloo on CPU, NCCL on CUDA.

``torchrun --nproc_per_node N [--nnodes M --node_rank R --rdzv_endpoint HOST:PORT] -m
CTExplainTraining.cli ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is a
single process and nothing here does anything.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.distributed as dist

# One description of a torchrun process for training and for the core's cohorts.
from CTExplainLib.cohort.ranks import Rank as Distributed

LOG = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun set up (or stay single-process)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return Distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    info = Distributed(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
    LOG.info("rank %d of %d (local rank %d), backend %s", info.rank, info.world_size, info.local_rank, backend)
    return info


def process_device(requested: torch.device, info: Distributed) -> torch.device:
    """One GPU per process: the local rank picks it."""
    if requested.type == "cuda" and info.enabled:
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return requested


def barrier(info: Distributed) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: Distributed, device: Optional[torch.device] = None) -> float:
    """The mean of a number over all ranks (e.g. each rank's training loss)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size


def broadcast_flag(flag: bool, info: Distributed, device: Optional[torch.device] = None) -> bool:
    """Rank 0's decision (e.g. early stopping), the same on every rank."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def shutdown(info: Distributed) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
