"""Choosing, for an input, the installed classifier and segmenter whose training domain fits it.

Used when the user names no model (``ctexplain explain`` without ``--model``/``--segmenter``,
the Slicer module's "Automatic"). A package is a candidate for a role (classifier or
segmenter) when it states its domain, the input holds CT values (HU or display grey levels,
not a label map or raw values), the modality matches and the input's body region is known
and among the package's regions; models run at a point (a nodule) are never chosen for a
whole CT. Candidates are ranked: trained before untrained, fewer
domain warnings (display-trained on HU CT, spacing, field of view), then the catalog's own
packages (``PREFERRED``), then by name. No fitting classifier: the case is refused, saying
why each installed one does not fit; no fitting segmenter: the case runs without one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import CTExplainError
from ..model_package import Domain, LoadedModel, parse_metadata
from ..models_catalog import CHEST_CLASSIFIER, CHEST_SEGMENTER, HEAD_CLASSIFIER, PackageInfo
from ..package_files import METADATA_FILE
from ..volume import Volume
from .domain import INTENSITY_WORDS, DomainCheck, DomainError, InputProfile, check_domain, profile_input

# Chooses the models of a case from its loaded volume (pipeline.explain_case): the classifier,
# the segmenter (None: none), the input's profile and what result.json records as "model_choice".
Chooser = Callable[[Volume], Tuple[LoadedModel, Optional[LoadedModel], InputProfile, Dict[str, Any]]]

PREFERRED = (HEAD_CLASSIFIER, CHEST_CLASSIFIER, CHEST_SEGMENTER)
ROLES = ("classifier", "segmenter")


@dataclass
class Candidate:
    """An installed package and its training domain (from its metadata; no weights read)."""

    info: PackageInfo
    domain: Domain
    at_point: bool = False  # a model run at a point (input.crop), never on a whole CT by itself

    @property
    def role(self) -> str:
        return "segmenter" if self.info.task == "segmentation" else "classifier"


def read_candidates(packages: Iterable[PackageInfo]) -> List[Candidate]:
    """The packages whose metadata parses (others cannot run anyway), with their domains."""
    candidates = []
    for info in packages:
        try:
            data = json.loads((info.path / METADATA_FILE).read_text(encoding="utf-8"))
            metadata = parse_metadata(data, info.path)
        except (OSError, ValueError, KeyError, TypeError, CTExplainError):
            continue
        candidates.append(Candidate(info, metadata.training_domain, getattr(metadata.input, "crop", None) is not None))
    return candidates


def _rank(candidate: Candidate, check: DomainCheck) -> Tuple[Any, ...]:
    preference = PREFERRED.index(candidate.info.path.name) if candidate.info.path.name in PREFERRED else len(PREFERRED)
    return (candidate.info.untrained, len(check.warnings), preference, candidate.info.name, str(candidate.info.path))


def _why(candidate: Candidate, check: DomainCheck, profile: InputProfile) -> str:
    domain = candidate.domain
    text = (f"{check.role} {candidate.info.name}: made for {' and '.join(domain.regions)} CT "
            f"({INTENSITY_WORDS[domain.intensity]}); the input is {profile.region_words} CT ({profile.region_detail})")
    if candidate.info.untrained:
        text += "; UNTRAINED (no trained package fits)"
    if check.warnings:
        text += "; but " + "; ".join(check.warnings)
    return text


@dataclass
class ModelChoice:
    """The packages chosen for one input (None: none for that role) and why, for result.json."""

    profile: InputProfile
    classifier: Optional[Path] = None
    segmenter: Optional[Path] = None
    reasons: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "classifier": self.classifier.name if self.classifier is not None else None,
            "segmenter": self.segmenter.name if self.segmenter is not None else None,
            "why": list(self.reasons),
        }


def best_fit(profile: InputProfile, candidates: Sequence[Candidate], role: str) -> Tuple[Optional[Candidate], str]:
    """The best-ranked candidate for ``role`` that fits the input, and a sentence saying why
    it was chosen, or why none was (naming each installed package's problem)."""
    fitting: List[Tuple[Tuple[Any, ...], Candidate, DomainCheck]] = []
    rejected: Dict[str, List[str]] = {}  # reason -> the packages it rules out
    for candidate in candidates:
        if candidate.role != role:
            continue
        check = check_domain(profile, candidate.info.name, candidate.domain, role)
        if candidate.at_point:
            check.unfit.insert(0, "runs at a point (a nodule), not on a whole CT")
        if check.unfit:
            rejected.setdefault(check.unfit[0], []).append(candidate.info.name)
        else:
            fitting.append((_rank(candidate, check), candidate, check))
    if fitting:
        _, chosen, check = min(fitting, key=lambda item: item[0])
        return chosen, _why(chosen, check, profile)
    why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in rejected.items()) if rejected else "none installed"
    return None, f"no installed {role} fits this input ({why})"


def choose_models(profile: InputProfile, candidates: Sequence[Candidate], classifier: bool = True, segmenter: bool = True) -> ModelChoice:
    """Choose a classifier (when ``classifier``) and a segmenter (when ``segmenter``) for the
    input of ``profile``; raises :class:`DomainError` when a classifier is wanted and none fits."""
    choice = ModelChoice(profile)
    if classifier:
        found, why = best_fit(profile, candidates, "classifier")
        if found is None:
            raise DomainError(profile.source, f"{why}; give --model to run one anyway")
        choice.classifier = found.info.path
        choice.reasons.append(why)
    if segmenter:
        found, why = best_fit(profile, candidates, "segmenter")
        choice.segmenter = found.info.path if found is not None else None
        choice.reasons.append(why + ("" if found is not None else ": no segmentation"))
    return choice


def model_chooser(candidates: Sequence[Candidate], classifier: Optional[Path], segmenter: Optional[Path],
                  choose_segmenter: bool, load: Callable[[Path], LoadedModel]) -> Chooser:
    """A :data:`~CTExplainLib.pipeline.Chooser` for one case: ``classifier`` None chooses the
    classifier from the input, ``choose_segmenter`` the segmenter (else ``segmenter``, None for
    none); ``load`` loads a package folder (the caller's cache)."""

    def choose(volume: Volume) -> Tuple[LoadedModel, Optional[LoadedModel], InputProfile, Dict[str, Any]]:
        profile = profile_input(volume)
        choice = choose_models(profile, candidates, classifier is None, choose_segmenter)
        classifier_path = classifier if classifier is not None else choice.classifier
        segmenter_path = choice.segmenter if choose_segmenter else segmenter
        assert classifier_path is not None  # choose_models raises when no classifier fits
        return load(classifier_path), load(segmenter_path) if segmenter_path is not None else None, profile, choice.to_dict()

    return choose
