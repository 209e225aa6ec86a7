"""The training loop: AdamW, warm-up + cosine schedule, AMP on CUDA, gradient accumulation,
early stopping on a validation metric, checkpoints with resume, DDP under torchrun.

Only rank 0 validates, logs and writes files; its early-stopping decision is broadcast so
every rank stops at the same step.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from monai.losses import DiceCELoss
from monai.optimizers import WarmupCosineSchedule
from monai.utils import set_determinism
from torch.nn.parallel import DistributedDataParallel
from monai.data import DataLoader
from torch.utils.data import DistributedSampler, RandomSampler
from tqdm import tqdm

from CTExplainLib.devices import autocast
from CTExplainLib.model_package import load_package
from CTExplainLib.networks import build_network

from .config import TrainConfig
from .data import IMAGE, LABEL, PreprocessedCases, TrainingItems, class_weights, items_for
from .distributed import Distributed, all_reduce_mean, broadcast_flag
from .manifest import Example, Manifest, ManifestError
from .validate import Validation, validate_classifier, validate_segmenter

LOG = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
LOG_FILE = "log.csv"
TENSORBOARD_DIR = "tensorboard"


def tensorboard_writer(folder: Path) -> Optional[Any]:
    """A TensorBoard SummaryWriter into ``folder``, or None when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: the CSV log is always written
        return None
    return SummaryWriter(log_dir=str(folder))

StepCallback = Callable[[int, torch.nn.Module, float], None]


@dataclass
class FitResult:
    network: torch.nn.Module  # best weights, unwrapped, on the CPU
    history: List[Dict[str, float]]
    best_epoch: int
    best_metric: float
    validation: Optional[Validation]
    stopped_early: bool = False


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    best_state: Optional[Dict[str, torch.Tensor]] = None
    stale_epochs: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)


def output_channels(manifest: Manifest) -> int:
    return len(manifest.classes)


def build_model(config: TrainConfig, manifest: Manifest) -> torch.nn.Module:
    kwargs = {"spatial_dims": config.spatial_dims, "in_channels": config.input_spec().network_channels, "out_channels": output_channels(manifest)}
    kwargs.update(config.network_kwargs)
    network = build_network(config.network, kwargs)
    if config.init_from is not None:
        start = load_package(config.init_from)
        if start.metadata.class_names != list(manifest.classes) or start.metadata.network != config.network:
            raise ManifestError(config.init_from, f"init_from: its network {start.metadata.network} and classes "
                                f"{', '.join(start.metadata.class_names)} are not this run's {config.network} and {', '.join(manifest.classes)}")
        network.load_state_dict(start.network.state_dict())
    return network


def make_loss(config: TrainConfig, manifest: Manifest, train: Sequence[Example]) -> torch.nn.Module:
    if config.task == "segmentation":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    weights = class_weights(manifest, train)
    if config.task == "multiclass":
        return torch.nn.CrossEntropyLoss(weight=weights)
    return torch.nn.BCEWithLogitsLoss(pos_weight=weights)


def _loss_target(labels: torch.Tensor, task: str) -> torch.Tensor:
    return labels.argmax(dim=1) if task == "multiclass" else labels


def monitor_value(validation: Validation, monitor: str) -> float:
    """The early-stopping score, higher is better (the loss is negated)."""
    if monitor == "loss":
        return -validation.loss
    value = validation.metrics.get(monitor)
    return -math.inf if value is None else float(value)


def _atomic_save(data: Dict[str, Any], path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(data, temporary)
    os.replace(temporary, path)


def _scalars(validation: Validation) -> Dict[str, float]:
    return {f"val_{k}": float(v) for k, v in validation.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trainer:
    """Fits one network on one split; rank 0 keeps the log, the checkpoint and the best weights."""

    def __init__(
        self, config: TrainConfig, manifest: Manifest, train: Sequence[Example], val: Sequence[Example],
        cases: PreprocessedCases, run_dir: Path, info: Distributed, device: torch.device,
        on_step: Optional[StepCallback] = None, epochs: Optional[int] = None,
    ) -> None:
        self.config, self.manifest, self.val, self.cases = config, manifest, list(val), cases
        self.run_dir, self.info, self.device, self.on_step = Path(run_dir), info, device, on_step
        self.epochs = epochs if epochs is not None else config.epochs
        set_determinism(seed=config.seed)  # same initial weights on every rank
        self.network = build_model(config, manifest).to(device)
        self.model: torch.nn.Module = self.network
        if info.enabled:
            self.model = DistributedDataParallel(self.network, device_ids=[device.index] if device.type == "cuda" else None)
        self.loss_fn = make_loss(config, manifest, train).to(device)
        dataset = TrainingItems(config, cases, items_for(train, config, cases), train=True)
        if dataset.augment is not None:
            dataset.augment.set_random_state(seed=config.seed + 1000 * info.rank)
        if dataset.patches is not None:
            dataset.patches.set_random_state(seed=config.seed + 1000 * info.rank + 1)
        generator = torch.Generator().manual_seed(config.seed)
        if info.enabled:
            sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed, drop_last=True)
        else:
            sampler = RandomSampler(dataset, generator=generator)
        per_rank = max(1, config.batch_size // info.world_size)  # the global batch stays the same
        self.sampler = sampler
        # MONAI's DataLoader reseeds the random transforms in each worker (torch's does not).
        self.loader = DataLoader(
            dataset, batch_size=per_rank, sampler=sampler, num_workers=config.workers, drop_last=len(dataset) > per_rank,
            persistent_workers=config.workers > 0,
        )
        self.steps_per_epoch = self._steps_per_epoch()
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total = max(1, self.epochs * self.steps_per_epoch)
        warmup = min(config.warmup_epochs * self.steps_per_epoch, total - 1)
        self.scheduler = WarmupCosineSchedule(self.optimizer, warmup_steps=warmup, t_total=total)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and config.amp)
        self.state = _State()
        self.tensorboard: Optional[Any] = None  # made by fit() on rank 0

    def _steps_per_epoch(self) -> int:
        batches = len(self.loader)
        optimizer_steps = max(1, batches // self.config.accumulate)
        if self.config.max_steps_per_epoch:
            optimizer_steps = min(optimizer_steps, self.config.max_steps_per_epoch)
        return optimizer_steps

    # --- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        if not self.info.is_main:
            return
        state = self.state
        _atomic_save(
            {
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": state.epoch,
                "step": state.step,
                "best_metric": state.best_metric,
                "best_epoch": state.best_epoch,
                "best_state": state.best_state,
                "stale_epochs": state.stale_epochs,
                "history": state.history,
                "torch_rng": torch.get_rng_state(),
            },
            self.run_dir / CHECKPOINT,
        )

    def resume(self) -> bool:
        """Continue from ``checkpoint.pt`` when there is one (weights-only loading)."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        data = torch.load(path, map_location="cpu", weights_only=True)
        self.network.load_state_dict(data["network"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self.scaler.load_state_dict(data["scaler"])
        torch.set_rng_state(data["torch_rng"])
        self.state = _State(
            epoch=data["epoch"], step=data["step"], best_metric=data["best_metric"], best_epoch=data["best_epoch"],
            best_state=data["best_state"], stale_epochs=data["stale_epochs"], history=list(data["history"]),
        )
        LOG.info("resumed %s at epoch %d", path, self.state.epoch)
        return True

    # --- the loop ------------------------------------------------------------------------

    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        config, model = self.config, self.model
        model.train()
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        data_seconds = step_seconds = loss_sum = 0.0
        batches = optimizer_steps = 0
        limit = self.steps_per_epoch * config.accumulate
        progress = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, disable=not self.info.is_main)
        iterator = iter(self.loader)
        self.optimizer.zero_grad(set_to_none=True)
        while batches < limit:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            loaded = time.perf_counter()
            inputs, labels = batch[IMAGE].to(self.device), batch[LABEL].to(self.device)
            last_micro = (batches + 1) % config.accumulate == 0
            sync = model.no_sync() if (self.info.enabled and not last_micro) else contextlib.nullcontext()
            with sync:
                with autocast(self.device):
                    loss = self.loss_fn(model(inputs).float(), _loss_target(labels, config.task))
                self.scaler.scale(loss / config.accumulate).backward()
            batches += 1
            loss_sum += float(loss.detach())
            if last_micro:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                optimizer_steps += 1
                self.state.step += 1
                progress.update(1)
                if self.on_step is not None:
                    self.on_step(self.state.step, self.network, float(loss.detach()))
            finished = time.perf_counter()
            data_seconds += loaded - started
            step_seconds += finished - started
        progress.close()
        return {
            "train_loss": all_reduce_mean(loss_sum / max(batches, 1), self.info, self._collective_device()),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "data_seconds": data_seconds,
            "step_seconds": step_seconds,
            "data_fraction": data_seconds / step_seconds if step_seconds > 0 else 0.0,
            "optimizer_steps": float(optimizer_steps),
        }

    def _collective_device(self) -> Optional[torch.device]:
        return self.device if self.device.type == "cuda" else None

    def validate(self) -> Optional[Validation]:
        if not self.val:
            return None
        if self.config.task == "segmentation":
            return validate_segmenter(self.network, self.config, self.manifest.classes, self.cases, self.val, self.loss_fn, self.device)
        return validate_classifier(self.network, self.config, self.manifest.classes, self.cases, self.val, self.loss_fn, self.device)

    def _log(self, row: Dict[str, float]) -> None:
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.tensorboard.add_scalar(key, value, int(row["epoch"]))
            self.tensorboard.flush()
        path = self.run_dir / LOG_FILE
        fresh = not path.exists() or row["epoch"] == 1
        columns = list(row)
        with open(path, "w" if fresh else "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            if fresh:
                writer.writeheader()
            writer.writerow(row)
        LOG.info("epoch %d: %s", row["epoch"], ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))

    def fit(self, resume: bool = False) -> FitResult:
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.tensorboard = tensorboard_writer(self.run_dir / TENSORBOARD_DIR)
        if resume:
            self.resume()
        monitor = self.config.resolved_monitor()
        validation: Optional[Validation] = None
        stopped = False
        while self.state.epoch < self.epochs and not stopped:
            epoch = self.state.epoch
            row: Dict[str, float] = {"epoch": float(epoch + 1), **self._train_epoch(epoch)}
            if self.info.is_main:
                validation = self.validate()
                if validation is not None:
                    row.update(val_loss=validation.loss, **_scalars(validation))
                    score = monitor_value(validation, monitor)
                    if score > self.state.best_metric:
                        self.state.best_metric, self.state.best_epoch, self.state.stale_epochs = score, epoch + 1, 0
                        self.state.best_state = copy.deepcopy({k: v.cpu() for k, v in self.network.state_dict().items()})
                    else:
                        self.state.stale_epochs += 1
                    stopped = self.state.stale_epochs >= self.config.patience
                self.state.history.append(row)
                self._log(row)
            stopped = broadcast_flag(stopped, self.info, self._collective_device())
            self.state.epoch += 1
            self.save_checkpoint()
        if self.tensorboard is not None:
            self.tensorboard.close()
        return self._result(stopped)

    def _result(self, stopped: bool) -> FitResult:
        if self.state.best_state is not None:
            self.network.load_state_dict(self.state.best_state)
        else:  # no validation set: the last weights
            self.state.best_epoch = self.state.epoch
        validation = self.validate() if self.info.is_main and self.val else None
        return FitResult(self.network.cpu(), self.state.history, self.state.best_epoch, self.state.best_metric, validation, stopped)
