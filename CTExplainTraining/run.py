"""One training run end to end: manifest → splits → fit (or K folds, then a final fit) →
exported package → HTML report. Rank 0 alone writes files."""
from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from CTExplainLib.devices import resolve_device
from CTExplainLib.model_package import load_package

from .config import TrainConfig
from .data import PreprocessedCases
from .distributed import Distributed, barrier, init_distributed, process_device, shutdown
from .engine import FitResult, StepCallback, Trainer
from .export import export_package
from .manifest import Example, Manifest, ManifestError, read_class_folders, read_manifest
from .metrics import summarise_folds
from .nested import run_nested
from .overlays import cam_overlays, map_sanity_check
from .report import RunReport, write_report
from .splits import holdout_split, patient_folds, test_indices
from .validate import Validation, segment_files, validate_classifier, validate_segmenter

LOG = logging.getLogger(__name__)
PACKAGE_DIR = "model"
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"


@dataclass
class RunSummary:
    package: Optional[Path]
    report: Optional[Path]
    metrics: Dict[str, Any]
    fold_metrics: List[Dict[str, Any]]


def load_manifest(config: TrainConfig) -> Manifest:
    if Path(config.manifest).is_dir():
        manifest = read_class_folders(config.manifest, task=config.task, classes=config.classes)
    else:
        manifest = read_manifest(config.manifest, config.task, label_columns=config.labels, classes=config.classes)
    segments = manifest.classes[1:]
    for setting, names in (("max_parts", set(config.max_parts)), ("not_below", set(config.not_below) | set(config.not_below.values()))):
        unknown = sorted(names - set(segments))
        if unknown:
            raise ManifestError(config.manifest, f"{setting} names {', '.join(unknown)}, not among its segments ({', '.join(segments)})")
    return manifest


def _subset(manifest: Manifest, indices: Sequence[int]) -> List[Example]:
    return [manifest.examples[i] for i in indices]


def _data_summary(manifest: Manifest, train: Sequence[Example], val: Sequence[Example], test: Sequence[Example]) -> Dict[str, Any]:
    def count(examples: Sequence[Example]) -> Dict[str, Any]:
        info: Dict[str, Any] = {"examples": len(examples), "patients": len({e.patient for e in examples})}
        if examples and examples[0].target is not None:
            totals = np.stack([e.target for e in examples]).sum(axis=0)
            info["positives"] = {name: int(n) for name, n in zip(manifest.classes, totals)}
        return info

    return {"manifest": str(manifest.source), "train": count(train), "validation": count(val), "test": count(test)}


def _validate(trainer: Trainer, network: torch.nn.Module, examples: Sequence[Example]) -> Validation:
    config = trainer.config
    run = validate_segmenter if config.task == "segmentation" else validate_classifier
    return run(network.to(trainer.device), config, trainer.manifest.classes, trainer.cases, examples, trainer.loss_fn, trainer.device)


def _fit(config: TrainConfig, manifest: Manifest, cases: PreprocessedCases, train: Sequence[Example], val: Sequence[Example],
         run_dir: Path, info: Distributed, device: torch.device, resume: bool, on_step: Optional[StepCallback],
         epochs: Optional[int] = None) -> "tuple[Trainer, FitResult]":
    trainer = Trainer(config, manifest, train, val, cases, run_dir, info, device, on_step=on_step, epochs=epochs)
    return trainer, trainer.fit(resume=resume)


def _pooled(validations: Sequence[Validation]) -> "tuple[Optional[np.ndarray], Optional[np.ndarray]]":
    """Out-of-fold probabilities of every case, for ROC/PR curves over all folds."""
    if not validations or validations[0].probabilities is None:
        return None, None
    return np.concatenate([v.probabilities for v in validations]), np.concatenate([v.targets for v in validations])


def run_training(config: TrainConfig, resume: bool = False, on_step: Optional[StepCallback] = None) -> RunSummary:
    device = resolve_device(config.device)
    info = init_distributed(device)
    device = process_device(device, info)
    try:
        return _run(config, info, device, resume, on_step)
    finally:
        shutdown(info)


def _run(config: TrainConfig, info: Distributed, device: torch.device, resume: bool, on_step: Optional[StepCallback]) -> RunSummary:
    out = Path(config.out)
    manifest = load_manifest(config)  # every manifest problem stops the run before training
    test = _subset(manifest, test_indices(manifest))
    cases = PreprocessedCases(config, manifest.examples)
    if config.spatial_dims == 2:
        cases.check_slices(manifest.examples, manifest.source)
    fold_metrics: List[Dict[str, Any]] = []
    validations: List[Validation] = []
    history: List[Dict[str, float]] = []
    if config.nested_cv:
        nested = run_nested(config, manifest, cases, out, info, device, on_step)
        if config.outer_fold:  # one fold of several processes: its result is in out/outer-N/
            return RunSummary(None, None, nested.metrics, nested.fold_metrics)
        final_config = nested.final_config or config
        train_examples = [e for e in manifest.examples if e.split != "test"]
        data = _data_summary(manifest, train_examples, [], test) if nested.network is not None else {}
        summary = _finish(final_config, manifest, nested.network, info, device, nested.history, nested.metrics,
                          nested.fold_metrics, nested.validations, data)
        barrier(info)
        return summary
    if config.cv:
        best_epochs = []
        for fold in patient_folds(manifest, config.cv, config.seed):
            LOG.info("fold %d of %d: %d train, %d validation examples", fold.index + 1, config.cv, len(fold.train), len(fold.val))
            _, result = _fit(config, manifest, cases, _subset(manifest, fold.train), _subset(manifest, fold.val),
                             out / f"fold-{fold.index + 1}", info, device, resume, on_step)
            if result.validation is not None:
                fold_metrics.append(result.validation.metrics)
                validations.append(result.validation)
            best_epochs.append(result.best_epoch)
            history = result.history
        if not config.final_fit:
            return _finish(config, manifest, None, info, device, history, summarise_folds(fold_metrics), fold_metrics, validations, {})
        epochs = max(1, int(round(statistics.median(best_epochs))))
        train_examples = [e for e in manifest.examples if e.split != "test"]
        LOG.info("final fit on all %d training examples for %d epochs (median best epoch of the folds)", len(train_examples), epochs)
        trainer, result = _fit(config, manifest, cases, train_examples, [], out / "final", info, device, resume, on_step, epochs)
        metrics: Dict[str, Any] = {"cross_validation": summarise_folds(fold_metrics), "folds": config.cv}
        data = _data_summary(manifest, train_examples, [], test)
        history = result.history
    else:
        fold = holdout_split(manifest, config.val_fraction, config.seed)
        train_examples, val_examples = _subset(manifest, fold.train), _subset(manifest, fold.val)
        trainer, result = _fit(config, manifest, cases, train_examples, val_examples, out / "fit", info, device, resume, on_step)
        metrics = {"validation": result.validation.metrics if result.validation else {}, "best_epoch": result.best_epoch}
        if result.validation is not None:
            validations.append(result.validation)
        data = _data_summary(manifest, train_examples, val_examples, test)
        history = result.history
    if info.is_main and test:
        metrics["test"] = _validate(trainer, result.network, test).metrics
    summary = _finish(config, manifest, result.network, info, device, history, metrics, fold_metrics, validations, data, test)
    barrier(info)
    return summary


def _finish(config: TrainConfig, manifest: Manifest, network: Optional[torch.nn.Module], info: Distributed, device: torch.device,
            history: List[Dict[str, float]], metrics: Dict[str, Any], fold_metrics: List[Dict[str, Any]],
            validations: Sequence[Validation], data: Dict[str, Any], test: Sequence[Example] = ()) -> RunSummary:
    if not info.is_main:
        return RunSummary(None, None, metrics, fold_metrics)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    package = export_package(out / PACKAGE_DIR, config, manifest, network, metrics, data) if network is not None else None
    if package is not None and test and config.task == "segmentation":
        # The held-out cases once more, as the core segments them, on each image's own grid.
        metrics["test_input_grid"] = segment_files(package, config, manifest.classes, test, device)
        package = export_package(out / PACKAGE_DIR, config, manifest, network, metrics, data)
    probabilities, targets = _pooled(validations)
    overlays = []
    sanity = None
    if package is not None and config.task != "segmentation" and validations and config.report_cases:
        shown = validations[-1]
        chosen = list(range(min(config.report_cases, len(shown.images))))
        model = load_package(package, device)
        overlays = cam_overlays(model, [shown.images[i] for i in chosen], [shown.targets[i] for i in chosen], config.image_spacing, device)
        sanity = map_sanity_check(model, [shown.images[i] for i in chosen], config.image_spacing, device)
    report_metrics = metrics.get("validation") or metrics.get("cross_validation") or metrics.get("nested_cross_validation") or metrics
    report = RunReport(
        title=f"{config.name} {config.version}",
        task=config.task,
        class_names=list(manifest.classes),
        history=history,
        metrics=report_metrics,
        probabilities=probabilities,
        targets=targets,
        overlays=overlays,
        config=config.to_json(),
        fold_metrics=fold_metrics or None,
        sanity_check=sanity,
    )
    report_path = write_report(report, out / REPORT_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps({"metrics": metrics, "fold_metrics": fold_metrics, "data": data, "sanity_check": sanity}, indent=2, default=float))
    LOG.info("package %s, report %s", package, report_path)
    return RunSummary(package, report_path, metrics, fold_metrics)
