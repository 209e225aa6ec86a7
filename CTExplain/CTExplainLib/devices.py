"""Choosing the compute device, mixed precision, and falling back to the CPU on CUDA OOM."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, ContextManager, List, TypeVar

import torch

from .commandline.choices import DEVICE_CHOICES

LOG = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; asking for a missing device is an error."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    mps_available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    if name == "mps" and not mps_available:
        raise ValueError("device 'mps' was asked for but Apple MPS is not available")
    return torch.device(name)


def autocast(device: torch.device) -> ContextManager:
    """float16 autocast on CUDA (AMP); full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def with_cpu_fallback(run: Callable[[torch.device], T], device: torch.device, warnings: List[str]) -> T:
    """Run ``run(device)``; on CUDA out-of-memory, warn and run it again on the CPU."""
    try:
        return run(device)
    except torch.cuda.OutOfMemoryError:
        if device.type != "cuda":
            raise
        message = "CUDA ran out of memory; this case was computed on the CPU instead"
        LOG.warning(message)
        warnings.append(message)
        torch.cuda.empty_cache()
        return run(torch.device("cpu"))
