"""Which share of the cases this process runs, and the one collective step at the end.

``torchrun --nproc_per_node N [--nnodes M ...] -m CTExplainLib.cli explain ...`` sets RANK,
WORLD_SIZE and LOCAL_RANK. Every rank discovers the same cases in the same order and names
their output folders the same way; rank r runs cases r, r + N, r + 2N, ... into the shared
``--out``. A case that fails is reported by the rank that ran it and does not stop that rank,
so every rank reaches the end. There, one gloo ``all_gather_object`` (no GPU needed, and no
shared file system: it also works across machines) hands every rank the results of all,
so that rank 0 can write the cohort summary and every rank exits with the cohort's status.
Without RANK/WORLD_SIZE (or with WORLD_SIZE 1) nothing here touches ``torch.distributed``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Mapping, Optional, Sequence, TypeVar

from ..errors import CTExplainError

LOG = logging.getLogger(__name__)
T = TypeVar("T")

# The gather waits for the slowest rank's whole share of cases, so its timeout must outlast a
# long cohort. It does not make a crash hang: torchrun stops every rank when one exits with an
# error, and gloo fails a collective at once when a peer's connection closes.
GATHER_TIMEOUT = timedelta(days=2)


@dataclass(frozen=True)
class Rank:
    """A process of a torchrun group (also the training package's ``Distributed``)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def prefix(self) -> str:
        """What this rank's lines start with (nothing when it is alone)."""
        return f"rank {self.rank}: " if self.enabled else ""


def rank_from_environment(environ: Optional[Mapping[str, str]] = None) -> Rank:
    """This process's rank as torchrun describes it; a single process without RANK/WORLD_SIZE."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return Rank()
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise CTExplainError(f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers: {exc}") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise CTExplainError(f"RANK {rank} and WORLD_SIZE {world} do not describe a rank of a group")
    return Rank(rank=rank, local_rank=local, world_size=world)


def share(items: Sequence[T], rank: Rank) -> List[T]:
    """This rank's items: every world_size-th, starting at its rank (neighbours in the list,
    often of similar size, go to different ranks)."""
    return list(items[rank.rank :: rank.world_size])


class CohortGroup:
    """The process group of a torchrun cohort (gloo), joined on entry and left on exit; for a
    single process a no-op. On CUDA machines each rank uses the GPU of its local rank."""

    def __init__(self, rank: Rank, device: str) -> None:
        self.rank = rank
        self.device = device

    def __enter__(self) -> "CohortGroup":
        if not self.rank.enabled:
            return self
        import torch
        import torch.distributed as dist

        if self.device in ("auto", "cuda") and torch.cuda.is_available():
            torch.cuda.set_device(self.rank.local_rank % torch.cuda.device_count())
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend="gloo", timeout=GATHER_TIMEOUT)
            except (ValueError, RuntimeError) as exc:  # e.g. RANK and WORLD_SIZE set by hand, without torchrun's MASTER_ADDR
                raise CTExplainError(f"rank {self.rank.rank} of {self.rank.world_size} cannot join its torchrun group: {exc}") from exc
        LOG.info("rank %d of %d (local rank %d) joined the cohort", self.rank.rank, self.rank.world_size, self.rank.local_rank)
        return self

    def gather(self, mine: List[Any]) -> List[Any]:
        """Every rank's list, concatenated in rank order, on every rank (waits for all of them)."""
        if not self.rank.enabled:
            return list(mine)
        import torch.distributed as dist

        lists: List[Any] = [None] * self.rank.world_size
        dist.all_gather_object(lists, mine)
        return [item for part in lists for item in part]

    def barrier(self) -> None:
        if self.rank.enabled:
            import torch.distributed as dist

            dist.barrier()

    def __exit__(self, *exc_info: Any) -> None:
        if self.rank.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
