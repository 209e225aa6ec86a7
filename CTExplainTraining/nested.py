"""Nested cross-validation: numbers that nothing which chose the model has seen.

The non-test patients are split into ``nested_cv`` outer folds. For each outer fold, its
patients are set aside untouched; the other folds' patients are split once more by patient
(``val_fraction``) into an inner training and an inner validation part. On the inner part
alone, each candidate recipe (``candidates``: overrides of the recipe) is trained with early
stopping (the epoch), each of the ``aggregations`` of slice scores into a volume score is
tried on its inner validation volumes, and, with ``choose_threshold``, the decision threshold
is set there (a segmenter's inner split chooses its epoch and candidate only, by Dice or the
recipe's monitor). The best combination on the inner validation patients (the recipe's monitor,
ties to the earlier) then scores the outer fold once. Its mean ± sd over the outer folds is an
estimate for patients the whole procedure never saw; each outer fold's model is trained on
the inner training part only, so the estimate is, if anything, low for a model fitted on all
patients.

The shipped model takes what the outer folds' inner splits chose most often (candidate, then
aggregation; ties to the earlier in the recipe's lists) with the median of their thresholds and
epochs, and is fitted on all non-test patients for that many epochs. No outer test fold took
part in any of these choices, and choosing once more on a further split of all patients would
cost as many fits again.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import TrainConfig, parse_aggregation
from .data import PreprocessedCases
from .distributed import Distributed
from .engine import StepCallback, Trainer, monitor_value
from .manifest import Example, Manifest, ManifestError
from .metrics import classification_metrics, summarise_folds
from .splits import Fold, patient_folds, patient_split_within
from .validate import Validation, validate_classifier, validate_segmenter

LOG = logging.getLogger(__name__)


def protocol_text(config: TrainConfig) -> str:
    """The protocol in words, for the package metadata and the summary."""
    chosen = ["the epoch (early stopping)"]
    if len(config.candidates) > 1:
        chosen.append(f"one of {len(config.candidates)} recipe candidates")
    if len(config.aggregations) > 1:
        chosen.append(f"the slice-to-volume aggregation ({', '.join(config.aggregations)})")
    if config.choose_threshold:
        chosen.append("the threshold (best mean balanced accuracy)")
    return (
        f"nested {config.nested_cv}-fold cross-validation by patient: each outer fold is scored once by a model for which "
        f"{', '.join(chosen)} were chosen on a patient split ({config.val_fraction:g} of the patients as validation) of the "
        "other folds' patients alone, by the inner validation " + config.resolved_monitor()
    )


def aggregation_name(rule: str, k: int) -> str:
    return f"{rule}:{k}" if rule == "topk_mean" else rule


def aggregation_rules(config: TrainConfig) -> List[str]:
    """The aggregations compared, by name ("max", "noisy_or", "topk_mean:K"); none given: the recipe's."""
    if not config.aggregations:
        return [aggregation_name(config.volume_score, config.volume_score_k)]
    return [aggregation_name(*parse_aggregation(rule, config.manifest)) for rule in config.aggregations]


@dataclass
class NestedFold:
    """One outer fold: indices into ``manifest.examples``; ``inner`` splits ``outer_train``."""

    index: int
    outer_train: List[int]
    outer_test: List[int]
    inner: Fold


def _patients(manifest: Manifest, indices: Sequence[int]) -> set:
    return {manifest.examples[i].patient for i in indices}


def check_nested(manifest: Manifest, fold: NestedFold) -> None:
    """Raise :class:`ManifestError` when a patient of the outer test fold is among the patients
    that choose or train the model (inner training or inner validation), or when the inner
    split holds examples from outside the outer training set or shares a patient."""
    test = _patients(manifest, fold.outer_test)
    choosing = _patients(manifest, fold.inner.train) | _patients(manifest, fold.inner.val)
    leaked = sorted(test & (choosing | _patients(manifest, fold.outer_train)))
    if leaked:
        raise ManifestError(manifest.source, f"outer fold {fold.index + 1}: patient(s) {', '.join(leaked)} are in its test fold and among those choosing the model")
    outside = set(fold.inner.train + fold.inner.val) - set(fold.outer_train)
    if outside:
        raise ManifestError(manifest.source, f"outer fold {fold.index + 1}: the inner split holds {len(outside)} example(s) outside the outer training set")
    both = sorted(_patients(manifest, fold.inner.train) & _patients(manifest, fold.inner.val))
    if both:
        raise ManifestError(manifest.source, f"outer fold {fold.index + 1}: patient(s) {', '.join(both)} on both sides of the inner split")


def nested_folds(manifest: Manifest, k: int, val_fraction: float, seed: int = 0) -> List[NestedFold]:
    """``k`` outer patient folds, each with an inner patient split of its training patients."""
    folds = []
    for outer in patient_folds(manifest, k, seed):
        fold = NestedFold(outer.index, outer.train, outer.val, patient_split_within(manifest, outer.train, val_fraction, seed))
        check_nested(manifest, fold)
        folds.append(fold)
    return folds


def validate(network: torch.nn.Module, config: TrainConfig, manifest: Manifest, cases: PreprocessedCases, examples: Sequence[Example],
             loss_fn: torch.nn.Module, device: torch.device) -> Validation:
    """The run's own validation of a classifier or a segmenter on ``examples``."""
    check = validate_segmenter if config.task == "segmentation" else validate_classifier
    return check(network.to(device), config, manifest.classes, cases, examples, loss_fn, device)


def choose_threshold(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The threshold with the best balanced accuracy, averaged over the labels, on (N, C) scores:
    tried at each score seen (a case is positive at probability >= threshold); ties to the lower."""
    truth = targets > 0.5
    best, best_score = 0.5, -np.inf
    for threshold in np.unique(probabilities):
        predicted = probabilities >= threshold
        scores = []
        for c in range(truth.shape[1]):
            positives, negatives = truth[:, c], ~truth[:, c]
            if positives.any() and negatives.any():
                scores.append((predicted[positives, c].mean() + (~predicted[negatives, c]).mean()) / 2.0)
        score = float(np.mean(scores)) if scores else -np.inf
        if score > best_score:
            best, best_score = float(threshold), score
    return best


class CasesByInput:
    """Preprocessed cases per distinct preprocessing: candidates that differ only in training
    settings or in ``slice_context`` (a view of the same slices) share one cache."""

    def __init__(self, config: TrainConfig, examples: Sequence[Example], cases: PreprocessedCases) -> None:
        self.examples = list(examples)
        self.cache: Dict[str, PreprocessedCases] = {self._key(config): cases}

    @staticmethod
    def _key(config: TrainConfig) -> str:
        spec = dataclasses.replace(config.input_spec(), slice_context=0)
        return json.dumps({"spec": dataclasses.asdict(spec), "image_spacing": config.image_spacing}, sort_keys=True, default=str)

    def get(self, config: TrainConfig) -> PreprocessedCases:
        key = self._key(config)
        if key not in self.cache:
            self.cache[key] = PreprocessedCases(config, self.examples)
        return self.cache[key]


@dataclass
class Selection:
    """What the inner split chose, with the network trained on the inner training part."""

    config: TrainConfig  # the recipe with the chosen overrides, aggregation and threshold
    network: torch.nn.Module
    loss_fn: torch.nn.Module
    epochs: int
    candidate: int
    table: List[Dict[str, Any]] = field(default_factory=list)  # every combination's inner score
    config_overrides: Dict[str, Any] = field(default_factory=dict)  # the chosen candidate's

    def summary(self) -> Dict[str, Any]:
        return {
            "candidate": self.candidate,
            "overrides": self.config_overrides,
            "aggregation": self.aggregation,
            "threshold": self.config.threshold,
            "epochs": self.epochs,
            "inner_validation": self.table,
        }

    @property
    def aggregation(self) -> str:
        return aggregation_name(self.config.volume_score, self.config.volume_score_k)


def select(
    config: TrainConfig, manifest: Manifest, cases: CasesByInput, inner: Fold, run_dir: Path,
    info: Distributed, device: torch.device, on_step: Optional[StepCallback] = None,
) -> Selection:
    """Train each candidate on ``inner.train``; score each with each aggregation on ``inner.val``."""
    train = [manifest.examples[i] for i in inner.train]
    val = [manifest.examples[i] for i in inner.val]
    monitor = config.resolved_monitor()
    rules = [parse_aggregation(rule, manifest.source) for rule in aggregation_rules(config)]
    best: Optional[Tuple[float, Selection, Validation]] = None
    table: List[Dict[str, Any]] = []
    for number, overrides in enumerate(config.candidates or [{}]):
        candidate = dataclasses.replace(config, **overrides)
        candidate_cases = cases.get(candidate)
        trainer = Trainer(candidate, manifest, train, val, candidate_cases, run_dir / f"candidate-{number + 1}", info, device, on_step=on_step)
        result = trainer.fit()
        for rule, k in rules:
            scored = dataclasses.replace(candidate, volume_score=rule, volume_score_k=k)
            validation = validate(result.network, scored, manifest, candidate_cases, val, trainer.loss_fn, device)
            score = monitor_value(validation, monitor)
            per_class = validation.metrics.get("per_class", {})
            table.append({
                "candidate": number, "aggregation": aggregation_name(rule, k), "best_epoch": result.best_epoch,
                monitor: score, "auc": {name: values.get("auc") for name, values in per_class.items()},
            })
            LOG.info("candidate %d %s, aggregation %s: inner %s %.4f (epoch %d)", number + 1, overrides, table[-1]["aggregation"], monitor, score, result.best_epoch)
            if best is None or score > best[0]:
                selection = Selection(scored, result.network, trainer.loss_fn, max(1, result.best_epoch), number, config_overrides=dict(overrides))
                best = (score, selection, validation)
    assert best is not None
    _, selection, validation = best
    if config.choose_threshold and validation.probabilities is not None:
        selection.config = dataclasses.replace(selection.config, threshold=choose_threshold(validation.probabilities, validation.targets))
    selection.table = table
    return selection


FOLD_RESULT = "outer-fold.json"


def _write_fold(path: Path, selection: Dict[str, Any], validation: Validation) -> None:
    """One outer fold's choice and scores, so that folds can run in separate processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = {} if validation.probabilities is None else {"probabilities": validation.probabilities.tolist(), "targets": validation.targets.tolist()}
    data = {"selection": selection, "loss": validation.loss, "metrics": validation.metrics, "images": [str(p) for p in validation.images], **scores}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, default=float))
    temporary.replace(path)


def _read_fold(path: Path) -> "Tuple[Dict[str, Any], Validation]":
    data = json.loads(path.read_text())
    scored = "probabilities" in data  # classifiers; a segmenter's fold keeps its metrics only
    validation = Validation(data["loss"], data["metrics"], [Path(p) for p in data["images"]],
                            np.asarray(data["probabilities"], dtype=np.float32) if scored else None,
                            np.asarray(data["targets"], dtype=np.float32) if scored else None)
    LOG.info("%s: outer fold read from an earlier run", path)
    return data["selection"], validation


@dataclass
class NestedResult:
    fold_metrics: List[Dict[str, Any]]
    validations: List[Validation]
    metrics: Dict[str, Any]
    final_config: Optional[TrainConfig] = None
    network: Optional[torch.nn.Module] = None
    history: List[Dict[str, float]] = field(default_factory=list)


def run_nested(
    config: TrainConfig, manifest: Manifest, cases: PreprocessedCases, out: Path, info: Distributed,
    device: torch.device, on_step: Optional[StepCallback] = None,
) -> NestedResult:
    """The outer folds, then (``final_fit``) the shipped model chosen and fitted the same way."""
    pool = [e for e in manifest.examples if e.split != "test"]
    by_input = CasesByInput(config, manifest.examples, cases)
    fold_metrics: List[Dict[str, Any]] = []
    validations: List[Validation] = []
    selections: List[Dict[str, Any]] = []
    for fold in nested_folds(manifest, config.nested_cv, config.val_fraction, config.seed):
        if config.outer_fold and fold.index + 1 != config.outer_fold:
            continue
        done = out / f"outer-{fold.index + 1}" / FOLD_RESULT
        if done.is_file():  # computed by an earlier run (e.g. one process per outer fold)
            selection_summary, validation = _read_fold(done)
        else:
            LOG.info("outer fold %d of %d: choosing on %d + %d examples, scoring %d", fold.index + 1, config.nested_cv,
                     len(fold.inner.train), len(fold.inner.val), len(fold.outer_test))
            selection = select(config, manifest, by_input, fold.inner, out / f"outer-{fold.index + 1}", info, device, on_step)
            test = [manifest.examples[i] for i in fold.outer_test]
            validation = validate(selection.network, selection.config, manifest, by_input.get(selection.config), test, selection.loss_fn, device)
            selection_summary = {"outer_fold": fold.index + 1, "test_patients": sorted(_patients(manifest, fold.outer_test)), **selection.summary()}
            if info.is_main:
                _write_fold(done, selection_summary, validation)
        fold_metrics.append(validation.metrics)
        validations.append(validation)
        selections.append(selection_summary)
    if config.outer_fold:
        return NestedResult(fold_metrics, validations, {"outer_fold": config.outer_fold, "selections": selections})
    metrics: Dict[str, Any] = {
        "protocol": protocol_text(config),
        "nested_cross_validation": summarise_folds(fold_metrics),
        "outer_folds": config.nested_cv,
        "selections": selections,
    }
    if config.task != "segmentation":
        # Every patient's score from the outer fold that held it out, in one table (each fold
        # at its own threshold, so only the threshold-free numbers, AUC and ECE, pool cleanly).
        probabilities = np.concatenate([v.probabilities for v in validations])
        targets = np.concatenate([v.targets for v in validations])
        metrics["pooled_out_of_fold"] = classification_metrics(config.task, probabilities, targets, list(manifest.classes), config.threshold)
    result = NestedResult(fold_metrics, validations, metrics)
    if not config.final_fit:
        return result
    final = vote(config, selections)
    LOG.info("final fit on all %d examples: %s", len(pool), final)
    final_config = dataclasses.replace(config, **final["overrides"], volume_score=final["volume_score"], volume_score_k=final["volume_score_k"],
                                       threshold=final["threshold"])
    trainer = Trainer(final_config, manifest, pool, [], by_input.get(final_config), out / "final", info, device, on_step=on_step, epochs=final["epochs"])
    fitted = trainer.fit()
    metrics["selected"] = final
    final_cases = by_input.get(final_config)
    if config.task != "segmentation":  # volume probabilities, for the core to reproduce
        metrics["training_case_scores"] = case_scores(fitted.network, final_config, manifest, final_cases, pool, trainer.loss_fn, device)
    test = [e for e in manifest.examples if e.split == "test"]
    if test:
        metrics["test"] = validate(fitted.network, final_config, manifest, final_cases, test, trainer.loss_fn, device).metrics
    result.final_config, result.network, result.history = final_config, fitted.network.cpu(), fitted.history
    return result


def vote(config: TrainConfig, selections: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The shipped model's settings from the outer folds' choices: the candidate, then (among the
    folds that chose it) the aggregation chosen most often, ties to the earlier in the recipe's
    lists; the median threshold and number of epochs of those folds."""
    candidates = [s["candidate"] for s in selections]
    candidate = max(sorted(set(candidates)), key=lambda c: (candidates.count(c), -c))
    chose = [s for s in selections if s["candidate"] == candidate]
    order = aggregation_rules(config)
    aggregations = [s["aggregation"] for s in chose]
    aggregation = max(sorted(set(aggregations), key=order.index), key=lambda a: (aggregations.count(a), -order.index(a)))
    rule, k = parse_aggregation(aggregation, config.manifest)
    return {
        "candidate": candidate,
        "overrides": dict((config.candidates or [{}])[candidate]),
        "aggregation": aggregation,
        "volume_score": rule,
        "volume_score_k": k,
        "threshold": float(np.median([s["threshold"] for s in chose])),
        "epochs": max(1, int(round(float(np.median([s["epochs"] for s in chose]))))),
        "outer_folds_choosing_it": [s["outer_fold"] for s in chose],
    }


def case_scores(network: torch.nn.Module, config: TrainConfig, manifest: Manifest, cases: PreprocessedCases,
                examples: Sequence[Example], loss_fn: torch.nn.Module, device: torch.device) -> Dict[str, List[float]]:
    """Volume probabilities of ``examples``' images by file name, as validation computes them:
    recorded in the package so that a test can check the core gives the same."""
    validation = validate_classifier(network.to(device), config, manifest.classes, cases, examples, loss_fn, device)
    return {Path(image).name: [float(p) for p in row] for image, row in zip(validation.images, validation.probabilities)}
