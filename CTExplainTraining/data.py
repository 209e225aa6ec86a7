"""Training data: the core's loaders and preprocessing, cached by MONAI, then augmented.

Every case goes through ``CTExplainLib.loading.load_volume`` and
``CTExplainLib.preprocess.preprocess`` with the package's own input spec, the very code that
runs at inference, so there is no second preprocessing definition to drift apart. The result
(channels on the model grid) is cached by MONAI's CacheDataset (memory) or PersistentDataset
(disk), so epochs after the first decode nothing. Random augmentation (MONAI dictionary
transforms) runs on top of the cached tensors.

Tensors are indexed like the core's: (channels, k, j, i) for a volume, (channels, j, i) for a
slice; model axis i is the last tensor axis.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    MapTransform,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from PIL import Image

from CTExplainLib.errors import InputError
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import InputSpec
from CTExplainLib.points.crop import crop_input
from CTExplainLib.preprocess import preprocess
from CTExplainLib.preprocess import preprocess, slices_with_context
from CTExplainLib.resample import resample_array
from CTExplainLib.volume import Grid, Volume

from .config import TrainConfig
from .manifest import Example, Manifest, ManifestError

LOG = logging.getLogger(__name__)

IMAGE = "image"
LABEL = "label"
LABEL_IMAGE_SUFFIXES = (".png",)


def read_mask(path: Path, like: Volume) -> Volume:
    """A label image as a Volume. PNG masks hold label values as grey levels or palette
    indices (never converted through the palette) and take the geometry of their image."""
    if path.suffix.lower() in LABEL_IMAGE_SUFFIXES:
        try:
            with Image.open(path) as image:
                values = np.asarray(image)
        except OSError as exc:
            raise InputError(path, f"is not a readable PNG label image ({exc})") from exc
        if values.ndim != 2:
            raise InputError(path, f"a label PNG must be single-channel (grey or palette), got shape {values.shape}")
        if values.shape != like.array.shape[1:] or like.array.shape[0] != 1:
            raise InputError(path, f"label image is {values.shape[::-1]} but its image is {like.array.shape[:0:-1]}")
        return Volume(values[np.newaxis].astype(np.uint8), like.grid, metadata={"source": str(path), "kind": "labels"})
    return load_volume(path)


def _overlap(a: Grid, b: Grid) -> bool:
    """Whether the bounding boxes of two grids meet in physical space."""

    def box(grid: Grid) -> Tuple[np.ndarray, np.ndarray]:
        corners = np.array([grid.index_to_point((i, j, k)) for i in (0, grid.size[0] - 1) for j in (0, grid.size[1] - 1) for k in (0, grid.size[2] - 1)])
        return corners.min(axis=0), corners.max(axis=0)

    (a_low, a_high), (b_low, b_high) = box(a), box(b)
    tolerance = max(max(a.spacing), max(b.spacing))
    return bool(np.all(a_low <= b_high + tolerance) and np.all(b_low <= a_high + tolerance))


class LoadPreprocessd(MapTransform):
    """``{"image": path[, "mask": path]}`` → channels (and the mask) on the model grid.

    Classifiers get the package's cropped/padded model grid; segmenters the whole input at
    the model spacing (training patches are cut later; inference slides a window over it).
    Point models (``spec.crop``) get the box around the example's mask, as the core cuts it
    around a point (the nodule's outline, or its centroid standing for the point).
    """

    def __init__(self, spec: InputSpec, crop: bool, image_spacing: Optional[Sequence[float]]) -> None:
        super().__init__(keys=[IMAGE])
        self.spec = spec
        self.crop = crop
        self.image_spacing = tuple(image_spacing) if image_spacing else None

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        path = Path(data[IMAGE])
        volume = load_volume(path, image_spacing=self.image_spacing)
        mask_path = data.get("mask")
        mask = read_mask(Path(mask_path), volume) if mask_path else None
        if mask is not None and not _overlap(mask.grid, volume.grid):
            raise InputError(Path(mask_path), f"does not overlap its image {path} in physical space")
        if self.spec.crop is not None:
            if mask is None:
                raise InputError(path, "a point model learns from boxes around its nodule: the row needs a mask")
            model_input = crop_input(volume, self.spec, mask=mask).model_input
        else:
            model_input = preprocess(volume, self.spec, crop=self.crop)
        out: Dict[str, Any] = {IMAGE: model_input.tensor.contiguous()}
        if mask is not None:
            labels = resample_array(mask.array.astype(np.float32), mask.grid, model_input.grid, "nearest", 0.0)
            out[LABEL] = torch.from_numpy(np.rint(labels).astype(np.uint8))[None]
        return out


def spec_key(spec: InputSpec, crop: bool, image_spacing: Optional[Sequence[float]]) -> str:
    """A short hash naming the preprocessing, so a disk cache never serves a stale spec."""
    text = json.dumps({"spec": asdict(spec), "crop": crop, "image_spacing": list(image_spacing or [])}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def unique_images(examples: Sequence[Example]) -> List[Tuple[Path, Optional[Path]]]:
    """The distinct (image, mask) pairs in manifest order; slice rows share their volume."""
    seen: Dict[Path, Optional[Path]] = {}
    for example in examples:
        seen.setdefault(example.image, example.mask)
    return list(seen.items())


class PreprocessedCases:
    """Each distinct image of a manifest, loaded and preprocessed once (MONAI caching)."""

    def __init__(self, config: TrainConfig, examples: Sequence[Example]) -> None:
        spec = config.input_spec()
        crop = config.task != "segmentation"
        self.images = unique_images(examples)
        self.index = {image: n for n, (image, _) in enumerate(self.images)}
        key = spec_key(spec, crop, config.image_spacing)
        data = [{IMAGE: str(image), "mask": str(mask) if mask else "", "spec": key} for image, mask in self.images]
        transform = LoadPreprocessd(spec, crop, config.image_spacing)
        if config.cache == "memory":
            self.dataset: Dataset = CacheDataset(data, transform, num_workers=max(1, config.workers), progress=False, copy_cache=False)
        elif config.cache == "disk":
            cache_dir = Path(config.cache_dir or Path(config.out) / "cache") / key
            self.dataset = PersistentDataset(data, transform, cache_dir=cache_dir)
        else:
            self.dataset = Dataset(data, transform)

    def __len__(self) -> int:
        return len(self.images)

    def check_slices(self, examples: Sequence[Example], source: Path) -> None:
        """Every slice row names a slice its volume has (after preprocessing onto the model
        grid, whose k axis is the input's own slices for 2D models)."""
        problems = []
        for example in examples:
            if example.slice is None:
                continue
            depth = self.case(example.image)[IMAGE].shape[1]
            if example.slice >= depth:
                problems.append(f"row {example.row}: slice {example.slice} of {example.image}, which has {depth} slices")
        if problems:
            raise ManifestError(source, f"{len(problems)} slice row(s) name slices that do not exist: " + "; ".join(problems[:20]))

    def case(self, image: Path) -> Dict[str, torch.Tensor]:
        return self.dataset[self.index[image]]


def augmentation(config: TrainConfig, keys: Sequence[str], dims: int) -> Optional[Compose]:
    """Random flips, in-plane rotation and scaling, intensity jitter, optionally sharpening and noise (MONAI transforms)."""
    if not config.augment:
        return None
    # Model axis a (0 = i) is tensor spatial axis dims-1-a.
    flip = [RandFlipd(keys, prob=0.5, spatial_axis=dims - 1 - int(a)) for a in config.flip_axes]
    angle = math.radians(config.rotate_degrees)
    rotate = (angle,) if dims == 2 else (angle, 0.0, 0.0)  # about the k axis: within the slice
    modes = ["bilinear" if k == IMAGE else "nearest" for k in keys]
    affine = RandAffined(keys, prob=0.7, rotate_range=rotate, scale_range=config.scale_range, translate_range=config.shift_voxels,
                         mode=modes, padding_mode="zeros")
    jitter = config.intensity_jitter
    intensity = [RandScaleIntensityd(IMAGE, factors=jitter, prob=0.5), RandShiftIntensityd(IMAGE, offsets=jitter / 2, prob=0.5)]
    if config.texture_prob > 0:
        intensity += [RandGaussianSharpend(IMAGE, prob=config.texture_prob),
                      RandGaussianNoised(IMAGE, prob=config.texture_prob, std=0.03)]
    return Compose([*flip, affine, *intensity])


@dataclass
class Item:
    """One training example: a whole case, one slice of it, or a patch of it."""

    image: Path
    slice: Optional[int]
    target: Optional[np.ndarray]


class TrainingItems(torch.utils.data.Dataset):
    """Cached cases → (augmented) network inputs: volumes, slices of volumes, or patches."""

    def __init__(self, config: TrainConfig, cases: PreprocessedCases, items: Sequence[Item], train: bool) -> None:
        self.config = config
        self.cases = cases
        self.items = list(items)
        self.segmentation = config.task == "segmentation"
        keys = [IMAGE, LABEL] if self.segmentation else [IMAGE]
        self.augment = augmentation(config, keys, config.spatial_dims) if train else None
        self.patches = self._patch_transform() if self.segmentation and train else None

    def _patch_transform(self) -> Optional[Compose]:
        if not self.config.patch_size:
            return None
        size = tuple(reversed([int(s) for s in self.config.patch_size]))  # (i, j[, k]) -> tensor order
        return Compose(
            [
                SpatialPadd([IMAGE, LABEL], spatial_size=size),
                RandCropByPosNegLabeld([IMAGE, LABEL], label_key=LABEL, spatial_size=size, pos=2, neg=1, num_samples=1),
            ]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        item = self.items[index]
        case = self.cases.case(item.image)
        sample: Dict[str, Any] = {IMAGE: case[IMAGE]}
        if self.segmentation:
            sample[LABEL] = case[LABEL]
        if self.config.spatial_dims == 2:
            k = item.slice or 0
            sample = {key: value[:, k] for key, value in sample.items()}
            # The image with its neighbouring slices as the inference core feeds it (2.5D).
            sample[IMAGE] = slices_with_context(case[IMAGE], k, k + 1, self.config.slice_context)[0]
        if self.patches is not None:
            sample = self.patches(sample)[0]
        if self.augment is not None:
            sample = self.augment(sample)
        out = {IMAGE: torch.as_tensor(sample[IMAGE], dtype=torch.float32)}
        if self.segmentation:
            out[LABEL] = torch.as_tensor(sample[LABEL]).long()
        else:
            out[LABEL] = torch.as_tensor(item.target, dtype=torch.float32)
        return out


def items_for(examples: Sequence[Example], config: TrainConfig, cases: PreprocessedCases) -> List[Item]:
    """Training items of some examples; segmentation cases give several random patches.

    A 2D model learns from slices: a manifest row naming a slice is one item; a 2D
    segmenter's volume gives one item per slice (its mask labels every slice), whereas a
    volume-level label cannot be pinned on single slices, so a 2D classifier needs slice rows.
    """
    items = []
    for e in examples:
        depth = cases.case(e.image)[IMAGE].shape[1] if config.spatial_dims == 2 and e.slice is None else 1
        if depth == 1:
            items.append(Item(e.image, e.slice, e.target))
        elif config.task == "segmentation":
            items.extend(Item(e.image, k, None) for k in range(depth))
        else:
            raise ManifestError(
                e.image, f"a 2D classifier learns from slices, but this row labels a whole volume of {depth} slices; "
                "give one row per slice with a 'slice' column"
            )
    if config.task == "segmentation" and config.patch_size:
        items = [item for item in items for _ in range(config.patches_per_case)]
    return items


def positive_fractions(examples: Sequence[Example]) -> np.ndarray:
    targets = np.stack([e.target for e in examples])
    return targets.mean(axis=0)


def class_weights(manifest: Manifest, examples: Sequence[Example]) -> Optional[torch.Tensor]:
    """Loss weights against class imbalance: BCE ``pos_weight`` = negatives/positives per
    class (binary, multilabel); cross-entropy weights ∝ 1/frequency (multiclass)."""
    if manifest.task == "segmentation":
        return None
    fractions = np.clip(positive_fractions(examples), 1e-3, 1.0)
    if manifest.task == "multiclass":
        weights = 1.0 / fractions
        return torch.tensor(weights / weights.mean(), dtype=torch.float32)
    return torch.tensor(np.clip((1.0 - fractions) / fractions, 0.05, 20.0), dtype=torch.float32)
