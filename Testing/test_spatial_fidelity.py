"""Every output lands where the input is, in physical space.

The models here *mirror* their input: the classifier's CAM target layer is an average pool
of the input channel, and its head weighs it positively, so the Grad-CAM map is a blurred
copy of the input; the segmenter labels voxels brighter than a threshold. A bright marker at
a known, off-centre physical point must come back at that point (≤ 0.5 voxel) in the heat
map, the label map and the .seg.nrrd. Any axis swap, transposition or dropped LPS/RAS sign
moves it by many voxels.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
import torch
from torch import nn

from CTExplainLib import networks
from CTExplainLib.model_package import ChannelSpec, ClassSpec, InputSpec, ModelMetadata, load_package, save_package
from CTExplainLib.pipeline import ExplainOptions, explain_case
from CTExplainLib.volume import Grid

MARKER_WINDOW = ChannelSpec("marker", 0.0, 2000.0)  # air (-1000 HU) -> 0, +1000 HU -> 1


class MirrorClassifier(nn.Module):
    """CAM target layer ``features`` = average pool of the input; positive linear head."""

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2) -> None:
        super().__init__()
        self.features = nn.AvgPool3d(2) if spatial_dims == 3 else nn.AvgPool2d(2)
        self.pool = nn.AdaptiveAvgPool3d(1) if spatial_dims == 3 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, out_channels)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class MirrorSegmenter(nn.Module):
    """Label 1 where the input channel exceeds 0.5 (0 HU with MARKER_WINDOW)."""

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(40.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = self.gain * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)


@pytest.fixture
def mirror_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real_build = networks.build_network

    def build(name: str, kwargs: Dict) -> nn.Module:
        if name == "MirrorClassifier":
            return MirrorClassifier(**kwargs)
        if name == "MirrorSegmenter":
            return MirrorSegmenter(**kwargs)
        return real_build(name, kwargs)

    monkeypatch.setattr(networks, "build_network", build)

    def make(spatial_dims: int):
        size = (48, 48, 24) if spatial_dims == 3 else (48, 48)
        spacing = (2.0, 2.0, 4.0) if spatial_dims == 3 else (2.0, 2.0)
        classifier = ModelMetadata(
            name=f"mirror-{spatial_dims}d",
            version="1",
            task="multilabel",
            classes=[ClassSpec("marker"), ClassSpec("marker again")],
            network="MirrorClassifier",
            network_kwargs={"spatial_dims": spatial_dims, "in_channels": 1, "out_channels": 2},
            input=InputSpec(spatial_dims, [MARKER_WINDOW], spacing, size, "RAS"),
            cam_target_layer="features",
            cam_linear_layer="fc",
        )
        segmenter = ModelMetadata(
            name="mirror-seg",
            version="1",
            task="segmentation",
            classes=[ClassSpec("background", (0, 0, 0)), ClassSpec("marker", (1.0, 0.5, 0.0))],
            network="MirrorSegmenter",
            network_kwargs={"spatial_dims": 3, "in_channels": 1, "out_channels": 2},
            input=InputSpec(3, [MARKER_WINDOW], (1.5, 1.5, 1.5), (32, 32, 32), "PIL"),
        )
        c = save_package(tmp_path / f"mirror{spatial_dims}d", classifier, MirrorClassifier(spatial_dims))
        s = save_package(tmp_path / "mirrorseg", segmenter, MirrorSegmenter())
        return load_package(c), load_package(s)

    return make


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    rx = sitk.Euler3DTransform((0, 0, 0), np.radians(ax), np.radians(ay), np.radians(az))
    return np.reshape(rx.GetMatrix(), (3, 3))


def phantom_with_marker(grid: Grid, marker_index: Tuple[float, float, float], sigma_mm: float = 7.0) -> Tuple[sitk.Image, np.ndarray]:
    """Air with a Gaussian marker (+1000 HU peak) centred on a physical point."""
    point = grid.index_to_point(marker_index)
    distance2 = ((physical_points(grid) - point) ** 2).sum(axis=-1)
    array = (-1000.0 + 2000.0 * np.exp(-distance2 / (2 * sigma_mm**2))).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    grid.apply_to(image)
    return image, point


def physical_points(grid: Grid) -> np.ndarray:
    """LPS position of every voxel, shaped (k, j, i, 3)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    matrix = grid.ijk_to_lps()
    return index @ matrix[:3, :3].T + matrix[:3, 3]


def weighted_centre(image: sitk.Image, weights: np.ndarray) -> np.ndarray:
    points = physical_points(Grid.of_image(image))
    return (points * weights[..., None]).sum(axis=(0, 1, 2)) / weights.sum()


def assert_same_point(image: sitk.Image, found: np.ndarray, expected: np.ndarray, what: str) -> None:
    grid = Grid.of_image(image)
    offset = grid.point_to_index(found) - grid.point_to_index(expected)
    assert np.all(np.abs(offset) <= 0.5), f"{what}: marker found {offset} voxels (i, j, k) away from where it is"


def check_outputs(folder: Path, input_image: sitk.Image, marker: np.ndarray) -> None:
    result = json.loads((folder / "result.json").read_text())
    assert result["findings"][0]["heat_map"] == "heatmap_marker.nrrd"
    for name in ("heatmap_marker.nrrd", "labels.nrrd"):
        output = sitk.ReadImage(str(folder / name))
        assert Grid.of_image(output).same_as(Grid.of_image(input_image)), f"{name} is not on the input grid"
    heat = sitk.ReadImage(str(folder / "heatmap_marker.nrrd"))
    heat_array = sitk.GetArrayFromImage(heat)
    assert 0.8 < heat_array.max() <= 1.0 and heat_array.min() >= 0.0
    assert_same_point(heat, weighted_centre(heat, heat_array), marker, "heat map")
    labels = sitk.ReadImage(str(folder / "labels.nrrd"))
    label_array = sitk.GetArrayFromImage(labels)
    assert label_array.dtype == np.uint8 and set(np.unique(label_array)) == {0, 1}
    assert_same_point(labels, weighted_centre(labels, (label_array == 1).astype(float)), marker, "label map")
    segmentation = slicerio.read_segmentation(str(folder / "segmentation.seg.nrrd"))
    seg_image = sitk.ReadImage(str(folder / "segmentation.seg.nrrd"))
    assert [s["name"] for s in segmentation["segments"]] == ["marker"]
    assert_same_point(seg_image, weighted_centre(seg_image, (sitk.GetArrayFromImage(seg_image) == 1).astype(float)), marker, ".seg.nrrd")


GRIDS = {
    "oblique-anisotropic": Grid((72, 64, 30), (0.8, 1.1, 2.5), (-30.0, 12.0, 40.0), rotation(20, -15, 10)),
    # i and j swapped: a left-handed axis order (det = -1), as in FSL-style LAS files.
    "left-handed": Grid((64, 72, 30), (1.1, 0.8, 2.5), (25.0, -40.0, -10.0), np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]]) @ rotation(5, 0, -8)),
}


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_marker_comes_back_at_its_physical_point(grid_name: str, spatial_dims: int, mirror_models, tmp_path: Path) -> None:
    grid = GRIDS[grid_name]
    assert grid.is_left_handed() == (grid_name == "left-handed")
    image, marker = phantom_with_marker(grid, (44.3, 21.6, 18.4) if grid.size[0] == 72 else (21.6, 44.3, 11.7))
    source = tmp_path / "input.nrrd"
    sitk.WriteImage(image, str(source))
    classifier, segmenter = mirror_models(spatial_dims)
    result = explain_case(source, tmp_path / "out", classifier, segmenter, ExplainOptions(device="cpu"))
    assert result.ok, result.error
    check_outputs(tmp_path / "out", image, marker)


def test_marker_in_real_dicom_series(data_dir: Path, mirror_models, tmp_path: Path) -> None:
    """A marker written into the pixels of a copy of a real DICOM series comes back in place."""
    series = tmp_path / "series"
    shutil.copytree(data_dir / "slicer-cthead", series)
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    grid = Grid.of_image(reference)
    # Off-centre on every axis, yet with its tails well inside the 96 mm field of view of the model.
    marker_image, marker = phantom_with_marker(grid, (36.2, 27.7, 52.3), sigma_mm=8.0)
    marker_hu = sitk.GetArrayFromImage(marker_image)
    for path in series.glob("*.dcm"):
        dataset = pydicom.dcmread(str(path))
        position = np.asarray(dataset.ImagePositionPatient, dtype=float)
        k = int(round(grid.point_to_index(position)[2]))
        stored = (marker_hu[k] - float(dataset.RescaleIntercept)) / float(dataset.RescaleSlope)
        limits = np.iinfo(dataset.pixel_array.dtype)
        dataset.PixelData = np.clip(stored, limits.min, limits.max).astype(dataset.pixel_array.dtype).tobytes()
        dataset.save_as(str(path))
    classifier, segmenter = mirror_models(3)
    result = explain_case(series, tmp_path / "out", classifier, segmenter, ExplainOptions(device="cpu"))
    assert result.ok, result.error
    check_outputs(tmp_path / "out", reference, marker)


def test_two_axis_orders_give_the_same_outputs(data_dir: Path, tmp_path: Path) -> None:
    """The same CT stored in two axis orders gives the same heat maps and masks, voxel for voxel."""
    from CTExplainLib.demo_models import demo_classifier, demo_segmenter

    classifier = load_package(demo_classifier(tmp_path / "classifier"))
    segmenter = load_package(demo_segmenter(tmp_path / "segmenter"))
    original = sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"))
    reoriented = sitk.DICOMOrient(original, "PIR")
    assert sitk.GetArrayViewFromImage(reoriented).shape != sitk.GetArrayViewFromImage(original).shape
    folders = []
    for name, image in (("original", original), ("reoriented", reoriented)):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nrrd"))
        result = explain_case(tmp_path / f"{name}.nrrd", tmp_path / name, classifier, segmenter, ExplainOptions(device="cpu"))
        assert result.ok, result.error
        folders.append(tmp_path / name)
    first = json.loads((folders[0] / "result.json").read_text())["findings"]
    second = json.loads((folders[1] / "result.json").read_text())["findings"]
    assert [f["probability"] for f in first] == pytest.approx([f["probability"] for f in second], abs=1e-5)
    for name, interpolator in (("heatmap_demo_finding_a.nrrd", sitk.sitkLinear), ("labels.nrrd", sitk.sitkNearestNeighbor)):
        a = sitk.ReadImage(str(folders[0] / name))
        b = sitk.Resample(sitk.ReadImage(str(folders[1] / name)), a, sitk.Transform(), interpolator)
        difference = np.abs(sitk.GetArrayFromImage(a).astype(float) - sitk.GetArrayFromImage(b))
        assert difference.max() <= 1e-4, f"{name} differs by up to {difference.max()} between axis orders"
