"""``ctexplain-train`` end to end on real CT (8 CT-ICH patients): the package it exports loads
in the core and runs in ``ctexplain explain``; training saw exactly the core's preprocessing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from CTExplainLib.cli import main as explain_main
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import load_package
from CTExplainLib.preprocess import preprocess
from CTExplainTraining.cli import EXIT_BAD_INPUT, main as train_main
from CTExplainTraining.config import make_config
from CTExplainTraining.data import IMAGE, PreprocessedCases
from CTExplainTraining.run import load_manifest

from training_fixtures import tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def trained(ct_ich_small: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    recipe = write_recipe(out / "recipe.json", tiny_recipe(ct_ich_small / "slices.csv", out / "run"))
    assert train_main(["--config", str(recipe)]) == 0
    return out / "run"


def test_the_exported_package_loads_in_the_core_with_the_run_in_its_metadata(trained: Path) -> None:
    model = load_package(trained / "model")
    metadata = model.metadata
    assert metadata.class_names == ["any_hemorrhage", "skull_fracture"]
    assert metadata.task == "multilabel" and not metadata.untrained
    assert [(c.name, c.level, c.width) for c in metadata.input.channels] == [("brain", 40.0, 120.0), ("bone", 700.0, 3200.0)]
    assert metadata.input.spacing == (7.0, 7.0) and metadata.input.size == (32, 32)
    assert metadata.provenance["training_data"] == "8 CT-ICH patients (test)"
    validation = metadata.provenance["metrics"]["validation"]
    assert set(validation["per_class"]) == {"any_hemorrhage", "skull_fracture"}
    assert metadata.provenance["data"]["validation"]["patients"] == 2


def test_log_report_and_checkpoint(trained: Path) -> None:
    with open(trained / "fit" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 <= float(row["data_fraction"]) <= 1.0
        assert float(row["optimizer_steps"]) == 3
        assert "val_auc_macro" in row and "val_loss" in row
    html = (trained / "report.html").read_text()
    assert "any_hemorrhage" in html and "data:image/png;base64," in html
    assert "Sanity check of the maps" in html  # cascading randomisation of the exported classifier
    sanity = json.loads((trained / "summary.json").read_text())["sanity_check"]
    assert sanity["steps"] and all(-1.0 <= step["spearman_mean"] <= 1.0 for step in sanity["steps"])
    assert (trained / "fit" / "checkpoint.pt").exists()
    # The same scalars in TensorBoard (installed with the [train] extra), read back by its own reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "fit" / "tensorboard"))
    events.Reload()
    assert {"train_loss", "val_auc_macro", "data_fraction"} <= set(events.Tags()["scalars"])
    logged = events.Scalars("train_loss")
    assert [e.step for e in logged] == [int(float(r["epoch"])) for r in rows]
    assert [e.value for e in logged] == pytest.approx([float(r["train_loss"]) for r in rows], rel=1e-6)


def test_resume_continues_from_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    recipe = json.loads((trained.parent / "recipe.json").read_text())
    recipe["epochs"] = 3
    path = write_recipe(tmp_path / "recipe.json", recipe)
    before = (trained / "fit" / "log.csv").read_text().splitlines()
    assert train_main(["--config", str(path), "--resume"]) == 0
    after = (trained / "fit" / "log.csv").read_text().splitlines()
    assert after[: len(before)] == before  # epochs 1-2 were not trained again
    assert len(after) == len(before) + 1


def test_training_input_is_exactly_the_core_preprocessing(trained: Path, ct_ich_small: Path) -> None:
    """One preprocessing definition: what the network trained on is what inference feeds it."""
    recipe = json.loads((trained.parent / "recipe.json").read_text())
    config = make_config({**recipe, "cache": "none"})
    manifest = load_manifest(config)
    cases = PreprocessedCases(config, manifest.examples)
    image = manifest.examples[0].image
    model = load_package(trained / "model")
    expected = preprocess(load_volume(image), model.metadata.input).tensor
    assert torch.equal(cases.case(image)[IMAGE], expected)


def test_the_package_runs_in_ctexplain_explain(trained: Path, ct_ich_small: Path, tmp_path: Path) -> None:
    volume = ct_ich_small / "volumes" / "050.nii.gz"
    status = explain_main(["explain", str(volume), "--model", str(trained / "model"), "--segmenter", "none", "--out", str(tmp_path), "--no-progress"])
    assert status == 0
    result = json.loads(next(tmp_path.glob("*/result.json")).read_text())
    probabilities = result["probabilities"] if "probabilities" in result else result["findings"]
    assert len(probabilities) == 2


def test_a_bad_manifest_stops_before_training(ct_ich_small: Path, tmp_path: Path) -> None:
    rows = (ct_ich_small / "patients.csv").read_text().splitlines()
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join(rows + ["volumes/999.nii.gz,999,1,0,0,1"]).replace("volumes/", str(ct_ich_small / "volumes") + "/"))
    recipe = tiny_recipe(broken, tmp_path / "run", spatial_dims=3, size=[32, 32, 8], spacing=[7.0, 7.0, 5.0])
    assert train_main(["--config", str(write_recipe(tmp_path / "r.json", recipe))]) == EXIT_BAD_INPUT
    assert not (tmp_path / "run").exists()


def test_a_2_5d_training_slice_is_the_core_s_slice_with_its_neighbours(ct_ich_small: Path, tmp_path: Path) -> None:
    """slice_context: training and validation take neighbouring slices exactly as the core does."""
    from CTExplainTraining.data import Item, TrainingItems
    from CTExplainTraining.validate import _forward_slices

    config = make_config({**tiny_recipe(ct_ich_small / "slices.csv", tmp_path / "run"), "cache": "none", "augment": False, "slice_context": 1})
    manifest = load_manifest(config)
    cases = PreprocessedCases(config, manifest.examples)
    image = manifest.examples[0].image
    core = preprocess(load_volume(image), config.input_spec()).slices()
    depth = core.shape[0]
    items = TrainingItems(config, cases, [Item(image, k, manifest.examples[0].target) for k in (0, 5, depth - 1)], train=False)
    for n, k in enumerate((0, 5, depth - 1)):
        assert torch.equal(items[n][IMAGE], core[k])
    network = torch.nn.Conv2d(6, 1, 1)  # any network: validation must see the same 6 channels
    with torch.no_grad():
        expected = network(core).mean(dim=(1, 2, 3))
        seen = _forward_slices(lambda x: network(x).mean(dim=(1, 2, 3))[:, None], cases.case(image)[IMAGE], 1, torch.device("cpu"))[:, 0]
    assert torch.allclose(seen, expected)


def test_init_from_starts_from_a_package_and_refuses_one_of_other_classes(trained: Path, ct_ich_small: Path, tmp_path: Path) -> None:
    from CTExplainTraining.engine import build_model
    from CTExplainTraining.manifest import ManifestError

    package = load_package(trained / "model")
    config = make_config(dict(tiny_recipe(ct_ich_small / "slices.csv", tmp_path / "again"), init_from=str(trained / "model")))
    manifest = load_manifest(config)
    started = build_model(config, manifest).state_dict()
    assert all(torch.equal(started[k], v) for k, v in package.network.state_dict().items())
    fresh = build_model(make_config(tiny_recipe(ct_ich_small / "slices.csv", tmp_path / "fresh")), manifest).state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in package.network.state_dict().items())
    manifest.classes = list(reversed(manifest.classes))  # a package of other classes
    with pytest.raises(ManifestError, match="init_from"):
        build_model(config, manifest)
