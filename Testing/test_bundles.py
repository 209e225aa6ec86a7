"""MONAI bundles: the three Model Zoo configs of ../shared/data/monai-bundles load with weights of
the right shape and run end to end on real images; a bundle's code is never run.

The bundles ship without weights: each test copy gets a random state dict of the network its
config describes (``bundle_network``), as the data README says.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from safetensors.torch import save_file

from CTExplainLib.bundles.config import BundleConfig, BundleRefused
from CTExplainLib.bundles.loader import bundle_metadata, bundle_network
from CTExplainLib.bundles.safe_eval import UnsafeExpression, safe_eval
from CTExplainLib.cli import main
from CTExplainLib.demo_models import demo_classifier
from CTExplainLib.errors import ModelPackageError
from CTExplainLib.model_package import load_package, parse_input_spec
from CTExplainLib.networks import accepted_kwargs, build_network
from CTExplainLib.preprocess import model_grid, preprocess
from CTExplainLib.segment import segment
from CTExplainLib.volume import Grid, Volume

SPLEEN, WHOLE_BODY, ENDOSCOPIC = "spleen_ct_segmentation", "wholeBody_ct_segmentation", "endoscopic_inbody_classification"


def with_weights(source: Path, copy: Path) -> Path:
    shutil.copytree(source, copy)
    torch.manual_seed(0)
    (copy / "models").mkdir()
    torch.save(bundle_network(copy).state_dict(), str(copy / "models" / "model.pt"))
    return copy


@pytest.fixture(scope="module")
def bundles(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Copies of the three published bundles, each with random weights of the right shape."""
    root = tmp_path_factory.mktemp("bundles")
    return {name: with_weights(data_dir / "monai-bundles" / name, root / name) for name in (SPLEEN, WHOLE_BODY, ENDOSCOPIC)}


def edited(bundle: Path, copy: Path, edit: Callable[[Dict[str, Any]], None]) -> Path:
    """A copy of ``bundle`` whose configs/inference.json went through ``edit``."""
    shutil.copytree(bundle, copy)
    file = copy / "configs" / "inference.json"
    config = json.loads(file.read_text(encoding="utf-8"))
    edit(config)
    file.write_text(json.dumps(config), encoding="utf-8")
    return copy


def transforms(config: Dict[str, Any]) -> list:
    return config["preprocessing"]["transforms"]


@pytest.fixture(scope="module")
def ct_crop(real_ct: Volume, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40 x 40 x 16 voxel part of the real CT (12 x 12 x 4.8 cm), so that a 96-voxel window covers it."""
    path = tmp_path_factory.mktemp("ct") / "ct_part.nii.gz"
    image = sitk.GetImageFromArray(real_ct.array[5:21, 30:70, 40:80])
    image.SetSpacing(real_ct.grid.spacing)
    image.SetDirection(tuple(np.asarray(real_ct.grid.direction).ravel()))
    image.SetOrigin(tuple(real_ct.grid.index_to_point((40, 30, 5))))
    sitk.WriteImage(image, str(path))
    return path


# --- the published bundles ------------------------------------------------------------------


def test_the_three_bundles_load_as_published(bundles: Dict[str, Path]) -> None:
    spleen = load_package(bundles[SPLEEN])
    assert (spleen.metadata.task, spleen.metadata.network, spleen.metadata.class_names) == ("segmentation", "UNet", ["background", "spleen"])
    spec = spleen.metadata.input
    assert (spec.orientation, spec.spacing, spec.size, spec.intensity_steps) == ("RAS", (1.5, 1.5, 2.0), (96, 96, 96), None)
    assert (spec.channels[0].level, spec.channels[0].width) == (53.5, 221.0)  # ScaleIntensityRanged -57..164 as a window
    assert (spec.window_overlap, spec.window_blend) == (0.5, "constant")

    whole = load_package(bundles[WHOLE_BODY])
    assert whole.metadata.network == "SegResNet" and len(whole.metadata.classes) == 105
    assert whole.metadata.class_names[:3] == ["background", "spleen", "kidney_right"]
    spec = whole.metadata.input
    # pixdim is "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]"
    assert spec.spacing == (1.5, 1.5, 1.5) and spec.orientation == "RAS"
    assert spec.intensity_steps == [
        {"transform": "NormalizeIntensity", "nonzero": True},
        {"transform": "ScaleIntensity", "minv": -1.0, "maxv": 1.0},
    ]
    assert (spec.window_overlap, spec.window_blend, spec.window_padding) == (0.25, "gaussian", "replicate")  # via references

    endoscopic = load_package(bundles[ENDOSCOPIC])
    metadata = endoscopic.metadata
    assert (metadata.task, metadata.network, metadata.class_names) == ("multiclass", "SEResNet50", ["in body", "out body"])
    assert (metadata.cam_target_layer, metadata.cam_linear_layer) == ("layer4", "last_linear")
    spec = metadata.input
    assert (spec.spatial_dims, spec.size, spec.resize, spec.intensity) == (2, (256, 256), "stretch", "display")
    assert [c.name for c in spec.channels] == ["R", "G", "B"]
    assert spec.intensity_steps == [{"transform": "NormalizeIntensity", "nonzero": True, "channel_wise": True}]

    saved = torch.load(str(bundles[SPLEEN] / "models" / "model.pt"), weights_only=True)
    for name, value in spleen.network.state_dict().items():
        torch.testing.assert_close(value, saved[name])


def test_weights_of_the_wrong_shape_are_refused(bundles: Dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(bundles[SPLEEN], tmp_path / "spleen")
    # Same layers, half the channels: every key matches, shapes do not.
    narrow = build_network("UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32, 64, 128],
                                    "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"})
    torch.save(narrow.state_dict(), str(copy / "models" / "model.pt"))
    with pytest.raises(ModelPackageError, match=r"model\.pt: weights do not match the network: .* of wrong shape \(e\.g\. "):
        load_package(copy)


def test_safetensors_weights_are_read(bundles: Dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(bundles[SPLEEN], tmp_path / "spleen")
    state = torch.load(str(copy / "models" / "model.pt"), weights_only=True)
    (copy / "models" / "model.pt").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(copy / "models" / "model.safetensors"))
    loaded = load_package(copy).network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_yaml_config_loads_as_its_json(bundles: Dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(bundles[WHOLE_BODY], tmp_path / "yaml")
    config = json.loads((copy / "configs" / "inference.json").read_text(encoding="utf-8"))
    (copy / "configs" / "inference.json").unlink()
    (copy / "configs" / "inference.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    as_yaml, as_json = bundle_metadata(copy).to_json(), bundle_metadata(bundles[WHOLE_BODY]).to_json()
    as_yaml.pop("provenance"), as_json.pop("provenance")
    assert as_yaml == as_json


def test_references_are_resolved_as_data(bundles: Dict[str, Path], tmp_path: Path) -> None:
    def low_res(config: Dict[str, Any]) -> None:
        config["displayable_configs"]["highres"] = False
        config["displayable_configs"]["sw_overlap"] = 0.5

    spec = bundle_metadata(edited(bundles[WHOLE_BODY], tmp_path / "low", low_res)).input
    assert spec.spacing == (3.0, 3.0, 3.0) and spec.window_overlap == 0.5


# --- what is refused --------------------------------------------------------------------------


def test_an_expression_the_network_needs_is_refused_by_name(bundles: Dict[str, Path], tmp_path: Path) -> None:
    planted = tmp_path / "pwned"
    code = f"$__import__('pathlib').Path({str(planted)!r}).write_text('x') or [16, 32, 64, 128, 256]"

    def plant(config: Dict[str, Any]) -> None:
        config["network_def"]["channels"] = code

    with pytest.raises(BundleRefused) as info:
        load_package(edited(bundles[SPLEEN], tmp_path / "bad", plant))
    assert "entry 'network_def#channels'" in str(info.value) and code in str(info.value)
    assert "inference.json" in str(info.value)
    assert not planted.exists()


def test_entries_the_model_does_not_need_are_never_run(bundles: Dict[str, Path], tmp_path: Path) -> None:
    planted = tmp_path / "pwned"
    code = f"$open({str(planted)!r}, 'w')"

    def plant(config: Dict[str, Any]) -> None:
        config["datalist"], config["device"], config["initialize"] = code, code, [code]
        config["imports"].append("$import shutil")

    assert bundle_metadata(edited(bundles[SPLEEN], tmp_path / "ignored", plant)).network == "UNet"
    assert not planted.exists()


@pytest.mark.parametrize(
    "transform, refused",
    [
        ({"_target_": "RandGaussianNoised", "keys": "@image_key", "prob": 1.0}, "transform RandGaussianNoised is not supported"),
        ({"_target_": "Lambdad", "keys": "@image_key", "func": "$lambda x: x.__class__"}, "transform Lambdad is not supported"),
        ({"_target_": "monai.transforms.ClipIntensityPercentilesd", "keys": "image", "lower": 1}, "transform ClipIntensityPercentilesd"),
    ],
)
def test_an_unknown_transform_is_refused_by_name(bundles: Dict[str, Path], tmp_path: Path, transform: Dict[str, Any], refused: str) -> None:
    bundle = edited(bundles[SPLEEN], tmp_path / "bad", lambda config: transforms(config).insert(3, transform))
    with pytest.raises(BundleRefused, match=refused + ".*"):
        load_package(bundle)


def test_a_transform_on_another_key_is_skipped_and_unknown_arguments_refused(bundles: Dict[str, Path], tmp_path: Path) -> None:
    label_only = {"_target_": "RandFlipd", "keys": "label", "prob": 0.5}
    assert bundle_metadata(edited(bundles[SPLEEN], tmp_path / "label", lambda c: transforms(c).append(label_only))).network == "UNet"

    def min_pixdim(config: Dict[str, Any]) -> None:
        transforms(config)[3]["min_pixdim"] = [1.0, 1.0, 1.0]

    with pytest.raises(BundleRefused, match=r"preprocessing#transforms#3'.*Spacingd argument\(s\) min_pixdim are not supported"):
        load_package(edited(bundles[SPLEEN], tmp_path / "min", min_pixdim))

    def flat_range(config: Dict[str, Any]) -> None:
        transforms(config)[4]["a_max"] = transforms(config)[4]["a_min"]

    with pytest.raises(BundleRefused, match=r"ScaleIntensityRanged needs two different numbers a_min and a_max, got \[-57, -57\]"):
        load_package(edited(bundles[SPLEEN], tmp_path / "flat", flat_range))


def test_an_unlisted_network_is_refused_by_name(bundles: Dict[str, Path], tmp_path: Path) -> None:
    def vnet(config: Dict[str, Any]) -> None:
        config["network_def"] = {"_target_": "monai.networks.nets.VNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}

    with pytest.raises(BundleRefused, match=r"network 'VNet' is not in the allowlisted registry"):
        load_package(edited(bundles[SPLEEN], tmp_path / "vnet", vnet))


def test_keyword_arguments_newer_monai_dropped_are_warned_and_dropped(bundles: Dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """swin_unetr_btcv_segmentation's network_def (img_size, gone from SwinUNETR in MONAI 1.5), at a tiny size."""

    def swin(config: Dict[str, Any]) -> None:
        config["network_def"] = {"_target_": "SwinUNETR", "spatial_dims": 3, "img_size": 96, "in_channels": 1, "out_channels": 2,
                                 "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "use_checkpoint": False,
                                 "retired_option": True}

    bundle = edited(bundles[SPLEEN], tmp_path / "swin", swin)
    with caplog.at_level(logging.WARNING):
        metadata = bundle_metadata(bundle)
    dropped = ["retired_option"] + (["img_size"] if "img_size" not in accepted_kwargs("SwinUNETR") else [])
    assert f"SwinUNETR does not take {', '.join(sorted(dropped))}" in caplog.text
    assert "retired_option" not in metadata.network_kwargs and metadata.network == "SwinUNETR"
    build_network(metadata.network, metadata.network_kwargs)  # the rest is what the constructor takes


def test_crop_foreground_becomes_a_foreground_box(bundles: Dict[str, Path], tmp_path: Path, real_ct: Volume) -> None:
    """pediatric_abdominal_ct_segmentation's preprocessing (YAML): CropForegroundd after ScaleIntensityRanged -250..400."""
    crop = {"_target_": "CropForegroundd", "keys": ["@image_key"], "source_key": "@image_key", "mode": ["minimum"]}
    cast = {"_target_": "CastToTyped", "keys": "@image_key", "dtype": "$torch.float32"}

    def pediatric(config: Dict[str, Any]) -> None:
        transforms(config)[4].update({"a_min": -250, "a_max": 400})
        transforms(config)[4:5] = [transforms(config)[4], crop, cast]

    spec = bundle_metadata(edited(bundles[SPLEEN], tmp_path / "fg", pediatric)).input
    assert spec.foreground_above == -250.0 and spec.intensity_steps is None
    model_input = preprocess(real_ct, spec, crop=False)
    whole = model_grid(real_ct.grid, spec, crop=False)
    # The box of voxels above -250 HU (the body) is smaller than the CT, and holds them all.
    assert np.prod(model_input.grid.size) < np.prod(whole.size)
    assert model_input.tensor.shape[1:] == tuple(reversed(model_input.grid.size))

    def after_normalise(config: Dict[str, Any]) -> None:
        transforms(config)[4] = {"_target_": "NormalizeIntensityd", "keys": "@image_key"}
        transforms(config).insert(5, crop)

    with pytest.raises(BundleRefused, match="CropForegroundd after NormalizeIntensity is not supported"):
        load_package(edited(bundles[SPLEEN], tmp_path / "fg2", after_normalise))


def test_macros_and_relative_references(tmp_path: Path) -> None:
    (tmp_path / "common.json").write_text(json.dumps({"sizes": {"roi": [64, 64, 32]}}))
    config = BundleConfig(tmp_path / "inference.json", {
        "net": {"channels": [8, 16], "first": "@#channels#0", "roi": "%common.json#sizes#roi", "last": "$@net#channels[-1] * 2"},
        "outside": "%../secret.json#x",
    })
    assert config.get("net") == {"channels": [8, 16], "first": 8, "roi": [64, 64, 32], "last": 32}
    with pytest.raises(BundleRefused, match="outside the bundle's configs folder"):
        config.get("outside")
    loop = BundleConfig(tmp_path / "inference.json", {"a": "@b", "b": "$@a + 1"})
    with pytest.raises(BundleRefused, match="circular reference"):
        loop.get("a")


# --- the safe idioms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, refs, value",
    [
        ("[1.5, 1.5, 1.5] if __local_refs['cfg::highres'] else [3.0, 3.0, 3.0]", {"cfg::highres": False}, [3.0, 3.0, 3.0]),
        ("2 ** 4 * (3 - 1) // 3 + -1", {}, 9),
        ("[96] * 3 + [2]", {}, [96, 96, 96, 2]),
        ("__local_refs['strides'][1:]", {"strides": [1, 2, 2, 2]}, [2, 2, 2]),
        ("__local_refs['transforms']", {"transforms": [{"_target_": "LoadImaged"}]}, [{"_target_": "LoadImaged"}]),
        ("len(__local_refs['spatial_size'])", {"spatial_size": [96, 96, 96]}, 3),
        ("not __local_refs['a'] and max(1, 2) == 2", {"a": False}, True),
        ("torch.float32", {}, "float32"),
        ("numpy.int16", {}, "int16"),
        ("monai.utils.CommonKeys.IMAGE", {}, "image"),
        ("None", {}, None),
    ],
)
def test_the_safe_idioms_compute(code: str, refs: Dict[str, Any], value: Any) -> None:
    assert safe_eval(code, refs) == value


def test_common_keys_match_monai() -> None:
    from monai.utils import CommonKeys

    for name in ("IMAGE", "LABEL", "PRED"):
        assert safe_eval(f"monai.utils.CommonKeys.{name}", {}) == str(getattr(CommonKeys, name))


@pytest.mark.parametrize(
    "code, problem",
    [
        ("__import__('os')", "call of '__import__'"),
        ("__import__('os').system('true')", "call of 'an expression'"),
        ("import os", "not a Python expression"),
        ("torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')", "call of 'torch.device'"),
        ("open('/etc/passwd').read()", "call of 'an expression'"),
        ("(1).__class__", "attribute access is not allowed"),
        ("lambda x: x", "Lambda is not allowed"),
        ("[i for i in range(3)]", "ListComp is not allowed"),
        ("os.environ", "'os.environ' is not a constant"),
        ("[0] * 10 ** 9", "longer than"),
        ("2 ** 10 ** 10", "too large"),
        ("__local_refs['missing']", "reference '@missing' is unknown"),
        ("x", "name 'x' is not allowed"),
    ],
)
def test_anything_else_is_refused(code: str, problem: str) -> None:
    with pytest.raises(UnsafeExpression, match=problem.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("*", r"\*")):
        safe_eval(code, {})


# --- end to end on real images --------------------------------------------------------------


def grid_of(path: Path) -> tuple:
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def same_grid(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and all(np.allclose(x, y, atol=1e-4) for x, y in zip(a[1:], b[1:]))


@pytest.mark.slow
def test_spleen_bundle_segments_a_real_ct_from_the_command_line(bundles: Dict[str, Path], ct_crop: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    classifier = demo_classifier(tmp_path / "classifier")
    status = main(["explain", str(ct_crop), "--model", str(classifier), "--segmenter", str(bundles[SPLEEN]),
                   "--out", str(tmp_path / "out"), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    case = tmp_path / "out" / "ct_part"
    record = json.loads((case / "result.json").read_text())
    assert record["segmenter"]["name"] == "Spleen CT segmentation" and record["segments"][0]["name"] == "spleen"
    assert same_grid(grid_of(case / "labels.nrrd"), grid_of(ct_crop))


@pytest.mark.slow
def test_whole_body_bundle_segments_a_real_ct(bundles: Dict[str, Path], ct_crop: Path) -> None:
    volume = Volume.from_sitk(sitk.ReadImage(str(ct_crop)))
    result = segment(load_package(bundles[WHOLE_BODY]), volume, torch.device("cpu"))
    assert result.labels.grid.same_as(volume.grid)
    assert len(result.segments) == 104 and result.segments[0].name == "spleen"
    assert result.labels.array.max() <= 104


@pytest.mark.slow
def test_endoscopic_classifier_bundle_explains_a_2d_image(bundles: Dict[str, Path], data_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    picture = data_dir / "chest-ct-4class" / "test" / "normal" / "0000.png"
    status = main(["explain", str(picture), "--spacing", "0.7", "0.7", "1", "--model", str(bundles[ENDOSCOPIC]),
                   "--segmenter", "none", "--out", str(tmp_path / "out"), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    case = next((tmp_path / "out").iterdir())
    record = json.loads((case / "result.json").read_text())
    assert [f["name"] for f in record["findings"]] == ["in body", "out body"]
    assert sum(f["probability"] for f in record["findings"]) == pytest.approx(1.0, abs=1e-4)
    width, height = sitk.ReadImage(str(picture)).GetSize()[:2]
    for finding in record["findings"]:
        heat = sitk.ReadImage(str(case / finding["heat_map"]))
        assert heat.GetSize()[:2] == (width, height)
        assert np.asarray(heat.GetSpacing()[:2]) == pytest.approx([0.7, 0.7])


def test_resized_and_a_different_window_size_are_refused(bundles: Dict[str, Path], tmp_path: Path) -> None:
    def windows(config: Dict[str, Any]) -> None:
        config["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": [128, 128], "sw_batch_size": 4}

    with pytest.raises(BundleRefused, match=r"entry 'inferer': roi_size \[128, 128\] differs from the Resized spatial_size \[256, 256\]"):
        bundle_metadata(edited(bundles[ENDOSCOPIC], tmp_path / "roi", windows))


def test_resized_stretches_each_axis_onto_the_size(bundles: Dict[str, Path]) -> None:
    spec = bundle_metadata(bundles[ENDOSCOPIC]).input
    picture = Grid((629, 491, 1), (0.7, 0.7, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    for crop in (True, False):  # a classifier's grid and a segmenter's alike
        grid = model_grid(picture, spec, crop)
        assert grid.size == (256, 256, 1)
        assert grid.spacing[:2] == pytest.approx((629 * 0.7 / 256, 491 * 0.7 / 256))
        # The first and last model voxels' outer edges are the picture's.
        assert grid.index_to_point((-0.5, -0.5, 0))[:2] == pytest.approx(picture.index_to_point((-0.5, -0.5, 0))[:2])


def test_package_input_spec_checks_the_bundle_fields(tmp_path: Path) -> None:
    base = {"spatial_dims": 3, "channels": [{"name": "ct", "level": 40, "width": 400}]}
    spec = parse_input_spec({**base, "intensity_steps": [{"transform": "ScaleIntensity", "minv": -1.0, "maxv": 1.0}]}, tmp_path)
    assert spec.intensity_steps == [{"transform": "ScaleIntensity", "minv": -1.0, "maxv": 1.0}]
    for bad, message in (
        ({"intensity_steps": [{"transform": "Lambda", "func": "x"}]}, "intensity step 'Lambda' is not one of"),
        ({"intensity_steps": [{"transform": "NormalizeIntensity", "dtype": "float16"}]}, "unknown arguments dtype"),
        ({"window_blend": "median"}, "window_blend must be one of constant, gaussian"),
        ({"window_overlap": 1.0}, r"window_overlap must be a number in \[0, 1\)"),
        ({"foreground_margin": -1}, "foreground_margin must be a whole number"),
        ({"resize": "stretch"}, "input resize 'stretch' needs a size"),
    ):
        with pytest.raises(ModelPackageError, match=message):
            parse_input_spec({**base, **bad}, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [SPLEEN, WHOLE_BODY])
def test_preprocessing_matches_monai_running_the_same_transforms(bundles: Dict[str, Path], data_dir: Path, name: str) -> None:
    """MONAI's own transforms, as the bundle's config lists them, on the real CT: the model input
    holds the same values where both grids sample the same points. (MONAI anchors the resampled
    grid on the first voxel, CTExplain centres it, a fraction of a voxel apart: values are compared
    by linear interpolation, so edges differ a little.)"""
    from monai import transforms as mt
    from scipy.ndimage import map_coordinates

    path = data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"
    spec = bundle_metadata(bundles[name]).input
    intensity = (
        [mt.ScaleIntensityRanged("image", -57, 164, 0, 1, clip=True)]
        if name == SPLEEN
        else [mt.NormalizeIntensityd("image", nonzero=True), mt.ScaleIntensityd("image", minv=-1.0, maxv=1.0)]
    )
    chain = mt.Compose([mt.LoadImaged("image", image_only=True), mt.EnsureChannelFirstd("image"), mt.Orientationd("image", "RAS"),
                        mt.Spacingd("image", spec.spacing, mode="bilinear"), *intensity])
    theirs = chain({"image": str(path)})["image"]
    ours = preprocess(Volume.from_sitk(sitk.ReadImage(str(path))), spec, crop=False)
    values, affine = theirs[0].numpy(), theirs.affine.numpy()
    index = np.stack(np.meshgrid(*[np.arange(s) for s in values.shape], indexing="ij"), -1).reshape(-1, 3)
    lps = (index @ affine[:3, :3].T + affine[:3, 3]) * np.array([-1.0, -1.0, 1.0])  # MONAI's RAS points in LPS
    grid = ours.grid
    at = ((lps - np.asarray(grid.origin)) @ np.asarray(grid.direction)) / np.asarray(grid.spacing)  # (i, j, k) on our grid
    inside = np.all((at >= 0) & (at <= np.asarray(grid.size) - 1), axis=1)
    assert inside.mean() > 0.97
    difference = np.abs(values.reshape(-1)[inside] - map_coordinates(ours.tensor[0].numpy(), at[inside][:, ::-1].T, order=1))
    assert difference.mean() < 0.01 and np.percentile(difference, 99) < 0.1
