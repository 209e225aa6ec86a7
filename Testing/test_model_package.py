"""Model packages: round trip, refusal of unsafe or inconsistent packages, MONAI bundles."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from CTExplainLib.demo_models import demo_classifier, demo_segmenter, untrained_package
from CTExplainLib.errors import ModelPackageError
from CTExplainLib.model_package import METADATA_FILE, WEIGHTS_FILE, ChannelSpec, InputSpec, load_package
from CTExplainLib.networks import build_network


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_classifier(tmp_path_factory.mktemp("pkg") / "classifier")


def edit_metadata(source: Path, target: Path, **changes) -> Path:
    shutil.copytree(source, target)
    data = json.loads((target / METADATA_FILE).read_text())
    data.update(changes)
    (target / METADATA_FILE).write_text(json.dumps(data))
    return target


def test_round_trip_gives_the_same_network(classifier_dir: Path) -> None:
    model = load_package(classifier_dir)
    assert model.metadata.untrained and model.metadata.task == "multilabel"
    assert model.metadata.class_names == ["demo finding A", "demo finding B", "demo finding C"]
    assert not model.network.training
    torch.manual_seed(0)
    rebuilt = build_network(model.metadata.network, model.metadata.network_kwargs)  # same seed as the package
    x = torch.rand(1, 2, 32, 32, 16)
    with torch.no_grad():
        assert torch.allclose(model.network(x), rebuilt.eval()(x), atol=1e-6)


def test_segmenter_package(tmp_path: Path) -> None:
    model = load_package(demo_segmenter(tmp_path / "seg"))
    assert model.metadata.task == "segmentation"
    assert model.metadata.class_names[0] == "background"


def test_pickle_is_refused_without_being_loaded(classifier_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "pickled"
    shutil.copytree(classifier_dir, target)
    (target / WEIGHTS_FILE).unlink()

    class Bomb:
        def __reduce__(self):
            return (Path("never-created").write_text, ("unpickled!",))

    (target / "model.pt").write_bytes(pickle.dumps({"state": Bomb()}))
    with pytest.raises(ModelPackageError, match="pickle"):
        load_package(target)
    assert not Path("never-created").exists()


def test_weights_that_do_not_match_the_network(classifier_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "mismatch"
    shutil.copytree(classifier_dir, target)
    state = {k: v for k, v in load_package(classifier_dir).network.state_dict().items()}
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    save_file(state, str(target / WEIGHTS_FILE))
    with pytest.raises(ModelPackageError, match="wrong shape") as error:
        load_package(target)
    assert str(target) in str(error.value)


def test_network_outside_the_registry(classifier_dir: Path, tmp_path: Path) -> None:
    target = edit_metadata(classifier_dir, tmp_path / "evil", network="subprocess.Popen")
    with pytest.raises(ModelPackageError, match="subprocess.Popen"):
        load_package(target)


def test_class_count_must_match_outputs(classifier_dir: Path, tmp_path: Path) -> None:
    data = json.loads((classifier_dir / METADATA_FILE).read_text())
    target = edit_metadata(classifier_dir, tmp_path / "classes", classes=data["classes"][:2])
    with pytest.raises(ModelPackageError, match="3 outputs but metadata lists 2"):
        load_package(target)


@pytest.mark.parametrize(
    "field,value,words",
    [("task", "regression", "task must be"), ("format", "other/9", "unknown package format"), ("input", {"spatial_dims": 4, "channels": []}, "spatial_dims")],
)
def test_malformed_metadata(field: str, value, words: str, classifier_dir: Path, tmp_path: Path) -> None:
    target = edit_metadata(classifier_dir, tmp_path / field, **{field: value})
    with pytest.raises(ModelPackageError, match=words):
        load_package(target)


def test_bad_orientation_code(classifier_dir: Path, tmp_path: Path) -> None:
    data = json.loads((classifier_dir / METADATA_FILE).read_text())
    data["input"]["orientation"] = "LLS"
    target = edit_metadata(classifier_dir, tmp_path / "orient", input=data["input"])
    with pytest.raises(ModelPackageError, match="orientation"):
        load_package(target)


def test_input_normalisation_is_read_and_checked(classifier_dir: Path, tmp_path: Path) -> None:
    assert load_package(classifier_dir).metadata.input.normalise == "none"  # packages without the key
    data = json.loads((classifier_dir / METADATA_FILE).read_text())
    data["input"]["normalise"] = "image"
    assert load_package(edit_metadata(classifier_dir, tmp_path / "image", input=data["input"])).metadata.input.normalise == "image"
    data["input"]["normalise"] = "zscore"
    with pytest.raises(ModelPackageError, match="normalise must be one of none, image, histogram"):
        load_package(edit_metadata(classifier_dir, tmp_path / "bad", input=data["input"]))


def test_body_only_and_fit_body_are_read_and_checked(classifier_dir: Path, tmp_path: Path) -> None:
    assert load_package(classifier_dir).metadata.input.body_only is False  # packages without the key
    data = json.loads((classifier_dir / METADATA_FILE).read_text())
    data["input"].update(body_only=True, resize="fit_body", size=data["input"]["size"] or [32, 32, 32][: data["input"]["spatial_dims"]])
    spec = load_package(edit_metadata(classifier_dir, tmp_path / "body", input=data["input"])).metadata.input
    assert spec.body_only is True and spec.resize == "fit_body"
    data["input"]["body_only"] = "yes"
    with pytest.raises(ModelPackageError, match="body_only must be true or false"):
        load_package(edit_metadata(classifier_dir, tmp_path / "bad", input=data["input"]))
    data["input"].update(body_only=False, size=None)
    with pytest.raises(ModelPackageError, match="'fit_body' needs a size"):
        load_package(edit_metadata(classifier_dir, tmp_path / "nosize", input=data["input"]))


def make_bundle(folder: Path, weights_only: bool = True) -> Path:
    network_def = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(
        json.dumps(
            {
                "name": "Spleen CT segmentation (test)",
                "version": "0.1.0",
                "network_data_format": {
                    "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [96, 96, 96]}},
                    "outputs": {"pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}},
                },
            }
        )
    )
    inference = {
        "network_def": network_def,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
                {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": True},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    network = build_network("UNet", {k: v for k, v in network_def.items() if k != "_target_"})
    torch.save(network.state_dict(), str(folder / "models" / "model.pt"))
    return folder


def test_monai_bundle_is_read(tmp_path: Path) -> None:
    model = load_package(make_bundle(tmp_path / "bundle"))
    spec = model.metadata.input
    assert model.metadata.task == "segmentation"
    assert model.metadata.class_names == ["background", "spleen"]
    assert spec.orientation == "RAS" and spec.spacing == (1.5, 1.5, 2.0) and spec.size == (96, 96, 96)
    assert spec.channels[0].level == pytest.approx(53.5) and spec.channels[0].width == pytest.approx(221)


def test_bundle_with_arbitrary_pickle_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")

    class Payload:
        def __reduce__(self):
            return (Path(str(tmp_path / "pwned")).write_text, ("x",))

    (bundle / "models" / "model.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelPackageError, match="refused to unpickle"):
        load_package(bundle)
    assert not (tmp_path / "pwned").exists()


def test_untrained_package_of_each_spatial_dim(tmp_path: Path) -> None:
    spec = InputSpec(2, [ChannelSpec("soft", 40, 400)], (0.8, 0.8), (64, 64), "LPS")
    path = untrained_package(tmp_path / "two_d", "two-d", "multiclass", "CompactCNN", ["a", "b", "c", "d"], spec)
    model = load_package(path)
    assert model.metadata.input.spatial_dims == 2
    with torch.no_grad():
        assert tuple(model.network(torch.rand(5, 1, 64, 64)).shape) == (5, 4)


def test_segment_max_parts_are_read_and_checked(tmp_path: Path) -> None:
    segmenter = demo_segmenter(tmp_path / "seg")
    assert all(c.max_parts is None for c in load_package(segmenter).metadata.classes)  # packages without the key
    data = json.loads((segmenter / METADATA_FILE).read_text())
    data["classes"][1]["max_parts"] = 2
    assert load_package(edit_metadata(segmenter, tmp_path / "two", classes=data["classes"])).metadata.classes[1].max_parts == 2
    for bad in (0, "2", True, 1.5):
        data["classes"][1]["max_parts"] = bad
        with pytest.raises(ModelPackageError, match=r"seg.*max_parts must be a whole number of at least 1"):
            load_package(edit_metadata(segmenter, tmp_path / f"bad{bad}", classes=data["classes"]))
    data["classes"][1]["max_parts"] = 2
    names = [c["name"] for c in data["classes"]]
    data["classes"][1]["not_below"] = names[2]
    assert load_package(edit_metadata(segmenter, tmp_path / "below", classes=data["classes"])).metadata.classes[1].not_below == names[2]
    for bad in ("nothing", names[1], names[0]):  # unknown, itself, the background
        data["classes"][1]["not_below"] = bad
        with pytest.raises(ModelPackageError, match=r"not_below must name another of its segments"):
            load_package(edit_metadata(segmenter, tmp_path / f"below-{bad}", classes=data["classes"]))


def test_max_parts_on_a_classifier_is_refused(classifier_dir: Path, tmp_path: Path) -> None:
    data = json.loads((classifier_dir / METADATA_FILE).read_text())
    data["classes"][0]["max_parts"] = 1
    with pytest.raises(ModelPackageError, match="max_parts and not_below apply to segments"):
        load_package(edit_metadata(classifier_dir, tmp_path / "cls", classes=data["classes"]))


def test_slice_context_and_volume_score_are_read_and_checked(classifier_dir: Path, tmp_path: Path) -> None:
    assert load_package(classifier_dir).metadata.input.slice_context == 0  # packages without the key
    data = json.loads((classifier_dir / METADATA_FILE).read_text())
    assert data["input"]["spatial_dims"] == 3
    data["input"]["slice_context"] = 1
    with pytest.raises(ModelPackageError, match="slice_context applies to 2D models only"):
        load_package(edit_metadata(classifier_dir, tmp_path / "ctx3d", input=data["input"]))
    data["input"].update(spatial_dims=2, slice_context=-1, spacing=None, size=None)
    with pytest.raises(ModelPackageError, match="slice_context must be a whole number of at least 0"):
        load_package(edit_metadata(classifier_dir, tmp_path / "ctxneg", input=data["input"]))
    assert load_package(edit_metadata(classifier_dir, tmp_path / "nor", volume_score="noisy_or")).metadata.volume_score == "noisy_or"
    with pytest.raises(ModelPackageError, match="volume_score must be one of max, topk_mean, noisy_or"):
        load_package(edit_metadata(classifier_dir, tmp_path / "mean", volume_score="mean"))
