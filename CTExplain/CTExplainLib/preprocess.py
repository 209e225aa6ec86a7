"""From a CT volume to a network input, exactly as a model package's input spec says.

One SimpleITK resampling puts the CT on the *model grid*: a grid with the model's
orientation and spacing, centred on the CT and cropped or padded to the model's size (or
covering the whole CT for sliding-window segmentation). The model grid is a `Grid` in LPS
space, so everything computed on it (CAMs, probabilities) maps back to the input's grid by
resampling in physical space, never by array-space zooming.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import HistogramNormalize, NormalizeIntensity

from .bundles.intensity import apply_steps
from .anatomy import BODY_ABOVE_HU, body_mask_shrink, fill_holes_per_slice
from .model_package import FIT_POLICIES, InputSpec
from .resample import resample_array
from .volume import Grid, Volume
from .windowing import window_bounds, window_to_unit

LOG = logging.getLogger(__name__)

AIR_HU = -1024.0
DISPLAY_BODY_ABOVE = 25.5  # a tenth of 0-255


@dataclass
class ModelInput:
    """Network input on the model grid: ``tensor`` is (channels, k, j, i), float32."""

    tensor: torch.Tensor
    grid: Grid
    warnings: List[str] = field(default_factory=list)
    slice_context: int = 0  # the input spec's: neighbouring slices fed with each slice (2.5D)

    def slices(self, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Axial slices [start, stop) of the input as a batch for 2D networks, (k, channels, j, i),
        each with its neighbours as further channels when the spec asks for them."""
        return slices_with_context(self.tensor, start, self.tensor.shape[1] if stop is None else stop, self.slice_context)

    def batch(self) -> torch.Tensor:
        """The input as a batch of one volume (1, channels, k, j, i), for 3D networks."""
        return self.tensor.unsqueeze(0)


def slices_with_context(tensor: torch.Tensor, start: int, stop: int, context: int) -> torch.Tensor:
    """Slices [start, stop) of a (C, k, j, i) tensor as a batch (n, C * (2 * context + 1), j, i):
    for each slice, the C channels of slice k - context, ..., k, ..., k + context in that order,
    the first and last slice repeated beyond the volume's ends. With context 0, the slices
    themselves. The one definition of a 2.5D input, for training, validation and inference."""
    depth = tensor.shape[1]
    offsets = torch.arange(-context, context + 1)
    index = (torch.arange(start, stop)[:, None] + offsets[None, :]).clamp(0, depth - 1)  # (n, 2 * context + 1)
    channels, _, height, width = tensor.shape
    gathered = tensor[:, index.reshape(-1)].reshape(channels, index.shape[0], index.shape[1], height, width)
    return gathered.permute(1, 2, 0, 3, 4).reshape(index.shape[0], index.shape[1] * channels, height, width).contiguous()


def orientation_direction(code: str) -> np.ndarray:
    """3x3 LPS direction whose columns point where ``code`` says (e.g. LPS → identity)."""
    return np.reshape(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code), (3, 3))


def _native_spacing(grid: Grid, direction: np.ndarray) -> np.ndarray:
    """The input's spacing along each model axis: that of the input axis most parallel to it."""
    alignment = np.abs(grid.direction.T @ direction)  # [input axis, model axis]
    return np.array([grid.spacing[int(np.argmax(alignment[:, m]))] for m in range(3)])


def _extent_in_frame(grid: Grid, direction: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Min and max coordinates of the input's voxel centres along the model axes."""
    corners = np.array([[i, j, k] for i in (0, grid.size[0] - 1) for j in (0, grid.size[1] - 1) for k in (0, grid.size[2] - 1)])
    points = np.array([grid.index_to_point(c) for c in corners])
    coords = points @ direction  # projections on the model axes (columns of direction)
    return coords.min(axis=0), coords.max(axis=0)


def model_grid(input_grid: Grid, spec: InputSpec, crop: bool = True) -> Grid:
    """The grid the network sees, centred on the input.

    With ``crop`` and a size in ``spec``, the grid has exactly that size (the CT is cropped or
    padded around its centre; with ``resize="fit"`` first scaled so that its whole in-plane
    extent fits); otherwise it covers the whole input. 2D models keep the input's
    own slice spacing along the third model axis and cover all slices.
    """
    direction = orientation_direction(spec.orientation)
    native = _native_spacing(input_grid, direction)
    spacing = native.copy()
    if spec.spacing is not None:
        spacing[: spec.spatial_dims] = spec.spacing
    low, high = _extent_in_frame(input_grid, direction)
    edges = high - low + native  # the extent, voxel edges included
    if spec.resize in FIT_POLICIES and crop:
        # The whole in-plane extent fits the size, one scale for i and j.
        in_plane = slice(0, 2)
        spacing[in_plane] = np.max(edges[in_plane] / np.asarray(spec.size[:2], dtype=float))
    stretch = spec.resize == "stretch" and spec.size is not None
    if stretch:  # MONAI's Resized: each axis scaled on its own, whatever the use
        dims = spec.spatial_dims
        spacing[:dims] = edges[:dims] / np.asarray(spec.size, dtype=float)
    # A tolerance keeps a grid that already fits from gaining a voxel through rounding noise.
    size = np.floor((high - low) / spacing + 1e-4).astype(int) + 1
    if (crop or stretch) and spec.size is not None:
        size[: spec.spatial_dims] = spec.size
    centre = (low + high) / 2.0
    origin = direction @ (centre - spacing * (size - 1) / 2.0)
    return Grid(tuple(int(s) for s in size), tuple(spacing), tuple(origin), direction)


def feature_grid(grid: Grid, feature_size: Sequence[int]) -> Grid:
    """The grid of a feature map of ``feature_size`` (i, j, k) computed from an input on ``grid``.

    Each feature voxel summarises a block of ``grid.size / feature_size`` input voxels; its
    centre is the centre of that block.
    """
    factor = np.asarray(grid.size, dtype=float) / np.asarray(feature_size, dtype=float)
    spacing = np.asarray(grid.spacing) * factor
    origin = grid.index_to_point((factor - 1.0) / 2.0)
    return Grid(tuple(int(s) for s in feature_size), tuple(spacing), tuple(origin), grid.direction)


def channel_arrays(resampled: np.ndarray, spec: InputSpec, display_input: bool) -> np.ndarray:
    """Windows → channels in [0, 1], stacked as (channels, k, j, i)."""
    if display_input:
        # 8-bit display images already had a window applied when they were exported; only
        # rescaling is left, and every channel sees the same image.
        windows = [(0.0, 255.0)] * len(spec.channels)
    else:
        windows = [window_bounds(c.level, c.width) for c in spec.channels]
    # Each channel written straight into the stack: no stacked copy next to it.
    channels = np.empty((len(windows),) + resampled.shape, dtype=np.float32)
    for channel, (low, high) in zip(channels, windows):
        window_to_unit(resampled, low, high, channel)
    return channels


def normalise_images(channels: np.ndarray, spatial_dims: int, policy: str = "image") -> np.ndarray:
    """Each image's intensities brought to a common scale, in place, per axial slice for 2D
    models (each slice is one network input), over the volume for 3D ones: "image", zero mean
    and unit variance per channel; "histogram", each channel's histogram equalised to [0, 1]."""
    normalise = _equalise_channels if policy == "histogram" else NormalizeIntensity(channel_wise=True)
    images = [channels[:, k] for k in range(channels.shape[1])] if spatial_dims == 2 else [channels]
    for image in images:
        image[...] = np.asarray(normalise(image))
    return channels


def _equalise_channels(image: np.ndarray) -> np.ndarray:
    equalise = HistogramNormalize(num_bins=256, min=0, max=1)
    return np.stack([np.asarray(equalise(channel)) for channel in image])


SLICES_PER_MOSAIC = 32  # slices labelled in one SimpleITK call: bounds the label image's memory


def _slice_bodies(stack: np.ndarray, display_input: bool, filled: bool) -> np.ndarray:
    """The body (:func:`slice_body`) of each slice of a (K, J, I) stack, as one boolean array.

    The slices are laid one under the other with a blank row between them, so that one
    SimpleITK call labels them all without any region reaching from one slice into the next;
    the holes are filled as the anatomy's body mask fills them (:func:`fill_holes_per_slice`)."""
    k, j, i = stack.shape
    threshold = DISPLAY_BODY_ABOVE if display_input else BODY_ABOVE_HU
    mosaic = np.zeros((k, j + 1, i), dtype=np.uint8)
    mosaic[:, :j] = stack > threshold
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mosaic.reshape(k * (j + 1), i))))
    labels = labels.reshape(k, j + 1, i)
    sizes = np.bincount(labels.ravel())
    largest = np.zeros(sizes.size, dtype=bool)
    # Labels are given in raster order, so each slice holds the run of labels after the
    # previous slice's highest: its largest one is its body.
    last = np.maximum.accumulate(labels.reshape(k, -1).max(axis=1))
    for first, stop in zip(np.concatenate([[0], last[:-1]]) + 1, last + 1):
        if stop > first:
            largest[first + np.argmax(sizes[first:stop])] = True
    body = largest[labels[:, :j]]
    if filled:
        fill_holes_per_slice(body.view(np.uint8))
    return body


def slice_body(section: np.ndarray, display_input: bool) -> np.ndarray:
    """The body in one axial slice: the largest connected region above BODY_ABOVE_HU (or a
    tenth of the display range for 8-bit display images), its holes (lungs, bowel gas) filled.
    The table and clothes are not part of it where air separates them from the skin."""
    return _slice_bodies(section[None], display_input, filled=True)[0]


def keep_body_only(resampled: np.ndarray, display_input: bool, fill: float) -> np.ndarray:
    """In place: each axial slice's voxels outside :func:`slice_body` set to ``fill``."""
    for start in range(0, resampled.shape[0], SLICES_PER_MOSAIC):
        chunk = resampled[start : start + SLICES_PER_MOSAIC]
        chunk[~_slice_bodies(chunk, display_input, filled=True)] = fill
    return resampled


def body_box(volume: Volume, display_input: bool) -> Grid:
    """The input grid cut in-plane to the box around the body (:func:`slice_body`) on any slice.

    Sub-millimetre slices are averaged in-plane to about BODY_MASK_SPACING_MM first, as the
    anatomy's body mask is: a box needs no finer outline, and the labelling work shrinks by
    the square. The box edges then fall on whole averaged pixels, less than one such pixel
    (about 1.5 mm) from where full resolution puts them. Images of 1 mm pixels or coarser
    (the 2D screenshots models train on) are labelled as they are."""
    shrink = body_mask_shrink(volume.grid)
    depth, height, width = volume.array.shape
    rows = np.zeros(height // shrink, dtype=bool)  # j
    columns = np.zeros(width // shrink, dtype=bool)  # i
    for start in range(0, depth, SLICES_PER_MOSAIC):  # no full-size mask
        chunk = volume.array[start : start + SLICES_PER_MOSAIC]
        if shrink > 1:
            chunk = sitk.GetArrayFromImage(sitk.BinShrink(sitk.GetImageFromArray(chunk), [shrink, shrink, 1]))
        body = _slice_bodies(chunk, display_input, filled=False)  # holes change no box
        rows |= body.any(axis=(0, 2))
        columns |= body.any(axis=(0, 1))
    if not rows.any():
        return volume.grid
    (i0, i1), (j0, j1) = (_covered(columns, shrink, width), _covered(rows, shrink, height))
    return volume.grid.box((i0, j0, 0), (i1, j1, depth))


def foreground_box(volume: Volume, spec: InputSpec) -> Grid:
    """The input grid cut to the box of voxels above ``spec.foreground_above`` (MONAI's
    CropForegroundd), widened by ``spec.foreground_margin`` model-grid voxels; the whole grid
    when no voxel is above."""
    above = volume.array > spec.foreground_above  # (k, j, i)
    hits = [np.flatnonzero(above.any(axis=axes)) for axes in ((0, 1), (0, 2), (1, 2))]  # i, j, k
    if any(h.size == 0 for h in hits):
        return volume.grid
    spacing = np.asarray(spec.spacing if spec.spacing is not None else volume.grid.spacing, dtype=float)
    margin_mm = spec.foreground_margin * float(spacing.max())
    pad = np.ceil(margin_mm / np.asarray(volume.grid.spacing) - 1e-6).astype(int)
    start = [max(int(h[0]) - p, 0) for h, p in zip(hits, pad)]
    stop = [min(int(h[-1]) + 1 + p, n) for h, p, n in zip(hits, pad, volume.grid.size)]
    return volume.grid.box(start, stop)


def _covered(marked: np.ndarray, shrink: int, full: int) -> Tuple[int, int]:
    """The full-resolution [start, stop) of the averaged pixels between the first and last marked
    one; the last averaged pixel also covers the few pixels that did not fill a whole one."""
    first, last = np.flatnonzero(marked)[[0, -1]]
    return int(first) * shrink, full if last == marked.size - 1 else (int(last) + 1) * shrink


def preprocess(volume: Volume, spec: InputSpec, crop: bool = True) -> ModelInput:
    """Resample ``volume`` onto its model grid and turn it into the network's channels."""
    warnings: List[str] = []
    display_input = volume.metadata.get("intensity") == "display"
    if display_input and spec.intensity == "hu" and len({(c.level, c.width) for c in spec.channels}) > 1:
        warnings.append(
            "input is an 8-bit display image (no HU) but the model expects several HU windows; "
            "every channel gets the same image, so results may be unreliable"
        )
    if not display_input and volume.metadata.get("modality") not in (None, "CT"):
        warnings.append(f"modality is {volume.metadata.get('modality')}, not CT: HU windows may not apply")
    extent = body_box(volume, display_input) if spec.resize == "fit_body" and crop else volume.grid
    if spec.foreground_above is not None:
        extent = foreground_box(volume, spec)
    grid = model_grid(extent, spec, crop)
    fill = 0.0 if display_input else AIR_HU
    resampled = resample_array(volume.array, volume.grid, grid, "linear", fill)
    if spec.body_only:
        keep_body_only(resampled, display_input, fill)
    if spec.intensity_steps is not None:
        channels = np.repeat(resampled[None].astype(np.float32, copy=False), len(spec.channels), axis=0)
        apply_steps(channels, spec.spatial_dims, spec.intensity_steps)
    else:
        channels = channel_arrays(resampled, spec, display_input)
    if spec.normalise != "none":
        normalise_images(channels, spec.spatial_dims, spec.normalise)
    for warning in warnings:
        LOG.warning(warning)
    return ModelInput(torch.from_numpy(channels), grid, warnings, spec.slice_context)
