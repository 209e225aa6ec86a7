"""Faithfulness of maps (deletion / insertion against random orders): the batched curves equal a
plain per-step loop, the verdict follows the evidence on a model whose evidence is known, and on
real CT with the shipped models the real Grad-CAM beats a random map, the map of the same
network with randomised weights and the map shifted off its place (and stops doing so when the
order is planted the wrong way round)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from CTExplainLib.classify import classify_and_explain
from CTExplainLib.loading import load_volume
from CTExplainLib.model_package import LoadedModel, load_package
from CTExplainLib.trust import faithfulness
from CTExplainLib.trust.faithfulness import MODES, network_forward, random_ranks, volume_faithfulness
from CTExplainLib.trust.sanity import cascade, case_input

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "CTExplain" / "Resources" / "Models"
DATA = ROOT.parent / "shared" / "data"
HEAD_SAMPLE = ROOT / "CTExplain" / "Resources" / "Samples" / "head_ct_ich_050.nii.gz"


def tiny_cnn(spatial_dims: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
    return nn.Sequential(conv(2, 6, 3, padding=1), nn.ReLU(), conv(6, 6, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(6, classes)).eval()


def slow_curve(network: nn.Module, image: torch.Tensor, block_order: List[int], block_shape: Tuple[int, ...], block: int, steps: int,
               target: int, deletion: bool) -> List[float]:
    """One forward per step: the first k blocks of ``block_order`` (flat block indices) set to
    each channel's minimum (deletion), or the rest set to it (insertion)."""
    low = image.flatten(1).amin(dim=1)
    baseline = low.reshape((-1,) + (1,) * (image.ndim - 1)).expand_as(image)
    n = len(block_order)
    curve = []
    for s in range(steps + 1):
        chosen = np.zeros(image.shape[1:], dtype=bool)
        for flat in block_order[: int(round(s * n / steps))]:
            corner = np.unravel_index(flat, block_shape)
            chosen[tuple(slice(c * block, (c + 1) * block) for c in corner)] = True
        mask = torch.from_numpy(chosen)
        x = torch.where(mask, baseline, image) if deletion else torch.where(mask, image, baseline)
        with torch.no_grad():
            curve.append(float(torch.sigmoid(network(x[None]))[0, target]))
    return curve


def area(curve: List[float]) -> float:
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (18, 22)), (3, (9, 10, 11))])
def test_batched_curves_equal_a_per_step_loop(spatial_dims: int, shape: Tuple[int, ...]) -> None:
    """Every class's curves and areas, map and random orders, as a plain loop computes them
    (shapes not divisible by the block: edge blocks are partial)."""
    classes, mode = 3, MODES["fast"]
    network = tiny_cnn(spatial_dims, classes, seed=1)
    torch.manual_seed(2)
    image = torch.randn((2,) + shape)
    feature = tuple(max(1, s // 4) for s in shape)
    maps = torch.rand((classes,) + feature)
    inputs = image[:, None] if spatial_dims == 2 else image  # a 2D model sees one slice k = 0
    maps_in = maps[:, None] if spatial_dims == 2 else maps
    found = volume_faithfulness(network_forward(network, "multilabel", torch.device("cpu")), inputs, maps_in, range(classes),
                                spatial_dims, "fast", slices={c: [0] for c in range(classes)})
    block_shape = tuple(-(-s // mode.block) for s in shape)
    mode_name = "bilinear" if spatial_dims == 2 else "trilinear"
    randoms = [list(np.argsort(r.flatten().numpy())) for r in random_ranks(mode.seeds, block_shape)]  # maps below: no ties
    for c in range(classes):
        values = F.interpolate(maps[c][None, None], size=block_shape, mode=mode_name, align_corners=False).flatten().numpy()
        order = list(np.argsort(-values, kind="stable"))
        deletion = slow_curve(network, image, order, block_shape, mode.block, mode.steps, c, True)
        insertion = slow_curve(network, image, order, block_shape, mode.block, mode.steps, c, False)
        np.testing.assert_allclose(found[c].deletion_curve, deletion, atol=1e-5)
        np.testing.assert_allclose(found[c].insertion_curve, insertion, atol=1e-5)
        random_deletion = np.mean([area(slow_curve(network, image, o, block_shape, mode.block, mode.steps, c, True)) for o in randoms])
        random_insertion = np.mean([area(slow_curve(network, image, o, block_shape, mode.block, mode.steps, c, False)) for o in randoms])
        assert found[c].deletion_auc == pytest.approx(area(deletion), abs=1e-5)
        assert found[c].random_deletion_auc == pytest.approx(random_deletion, abs=1e-5)
        assert found[c].random_insertion_auc == pytest.approx(random_insertion, abs=1e-5)
        expected = ((random_deletion - area(deletion)) + (area(insertion) - random_insertion)) / 2
        assert found[c].score == pytest.approx(expected, abs=1e-5)


def test_deletion_curves_equal_quantus_pixel_flipping() -> None:
    """Quantus' PixelFlipping (Bach et al. 2015), the deletion curve of one sample and one class
    per call with the image's minimum ("black") as baseline, on a small 2D case: with one-pixel
    blocks our batched curves of every class are Quantus' point for point (Quantus reports the
    points after each step, not the unperturbed start)."""
    import quantus

    classes, steps, shape = 3, 8, (16, 16)
    convolutions = tiny_cnn(2, classes, seed=3)
    convolutions[0] = nn.Conv2d(1, 6, 3, padding=1)  # one channel, as Quantus perturbs all channels of a pixel alike
    network = nn.Sequential(convolutions, nn.Sigmoid()).eval()  # probabilities out: Quantus is told softmax=False
    torch.manual_seed(4)
    image = torch.randn((1,) + shape)
    maps = torch.rand((classes,) + shape)  # on the pixel grid, no ties
    forward = lambda batch: network(batch).detach()  # noqa: E731
    ranks = faithfulness.map_ranks(maps, shape)
    ours = faithfulness.perturbation_curves(forward, image, faithfulness.background(image[None], 2)[0], ranks, steps, 1, 64)[0]
    metric = quantus.PixelFlipping(features_in_step=image.numel() // steps, perturb_baseline="black", disable_warnings=True)
    for c in range(classes):
        theirs = metric(model=network, x_batch=image[None].numpy(), y_batch=np.array([c]), a_batch=maps[c][None, None].numpy(),
                        softmax=False, device="cpu", channel_first=True)
        np.testing.assert_allclose(ours[c, 1:, c].numpy(), np.asarray(theirs[0]), atol=1e-5)


class BoxEvidence(nn.Module):
    """Class 0's score is the mean of the input inside a box, class 1's the mean outside it."""

    def __init__(self, box: Tuple[slice, slice]) -> None:
        super().__init__()
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = torch.zeros(x.shape[-2:], dtype=torch.bool)
        inside[self.box] = True
        values = x[:, 0]
        score_in = values[:, inside].mean(dim=1)
        score_out = values[:, ~inside].mean(dim=1)
        return torch.stack([8 * (score_in - 0.5), 8 * (score_out - 0.5)], dim=1)


def test_verdict_follows_the_evidence() -> None:
    """A map on the box that makes the score is faithful; one beside it, or the box ranked
    last (the order reversed), is no better than random."""
    box = (slice(8, 20), slice(12, 24))
    network = BoxEvidence(box)
    image = torch.ones((1, 1, 32, 32))
    image[0, 0, 0, 0] = 0.0  # the background value (the channel's minimum) is 0
    on_box = torch.zeros((1, 32, 32))
    on_box[0][box] = 1.0
    beside = torch.roll(on_box, shifts=16, dims=2)
    forward = network_forward(network, "multilabel", torch.device("cpu"))

    def measured(map_: torch.Tensor) -> faithfulness.Faithfulness:
        maps = torch.stack([map_, torch.zeros_like(map_)])
        return volume_faithfulness(forward, image, maps, [0], 2, "fast", slices={0: [0]})[0]

    good, wrong_place, reversed_order = measured(on_box), measured(beside), measured(1.0 - on_box)
    assert good.verdict == faithfulness.FAITHFUL and good.score > 0.2
    assert wrong_place.verdict == faithfulness.NOT_BETTER and wrong_place.score < 0
    assert reversed_order.verdict == faithfulness.NOT_BETTER and reversed_order.score < 0
    assert good.deletion_curve[0] == pytest.approx(float(torch.sigmoid(torch.tensor(4.0))), abs=1e-6)  # the input's own score


# --- real CT, shipped models ----------------------------------------------------------------------

# (package, case, image spacing for 2D pictures)
REAL_CASES = [
    ("head-ct-ich-findings", HEAD_SAMPLE, None),
    ("chest-ct-4class", DATA / "chest-ct-4class" / "test" / "adenocarcinoma" / "0001.png", (1.0, 1.0, 1.0)),
    ("covid-consolidation-2d", DATA / "covid-infection-2d" / "train" / "Imgs" / "10.jpg", (1.0, 1.0, 1.0)),
]


def randomised(model: LoadedModel) -> LoadedModel:
    """The same network with every layer re-initialised (the sanity check's last step)."""
    network = None
    for _, network in cascade(model.network, seed=0):
        pass
    return LoadedModel(model.metadata, network, model.path)


def alternative_scores(package: str, case: Path, spacing: Optional[Tuple[float, float, float]], segmenter: Optional[str] = None) -> Dict[str, float]:
    """Scores of the top finding's real Grad-CAM and of three maps that should do worse, on the
    real map's key slice (2D models) or the whole input (3D): a random map, the randomised
    network's map, the real map shifted by half the image in-plane. A point model's case is a
    nodule crop, cut at its centre as check-model cuts it (``segmenter`` outlines the nodule)."""
    model = load_package(MODELS / package)
    cpu = torch.device("cpu")
    outliner = load_package(MODELS / segmenter) if segmenter else None
    model_input = case_input(model, load_volume(case, image_spacing=spacing), outliner, cpu)
    real = classify_and_explain(model, model_input, "gradcam", cpu)
    top = int(np.argmax(real.probabilities))
    maps = torch.from_numpy(real.maps)
    generator = torch.Generator().manual_seed(0)
    others = {
        "random map": torch.rand(maps.shape, generator=generator),
        "randomised network": torch.from_numpy(classify_and_explain(randomised(model), model_input, "gradcam", cpu).maps),
        "shifted": torch.roll(maps, shifts=(maps.shape[-2] // 2, maps.shape[-1] // 2), dims=(-2, -1)),
    }
    dims = model.metadata.input.spatial_dims
    slices = {top: faithfulness.key_slices(real.maps[top], 1)} if dims == 2 else None
    forward = network_forward(model.network, model.metadata.task, cpu)
    scores = {}
    for name, candidate in [("real", maps)] + list(others.items()):
        measured = volume_faithfulness(forward, model_input.tensor, candidate, [top], dims, "fast", slices=slices)
        scores[name] = measured[top].score
    return scores


def real_beats_the_others(scores: Dict[str, float]) -> bool:
    return all(scores["real"] > score for name, score in scores.items() if name != "real")


@pytest.mark.slow
@pytest.mark.parametrize("package, case, spacing", REAL_CASES, ids=[c[0] for c in REAL_CASES])
def test_real_gradcam_beats_random_randomised_and_shifted_maps(package: str, case: Path, spacing) -> None:
    scores = alternative_scores(package, case, spacing)
    assert real_beats_the_others(scores), scores


@pytest.mark.slow
def test_real_gradcam_beats_the_others_at_a_nodule() -> None:
    """The 3D point model on a test patient's malignant nodule, its crop cut as at a point."""
    case = DATA / "lidc-nodules" / "image" / "LIDC-IDRI-0058_R_1.nii.gz"
    scores = alternative_scores("lung-nodule-malignancy", case, None, "lung-nodule-segmenter")
    assert real_beats_the_others(scores), scores


@pytest.mark.slow
def test_ordering_fault_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted fault: the blocks ranked least important first. The real map then loses."""
    right = faithfulness.map_ranks
    monkeypatch.setattr(faithfulness, "map_ranks", lambda maps, shape: right(-maps, shape))
    package, case, spacing = REAL_CASES[1]
    scores = alternative_scores(package, case, spacing)
    assert not real_beats_the_others(scores), scores
    assert scores["real"] < 0


@pytest.mark.slow
def test_explain_reports_faithfulness_per_finding(tmp_path: Path, capsys) -> None:
    """result.json, the summary table and the montage's caption line; none with --faithfulness off."""
    from PIL import Image

    from CTExplainLib.cli import main
    from CTExplainLib.montage import TEXT_LINE_PX

    case = DATA / "chest-ct-4class" / "test" / "adenocarcinoma" / "0001.png"
    common = ["explain", str(case), "--model", str(MODELS / "chest-ct-4class"), "--segmenter", "none", "--spacing", "1", "1", "1",
              "--device", "cpu", "--no-progress"]
    heights = {}
    for mode in ("fast", "off"):
        assert main(common + ["--out", str(tmp_path / mode), "--faithfulness", mode]) == 0
        summary = capsys.readouterr().out
        (result,) = (tmp_path / mode).glob("*/result.json")  # the one case's folder
        record = json.loads(result.read_text())
        top = max(record["findings"], key=lambda f: f["probability"])
        heights[mode] = Image.open(result.parent / top["montage"]).size[1]
        if mode == "off":
            assert all("faithfulness" not in f for f in record["findings"])
            continue
        for finding in record["findings"]:
            measured = finding["faithfulness"]
            assert measured["mode"] == "fast" and measured["verdict"] in (faithfulness.FAITHFUL, faithfulness.NOT_BETTER)
            assert len(measured["deletion_curve"]) == MODES["fast"].steps + 1 and measured["slices"] == [0]
        assert f"{top['faithfulness']['verdict']} {top['faithfulness']['score']:+.3f}" in summary
    assert heights["fast"] == heights["off"] + TEXT_LINE_PX  # the caption line


def test_auto_mode_is_fast_for_slice_models_and_off_for_3d() -> None:
    assert faithfulness.resolve_mode("auto", 2) == "fast" and faithfulness.resolve_mode("auto", 3) == "off"
    assert faithfulness.resolve_mode("full", 3) == "full"
    assert faithfulness.resolve_mode("auto", 3, at_point=True) == "fast"  # a point model's input is a small crop
    assert faithfulness.resolve_mode("off", 3, at_point=True) == "off"
    with pytest.raises(ValueError, match="faithfulness must be one of"):
        faithfulness.resolve_mode("quick", 2)
