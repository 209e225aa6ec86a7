"""The model catalog: light to import, trained packages used once installed, demos standing in until then."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainLib import models_catalog
from CTExplainLib.discovery import case_name
from CTExplainLib.errors import ModelPackageError
from CTExplainLib.models_catalog import (
    CHEST_SAMPLE,
    DEMO_CLASSIFIER,
    DEMO_SEGMENTER,
    HEAD_SAMPLE,
    MODELS_PATH_VARIABLE,
    SAMPLES,
    locate_package,
    resolve_package,
    sample_models,
)
from CTExplainLib.package_files import METADATA_FILE

REPO = Path(__file__).resolve().parents[1]


def test_import_does_not_load_torch(tmp_path: Path) -> None:
    """The Slicer module fills its model selectors from the catalog before torch is installed."""
    code = (
        "import sys\n"
        "import CTExplainLib.models_catalog as catalog\n"
        "assert catalog.find_packages(), 'no packages found'\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'safetensors') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "CTExplain"), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "", f"importing the catalog imported {completed.stdout.strip()}"


def _package(folder: Path, name: str, task: str) -> Path:
    """A package folder as the catalog sees it (metadata only: the catalog never reads weights)."""
    folder.mkdir(parents=True)
    (folder / METADATA_FILE).write_text(json.dumps({"name": name, "task": task, "version": "1.0.0"}))
    return folder


@pytest.fixture
def search_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Search folders holding only the two demos; returns an extra folder given by CTEXPLAIN_MODELS."""
    shipped = tmp_path / "shipped"
    _package(shipped / DEMO_CLASSIFIER, DEMO_CLASSIFIER, "multilabel")
    _package(shipped / DEMO_SEGMENTER, DEMO_SEGMENTER, "segmentation")
    extra = tmp_path / "extra"
    extra.mkdir()
    monkeypatch.setattr(models_catalog, "SHIPPED_MODELS", shipped)
    monkeypatch.setattr(models_catalog, "USER_MODELS", tmp_path / "no-user-models")
    monkeypatch.setenv(MODELS_PATH_VARIABLE, str(extra))
    return extra


def test_missing_trained_packages_fall_back_to_the_demos_with_a_warning(search_folders: Path, caplog) -> None:
    shipped = models_catalog.SHIPPED_MODELS
    with caplog.at_level(logging.WARNING, logger=models_catalog.__name__):
        assert sample_models(CHEST_SAMPLE) == (shipped / DEMO_CLASSIFIER, shipped / DEMO_SEGMENTER)
        assert sample_models(HEAD_SAMPLE) == (shipped / DEMO_CLASSIFIER, None)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in (CHEST_SAMPLE.classifier, CHEST_SAMPLE.segmenter, HEAD_SAMPLE.classifier):
        assert any(name in message and "stand-in" in message for message in warned), (name, warned)


def test_installed_trained_package_is_used_without_warning(search_folders: Path, caplog) -> None:
    trained = _package(search_folders / HEAD_SAMPLE.classifier, HEAD_SAMPLE.classifier, "multilabel")
    with caplog.at_level(logging.WARNING, logger=models_catalog.__name__):
        assert sample_models(HEAD_SAMPLE) == (trained, None)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert locate_package(HEAD_SAMPLE.classifier) == (trained, None)
    # The chest sample's packages are still missing: they still fall back.
    assert locate_package(CHEST_SAMPLE.classifier) == (models_catalog.SHIPPED_MODELS / DEMO_CLASSIFIER, CHEST_SAMPLE.classifier)


def test_unknown_package_names_what_is_available(search_folders: Path) -> None:
    with pytest.raises(ModelPackageError) as raised:
        resolve_package("no-such-model")
    assert "no-such-model" in str(raised.value) and DEMO_CLASSIFIER in str(raised.value)
    models_catalog.SHIPPED_MODELS.joinpath(DEMO_CLASSIFIER, METADATA_FILE).unlink()
    (models_catalog.SHIPPED_MODELS / DEMO_CLASSIFIER).rmdir()
    with pytest.raises(ModelPackageError):  # no stand-in left either
        resolve_package(HEAD_SAMPLE.classifier)


def test_samples_are_shipped_and_their_models_resolve() -> None:
    assert len({s.name for s in SAMPLES}) == len(SAMPLES)
    for sample in SAMPLES:
        assert sample.path.is_file(), sample.path
        assert case_name(sample.path) == sample.name
        assert sample.citation
        classifier, segmenter = sample_models(sample)
        assert (classifier / METADATA_FILE).is_file()
        assert (segmenter is None) == (sample.segmenter is None)


def test_head_sample_is_hu_at_the_assumed_spacing() -> None:
    image = sitk.ReadImage(str(HEAD_SAMPLE.path))
    np.testing.assert_allclose(image.GetSpacing(), (0.35, 0.35, 5.0), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel())
    hu = sitk.GetArrayViewFromImage(image)
    assert hu.min() <= -900  # air, at the bone window's floor
    assert (hu > 1000).sum() > 10000  # skull
    brain = hu[15, 250:400, 250:400]
    assert 20 <= np.median(brain) <= 50


def test_segmenter_choice_none_in_any_case_else_the_default() -> None:
    from CTExplainLib.models_catalog import chosen_segmenter

    assert chosen_segmenter(None, "chest-ct-segmenter") == "chest-ct-segmenter"
    assert chosen_segmenter(None, None) is None  # a sample without one
    assert chosen_segmenter("None", "chest-ct-segmenter") is None
    assert chosen_segmenter("covid-infection-2d", None) == "covid-infection-2d"


def test_model_choices_split_by_task_with_none_last() -> None:
    from CTExplainLib.models_catalog import AUTOMATIC, SHIPPED_MODELS, model_choices

    classifiers, segmenters = model_choices()
    assert ("head-ct-ich-findings", str(SHIPPED_MODELS / "head-ct-ich-findings")) in classifiers
    assert ("chest-ct-segmenter", str(SHIPPED_MODELS / "chest-ct-segmenter")) in segmenters
    assert classifiers[0] == segmenters[0] == (AUTOMATIC, "")  # chosen per input (trust/choice.py)
    assert segmenters[-1] == ("None", "none")
    assert not {path for _, path in classifiers[1:]} & {path for _, path in segmenters[1:]}
