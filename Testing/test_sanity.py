"""Model sanity check (cascading randomisation, Adebayo et al. 2018): Spearman with ties as SciPy
computes it, layers randomised top first without touching the model, the numbers recorded in
a shipped package reproduced, and a randomisation that does nothing (planted) caught."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from CTExplainLib.cli import main
from CTExplainLib.errors import ModelPackageError
from CTExplainLib.model_package import METADATA_FILE, load_package
from CTExplainLib.networks import build_network
from CTExplainLib.trust import sanity

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "CTExplain" / "Resources" / "Models"
DATA = ROOT.parent / "shared" / "data"
COVID_SLICE = DATA / "covid-infection-2d" / "train" / "Imgs" / "10.jpg"


def test_spearman_with_ties_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(6, 7)), 0)  # many equal zeros, as after a ReLU
    b = np.maximum(a + rng.normal(scale=0.5, size=a.shape), 0)
    assert sanity.spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert sanity.spearman(a, np.zeros_like(a)) == 0.0  # a constant map orders nothing


def test_cascade_randomises_top_layers_first_and_leaves_the_model_alone() -> None:
    network = build_network("CompactCNN", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}).eval()
    with torch.no_grad():  # as after training: norms away from their initial values
        for key, value in network.state_dict().items():
            if value.dtype.is_floating_point and ".1." in key:
                value.add_(torch.rand_like(value) + 0.1)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    names = [name for name, _ in sanity.layer_groups(network)]
    assert names == ["features.0.0", "features.1.0", "features.2.0", "features.3.0", "fc"]
    seen = []
    for name, randomised in sanity.cascade(network):
        changed = {k.rsplit(".", 1)[0] for k, v in randomised.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])}
        seen.append((name, changed))
    assert [name for name, _ in seen] == names[::-1]
    assert seen[0][1] == {"fc"}  # the top layer alone first
    assert {"features.3.0", "features.3.1", "fc"} <= seen[1][1]  # its norm goes with the conv
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())


@pytest.mark.slow
def test_recorded_numbers_are_reproduced_and_a_planted_no_op_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The covid package's recorded per-case correlations for slice 10 come out again; with a
    "randomisation" that changes nothing every correlation is 1 and the model fails."""
    model = load_package(MODELS / "covid-consolidation-2d")
    recorded = model.metadata.sanity_check
    assert recorded is not None
    column = [str(Path(c)) for c in recorded["cases"]].index(str(Path("../shared/data/covid-infection-2d/train/Imgs/10.jpg")))
    result = sanity.check_files(model, [COVID_SLICE], (1.0, 1.0, 1.0))
    assert [s.layer for s in result.steps] == [s["layer"] for s in recorded["steps"]]
    for step, stored in zip(result.steps, recorded["steps"]):
        assert step.spearman_mean == pytest.approx(stored["spearman_per_case"][column], abs=2e-3)

    monkeypatch.setattr(torch.nn.Conv2d, "reset_parameters", lambda self: None)
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    monkeypatch.setattr(torch.nn.BatchNorm2d, "reset_parameters", lambda self: None)
    monkeypatch.setattr(torch.nn.BatchNorm2d, "reset_running_stats", lambda self: None)
    planted = sanity.check_files(model, [COVID_SLICE], (1.0, 1.0, 1.0))
    assert all(s.spearman_mean == pytest.approx(1.0) for s in planted.steps)
    assert planted.verdict == sanity.FAILS


def test_shipped_classifiers_carry_a_sanity_check() -> None:
    verdicts = {}
    for name in ("head-ct-ich-findings", "chest-ct-4class", "covid-consolidation-2d", "lung-nodule-malignancy", "lung-nodule-characteristics"):
        record = load_package(MODELS / name).metadata.sanity_check
        assert record is not None and record["cases"] and record["steps"]
        verdicts[name] = record["verdict"]
    assert verdicts["covid-consolidation-2d"] == sanity.FAILS  # named in the README


def test_bad_sanity_check_field_is_refused(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    for file in (MODELS / "chest-ct-4class").iterdir():
        (package / file.name).write_bytes(file.read_bytes())
    data = json.loads((package / METADATA_FILE).read_text())
    data["sanity_check"]["steps"][0]["spearman_mean"] = 1.5
    (package / METADATA_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match="spearman_mean"):
        load_package(package)


def test_check_model_refuses_a_segmenter(capsys) -> None:
    assert main(["check-model", str(MODELS / "chest-ct-segmenter"), str(COVID_SLICE)]) == 2
    assert "no maps to check" in capsys.readouterr().err


def test_a_point_model_is_checked_on_nodule_crops_cut_as_at_a_point(capsys, data_dir: Path) -> None:
    """lung-nodule-malignancy's recorded correlations for one of its cases come out again when
    the crop is outlined at its centre by the segmenter; without a segmenter, one line says
    what is missing."""
    model = load_package(MODELS / "lung-nodule-malignancy")
    recorded = model.metadata.sanity_check
    case = data_dir / "lidc-nodules" / "image" / "LIDC-IDRI-0037_R_2.nii.gz"
    column = [Path(c).name for c in recorded["cases"]].index(case.name)
    result = sanity.check_files(model, [case], segmenter=load_package(MODELS / "lung-nodule-segmenter"))
    for step, stored in zip(result.steps, recorded["steps"]):
        assert step.spearman_mean == pytest.approx(stored["spearman_per_case"][column], abs=2e-3)
    assert abs(result.steps[0].spearman_mean) > 0.1  # this case keeps some order: a real number, not a flat map's 0

    assert main(["check-model", str(MODELS / "lung-nodule-malignancy"), str(case)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--segmenter" in error and len(error.splitlines()) == 1
