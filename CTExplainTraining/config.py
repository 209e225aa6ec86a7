"""One typed description of a training run, read from a JSON recipe and/or the command line.

A recipe file holds the same keys as the command-line options (with ``_`` for ``-``); the
command line overrides the recipe. Everything that ends up in the model package (input
spec, network, classes, provenance) is derived from this one object, so the exported
package describes exactly the preprocessing the network was trained with.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from CTExplainLib.model_package import VOLUME_SCORES, ChannelSpec, Domain, InputSpec, parse_domain, parse_input_spec

from .manifest import TASKS, ManifestError

MONITORS = ("auto", "loss", "auc_macro", "accuracy", "balanced_accuracy", "map_macro", "dice_mean")


@dataclass
class TrainConfig:
    manifest: Path
    task: str
    out: Path
    name: str = "ctexplain-model"
    version: str = "1.0.0"
    # Labels: the label column(s) of a manifest CSV; class names (multiclass order, segment names).
    labels: Optional[List[str]] = None
    classes: Optional[List[str]] = None
    class_colors: Optional[List[Tuple[float, float, float]]] = None
    # Segmentation: segment name -> at most this many 3D connected parts kept (the core's
    # keep_largest_parts), in validation and in the exported package alike.
    max_parts: Dict[str, int] = field(default_factory=dict)
    # Segmentation: segment name -> another segment none of its parts may lie wholly below (the
    # core's keep_largest_parts), in validation and in the exported package alike.
    not_below: Dict[str, str] = field(default_factory=dict)
    # Network, by registry name, and its extra keyword arguments.
    network: str = "CompactCNN"
    network_kwargs: Dict[str, Any] = field(default_factory=dict)
    # Fine-tuning: start from this package's weights (same network, same classes) instead of at random.
    init_from: Optional[Path] = None
    # Input spec of the package (what the core's preprocessing does at inference too).
    spatial_dims: int = 3
    channels: List[Dict[str, Any]] = field(default_factory=lambda: [{"name": "ct", "level": 40.0, "width": 400.0}])
    intensity: str = "hu"
    spacing: Optional[List[float]] = None
    size: Optional[List[int]] = None
    orientation: str = "LPS"
    resize: str = "crop"  # "fit" / "fit_body" for images without a physical scale (screenshots; see the core's InputSpec)
    normalise: str = "none"  # "image": zero mean, unit variance per image; "histogram": equalised (see the core's InputSpec)
    body_only: bool = False  # blank out what lies outside the body (table, text) in each slice
    slice_context: int = 0  # 2D classifiers: neighbouring slices on each side fed as extra channels (2.5D)
    image_spacing: Optional[List[float]] = None  # for inputs without geometry (2D images)
    # A box around a point instead of the whole CT (the core's CropSpec, e.g. {"mode": "nodule",
    # "in_plane_mm": 24}); training cuts it around each example's mask (CTExplainLib.points.crop).
    crop: Optional[Dict[str, Any]] = None
    # Segmentation: training patches on the model grid, (i, j[, k]) voxels.
    patch_size: Optional[List[int]] = None
    patches_per_case: int = 4
    # Optimisation.
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    accumulate: int = 1
    patience: int = 10
    monitor: str = "auto"
    max_steps_per_epoch: Optional[int] = None
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    workers: int = 0
    cache: str = "memory"  # memory | disk | none
    cache_dir: Optional[Path] = None
    # Augmentation.
    augment: bool = True
    flip_axes: List[int] = field(default_factory=lambda: [0])  # model axes (0 = i) to flip at random
    rotate_degrees: float = 10.0  # in-plane (about the model's k axis)
    scale_range: float = 0.1
    shift_voxels: float = 0.0  # random shifts up to this many voxels along each axis
    intensity_jitter: float = 0.1
    # Chance of sharpening and of noise: a model trained on smooth (thick, upsampled) slices
    # meets sharp, noisy thin-slice CT at inference.
    texture_prob: float = 0.0
    # Splits and validation.
    val_fraction: float = 0.2
    cv: int = 0
    final_fit: bool = True  # after --cv, train on everything and export that model
    threshold: float = 0.5
    volume_score: str = "max"
    volume_score_k: int = 3
    # Nested cross-validation (nested.py): ``nested_cv`` outer patient folds, each scored by a
    # model all of whose choices were made on a patient split (``val_fraction``) of the other
    # folds' patients: the epoch (early stopping), one of ``candidates`` (recipe overrides; none:
    # the recipe itself), one of ``aggregations`` ("max", "noisy_or", "topk_mean:K"; none: the
    # recipe's volume_score) and, with ``choose_threshold``, the decision threshold.
    nested_cv: int = 0
    candidates: List[Dict[str, Any]] = field(default_factory=list)
    aggregations: List[str] = field(default_factory=list)
    choose_threshold: bool = False
    # Run outer fold N alone (1-based) and keep its result in OUT/outer-N/, for one process per
    # fold; a later run without it reads the folds already done and computes the rest.
    outer_fold: int = 0
    report_cases: int = 4
    # Provenance written into the package.
    training_data: str = ""
    data_licence: str = ""
    citation: str = ""
    licence: str = "Apache-2.0"
    notes: str = ""
    # What the model is trained on, as the package's "domain" (see the core's model_package.Domain
    # and trust/domain.py): modality, regions, intensity, spacing and field of view ranges.
    domain: Dict[str, Any] = field(default_factory=dict)

    def input_spec(self) -> InputSpec:
        """The package's input spec, validated by the core's own parser."""
        data = {
            "spatial_dims": self.spatial_dims,
            "channels": self.channels,
            "spacing": self.spacing,
            "size": self.size,
            "orientation": self.orientation,
            "intensity": self.intensity,
            "resize": self.resize,
            "normalise": self.normalise,
            "body_only": self.body_only,
            "crop": self.crop,
            "slice_context": self.slice_context,
        }
        return parse_input_spec(data, Path(str(self.manifest)))

    def package_domain(self) -> Optional[Domain]:
        """The package's domain, validated by the core's own parser (None when the recipe has none)."""
        return parse_domain(self.domain, self.input_spec(), Path(str(self.manifest))) if self.domain else None

    @property
    def channel_specs(self) -> List[ChannelSpec]:
        return self.input_spec().channels

    def resolved_monitor(self) -> str:
        if self.monitor != "auto":
            return self.monitor
        if self.task == "segmentation":
            return "dice_mean"
        return "auc_macro"

    def check(self) -> None:
        if self.task not in TASKS:
            raise ManifestError(self.manifest, f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.monitor not in MONITORS:
            raise ManifestError(self.manifest, f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if self.cache not in ("memory", "disk", "none"):
            raise ManifestError(self.manifest, f"cache must be memory, disk or none, got {self.cache!r}")
        if self.cv == 1 or self.cv < 0:
            raise ManifestError(self.manifest, f"--cv needs at least 2 folds, got {self.cv}")
        if self.volume_score not in VOLUME_SCORES:
            raise ManifestError(self.manifest, f"volume_score must be one of {', '.join(VOLUME_SCORES)}, got {self.volume_score!r}")
        if self.nested_cv:
            self._check_nested()
        if self.slice_context and self.task == "segmentation":
            raise ManifestError(self.manifest, "slice_context applies to 2D classifiers only")
        if (self.max_parts or self.not_below) and self.task != "segmentation":
            raise ManifestError(self.manifest, "max_parts and not_below apply to segmentation only")
        itself = sorted(name for name, other in self.not_below.items() if name == other)
        if itself:
            raise ManifestError(self.manifest, f"not_below: {', '.join(itself)} cannot lie below itself; name another segment")
        bad_parts = {name: n for name, n in self.max_parts.items() if isinstance(n, bool) or not isinstance(n, int) or n < 1}
        if bad_parts:
            raise ManifestError(self.manifest, f"max_parts must be whole numbers of at least 1, got {bad_parts}")
        if self.task == "segmentation" and self.patch_size is not None and len(self.patch_size) != self.spatial_dims:
            raise ManifestError(self.manifest, f"patch_size needs {self.spatial_dims} numbers, got {self.patch_size}")
        self.input_spec()
        self.package_domain()

    def _check_nested(self) -> None:
        if self.nested_cv < 2 or self.cv:
            raise ManifestError(self.manifest, f"nested_cv needs at least 2 outer folds and no --cv, got nested_cv={self.nested_cv}, cv={self.cv}")
        if self.task == "segmentation" and (self.aggregations or self.choose_threshold):
            raise ManifestError(self.manifest, "aggregations and choose_threshold apply to classifiers; a segmenter's inner split chooses its epoch (and candidate)")
        if not 0 <= self.outer_fold <= self.nested_cv:
            raise ManifestError(self.manifest, f"outer_fold must lie in 0..{self.nested_cv}, got {self.outer_fold}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ManifestError(self.manifest, f"nested_cv chooses on an inner split: val_fraction must lie in (0, 1), got {self.val_fraction}")
        known = {f.name for f in fields(TrainConfig)} - NOT_CANDIDATE_FIELDS
        for overrides in self.candidates:
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ManifestError(self.manifest, f"candidates may not set {', '.join(unknown)}")
        for rule in self.aggregations:
            parse_aggregation(rule, self.manifest)

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


PATH_FIELDS = {"manifest", "out", "cache_dir", "init_from"}
# What a candidate of nested_cv may not change: the data, the task and the protocol itself.
NOT_CANDIDATE_FIELDS = {"manifest", "task", "out", "labels", "classes", "nested_cv", "candidates", "aggregations",
                        "choose_threshold", "outer_fold", "cv", "val_fraction", "final_fit", "seed", "name", "version"}


def parse_aggregation(rule: str, source: Path) -> Tuple[str, int]:
    """ "max", "noisy_or" or "topk_mean:K" -> (volume_score, volume_score_k)."""
    name, _, k = str(rule).partition(":")
    if name in ("max", "noisy_or") and not k:
        return name, 3
    if name == "topk_mean" and k.isdigit() and int(k) >= 1:
        return name, int(k)
    raise ManifestError(source, f"aggregation must be max, noisy_or or topk_mean:K (K a whole number), got {rule!r}")


def read_recipe(path: Path) -> Dict[str, Any]:
    """Keys of a JSON recipe, checked against the config's fields; relative paths resolved."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(Path(path), f"is not a readable JSON recipe ({exc})") from exc
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known - {"comment"})
    if unknown:
        raise ManifestError(Path(path), f"unknown recipe keys: {', '.join(unknown)}")
    data.pop("comment", None)
    return data


def make_config(values: Dict[str, Any]) -> TrainConfig:
    missing = [name for name in ("manifest", "task", "out") if values.get(name) is None]
    if missing:
        raise ManifestError(Path(str(values.get("manifest", "."))), f"the run needs {', '.join('--' + m for m in missing)}")
    converted = {k: (Path(v) if k in PATH_FIELDS and v is not None else v) for k, v in values.items()}
    config = TrainConfig(**converted)
    config.check()
    return config
