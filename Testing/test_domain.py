"""The domain check (trust/domain.py) and the model choice (trust/choice.py) on real CT.

Each acceptance input of the trust issue gets its warning (and a refusal with --strict), and
the inputs each shipped model was made for get none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib.cli import main
from CTExplainLib.errors import ModelPackageError
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import Domain, InputSpec, parse_domain, parse_metadata
from CTExplainLib.models_catalog import (
    CHEST_CLASSIFIER,
    CHEST_SAMPLE,
    CHEST_SEGMENTER,
    HEAD_CLASSIFIER,
    HEAD_SAMPLE,
    find_packages,
    resolve_package,
)
from CTExplainLib.package_files import METADATA_FILE
from CTExplainLib.resample import resample_volume
from CTExplainLib.trust.choice import choose_models, read_candidates
from CTExplainLib.trust.domain import DomainError, DomainReport, check_domain, enforce, profile_input
from CTExplainLib.volume import Grid, Volume

DISPLAY_SCREENSHOT = Path("chest-ct-4class/test/adenocarcinoma/0001.png")


def domain_of(name: str) -> Domain:
    folder = resolve_package(name)
    return parse_metadata(json.loads((folder / METADATA_FILE).read_text()), folder).training_domain


def warnings_for(volume: Volume, *models: str) -> List[str]:
    """The domain check's warnings for ``volume`` under each shipped model named."""
    profile = profile_input(volume)
    report = DomainReport(profile, [check_domain(profile, name, domain_of(name)) for name in models])
    return report.warnings


@pytest.fixture(scope="module")
def volumes(data_dir: Path) -> Dict[str, Volume]:
    chest = load_volume(CHEST_SAMPLE.path)
    # A chest CT at 2.7 x 2.7 x 5 mm: the chest sample resampled.
    size = [int(n * s / t) for n, s, t in zip(chest.grid.size, chest.grid.spacing, (2.7, 2.7, 5.0))]
    coarse = Grid(size, (2.7, 2.7, 5.0), chest.grid.origin, chest.grid.direction)
    return {
        "chest": chest,
        "chest_2.7x2.7x5": Volume(resample_volume(chest, coarse, "linear", -1024.0).array, coarse, metadata=dict(chest.metadata)),
        "head": load_volume(HEAD_SAMPLE.path),
        "cthead": load_volume(data_dir / "slicer-cthead"),
        "label_map": load_volume(data_dir / "totalsegmentator" / "example_seg.nii.gz"),
        "screenshot": load_volume(data_dir / DISPLAY_SCREENSHOT, image_spacing=(1.0, 1.0, 1.0)),
    }


def test_each_acceptance_input_gets_its_warning(volumes: Dict[str, Volume]) -> None:
    raw = warnings_for(volumes["cthead"], CHEST_CLASSIFIER, CHEST_SEGMENTER)
    assert any("raw scanner values, not Hounsfield units" in w for w in raw), raw
    assert any("looks like head CT" in w and "chest-ct-segmenter was made for chest and abdomen CT" in w for w in raw), raw
    ich = warnings_for(volumes["head"], CHEST_SEGMENTER)
    assert ich[0] == ("the input looks like head CT (from the image: head in 13 of 25 slices looked at); "
                      "chest-ct-segmenter was made for chest and abdomen CT"), ich
    chest_to_head = warnings_for(volumes["chest"], HEAD_CLASSIFIER)
    assert any("looks like chest and abdomen CT" in w and "head-ct-ich-findings was made for head CT" in w for w in chest_to_head), chest_to_head
    label_map = warnings_for(volumes["label_map"], CHEST_SEGMENTER)
    assert any("a label map or mask, not a CT" in w for w in label_map), label_map
    screenshot = warnings_for(volumes["screenshot"], CHEST_SEGMENTER, HEAD_CLASSIFIER)
    assert any("8-bit display grey levels (no HU); chest-ct-segmenter was trained on CT in Hounsfield units" in w for w in screenshot), screenshot
    # Display-trained models on CT in HU: said so (issue 15, point 4).
    assert any("chest-ct-4class was trained on 8-bit display screenshots" in w for w in warnings_for(volumes["chest"], CHEST_CLASSIFIER))


def test_no_warning_for_the_inputs_each_model_was_made_for(volumes: Dict[str, Volume]) -> None:
    assert warnings_for(volumes["chest"], CHEST_SEGMENTER) == []
    assert warnings_for(volumes["chest_2.7x2.7x5"], CHEST_SEGMENTER) == []
    assert warnings_for(volumes["head"], HEAD_CLASSIFIER) == []
    assert warnings_for(volumes["screenshot"], CHEST_CLASSIFIER) == []  # a screenshot for the screenshot model


@pytest.mark.slow
def test_no_warning_on_lidc_and_its_region_from_dicom(data_dir: Path) -> None:
    lidc = load_volume(data_dir / "lidc-idri-0001")
    profile = profile_input(lidc)
    assert profile.regions == ("chest",) and profile.region_detail == "DICOM BodyPartExamined 'CHEST'"
    assert warnings_for(lidc, CHEST_SEGMENTER) == []


def test_planted_faults_are_caught(volumes: Dict[str, Volume]) -> None:
    head = volumes["head"]
    assert profile_input(head).intensity == "hounsfield"
    unrescaled = head.with_array((head.array.astype(np.int32) + 1024).astype(np.int16), source="planted")
    assert profile_input(unrescaled).intensity == "raw"  # the intercept left out: no air near -1000
    assert profile_input(unrescaled).regions == ("head",)  # still a head, read as HU + 1024
    # Absurd geometry is refused whatever the model; slices 30 mm apart are a warning.
    tiny = Volume(head.array[:3, :8, :8].copy(), Grid((8, 8, 3), (0.35, 0.35, 5.0), (0, 0, 0)), metadata={"source": "tiny"})
    assert "too few to be a CT" in profile_input(tiny).refusals[0]
    flat = Volume(head.array.copy(), Grid(head.grid.size, (0.35, 0.0, 5.0), (0, 0, 0)), metadata={"source": "flat"})
    assert "no valid voxel spacing" in profile_input(flat).refusals[0]
    gaps = Volume(head.array.copy(), Grid(head.grid.size, (0.35, 0.35, 30.0), (0, 0, 0)), metadata={"source": "gaps"})
    assert any("30 mm apart" in w for w in profile_input(gaps).warnings)
    with pytest.raises(DomainError, match="tiny: is an image of 8 x 8 x 3 voxels"):
        enforce(DomainReport(profile_input(tiny), []), strict=False)


@pytest.mark.parametrize(
    "case, args, problem",
    [
        ("cthead", ["slicer-cthead", "--model", CHEST_CLASSIFIER], "raw scanner values"),
        ("ich", [str(HEAD_SAMPLE.path), "--model", CHEST_CLASSIFIER, "--segmenter", CHEST_SEGMENTER], "looks like head CT"),
        ("chest", [str(CHEST_SAMPLE.path), "--model", HEAD_CLASSIFIER, "--segmenter", "none"], "was made for head CT"),
        ("labels", ["totalsegmentator/example_seg.nii.gz", "--model", CHEST_CLASSIFIER, "--segmenter", "none"], "label map"),
        ("png", [str(DISPLAY_SCREENSHOT), "--model", HEAD_CLASSIFIER, "--segmenter", "none", "--spacing", "1", "1", "1"], "display grey levels"),
    ],
)
def test_strict_refuses_with_one_line(case: str, args: List[str], problem: str, data_dir: Path, tmp_path: Path, capsys) -> None:
    inputs = [str(data_dir / args[0]), *args[1:]]  # the input: in ../shared/data unless absolute
    status = main(["explain", *inputs, "--out", str(tmp_path), "--strict", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, err
    assert inputs[0] in errors[0] and "refused (--strict)" in errors[0] and problem in errors[0], errors[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_choice_fits_the_input(volumes: Dict[str, Volume], data_dir: Path) -> None:
    candidates = read_candidates(find_packages())
    head = choose_models(profile_input(volumes["head"]), candidates)
    assert (head.classifier.name, head.segmenter) == (HEAD_CLASSIFIER, None)
    assert "no installed segmenter fits" in head.reasons[1]
    assert "lung-nodule-segmenter: runs at a point" in head.reasons[1]  # never chosen for a whole CT
    chest = choose_models(profile_input(volumes["chest"]), candidates)
    assert (chest.classifier.name, chest.segmenter.name) == (CHEST_CLASSIFIER, CHEST_SEGMENTER), chest.reasons
    assert "trained on 8-bit display screenshots" in chest.reasons[0]  # said when it is chosen
    with pytest.raises(DomainError, match="no installed classifier fits this input .*a label map"):
        choose_models(profile_input(volumes["label_map"]), candidates)
    # An abdomen-only crop (the chest sample below its lung bases): no classifier was made for it.
    chest_ct = volumes["chest"]
    crop = Volume(chest_ct.array[:80].copy(), chest_ct.grid.slab(0, 80), metadata=dict(chest_ct.metadata))
    profile = profile_input(crop)
    assert profile.regions == ("abdomen",), profile.region_detail
    with pytest.raises(DomainError, match="no installed classifier fits this input .*made for (head|chest) CT, the input is abdomen CT"):
        choose_models(profile, candidates)


@pytest.mark.slow
def test_explain_without_model_picks_the_head_model_and_says_why(tmp_path: Path, data_dir: Path, capsys) -> None:
    label_map = data_dir / "totalsegmentator" / "example_seg.nii.gz"
    status = main(["explain", str(HEAD_SAMPLE.path), str(label_map), "--out", str(tmp_path), "--device", "cpu", "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 2  # the label map fits no model
    record = json.loads((tmp_path / "head_ct_ich_050" / "result.json").read_text())
    assert record["classifier"]["name"] == HEAD_CLASSIFIER and record["segmenter"] is None
    assert record["model_choice"]["classifier"] == HEAD_CLASSIFIER and "the input is head CT" in record["model_choice"]["why"][0]
    assert record["warnings"] == [] and record["domain"]["input"]["regions"] == ["head"]
    assert "models for head_ct_ich_050: head-ct-ich-findings + no segmenter" in err
    assert f"error: {label_map}: no installed classifier fits this input" in err
    assert not (tmp_path / "example_seg").exists()


def test_domain_metadata_is_validated_and_kept(tmp_path: Path) -> None:
    spec = InputSpec(2, [], intensity="display")
    with pytest.raises(ModelPackageError, match="regions must be a non-empty list"):
        parse_domain({"regions": ["torso"], "intensity": "display"}, spec, tmp_path)
    with pytest.raises(ModelPackageError, match="contradicts the input spec"):
        parse_domain({"regions": ["chest"], "intensity": "hounsfield"}, spec, tmp_path)
    with pytest.raises(ModelPackageError, match=r"\[min, max\]"):
        parse_domain({"regions": ["chest"], "intensity": "display", "field_of_view_mm": [300]}, spec, tmp_path)
    assert parse_domain(None, spec, tmp_path) == Domain(intensity="display", stated=False)
    for info in find_packages():  # every shipped package states its domain; the display-trained say so
        data = json.loads((info.path / METADATA_FILE).read_text())
        domain = parse_metadata(data, info.path).training_domain
        assert domain.stated and domain.regions, info.name
        if domain.intensity == "display":
            assert "8-bit display images" in data["provenance"].get("metrics_measured_on", "") or info.untrained, info.name
        metadata = parse_metadata(data, info.path)
        assert parse_metadata(json.loads(json.dumps(metadata.to_json())), info.path).domain == metadata.domain


def test_recipes_state_the_domain_their_packages_ship_with() -> None:
    """Retraining keeps the domain: each recipe's, validated as the export validates it, is its package's."""
    from CTExplainTraining.config import make_config, read_recipe

    recipes = sorted((Path(__file__).resolve().parents[1] / "CTExplainTraining" / "recipes").glob("*.json"))
    shipped = {info.name for info in find_packages()}
    compared = set()
    for recipe in recipes:
        config = make_config(read_recipe(recipe))
        domain = config.package_domain()
        assert domain is not None and domain.stated, recipe.name
        shipped_version = json.loads((resolve_package(config.name) / METADATA_FILE).read_text())["version"] if config.name in shipped else None
        if shipped_version == config.version:  # the recipe of the shipped version (not of an earlier stage)
            assert domain == domain_of(config.name), recipe.name
            compared.add(config.name)
    assert {HEAD_CLASSIFIER, CHEST_CLASSIFIER, CHEST_SEGMENTER, "covid-infection-2d", "covid-consolidation-2d"} <= compared
