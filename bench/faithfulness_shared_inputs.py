"""Could a cheaper measure, with network inputs shared by every class, meet the cost goal of
at most 10 forward passes for 18 findings (README "Trust")? The deletion and insertion curves
need each finding's own perturbed inputs; two measures whose inputs every class shares were
tried on the 16 separation cases of bench/faithfulness_separation.py (same models, cases, top
finding, and the same three worse maps):

* ``masks``: faithfulness correlation (Bhatt et al. 2020; Quantus' FaithfulnessCorrelation):
  12 random masks, each removing every cell of a grid of at most 8 per axis with probability
  0.25 (to the model's background value); per class, Pearson's r between the map mass a mask
  removes and the probability it costs. 12 inputs: about 8 forward passes at the measured
  0.66 forward per batched input on a 3D model.
* ``regions``: one input per region of a 4 x 3 grid (in-plane; all slices of a 3D crop), that
  region removed; r between each region's map mass and its cost. 12 inputs.

Each score is taken relative to the median r of 50 random maps on the map's own grid (free:
the same inputs). Prints, per measure (and per mask seed for ``masks``), on how many of the 16
cases the real map scores above all three worse maps.

    PYTHONPATH=CTExplain:. .venv/bin/python bench/faithfulness_shared_inputs.py
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))
sys.path.insert(0, str(REPO / "bench"))

from faithfulness_separation import separation_cases  # noqa: E402
from test_faithfulness import MODELS, case_input, randomised  # noqa: E402

from CTExplainLib.classify import classify_and_explain  # noqa: E402
from CTExplainLib.loading import load_volume  # noqa: E402
from CTExplainLib.model_package import load_package  # noqa: E402
from CTExplainLib.trust.faithfulness import background, key_slices, network_forward  # noqa: E402

INPUTS = 12
NULL_MAPS = 50


def mask_sets(spatial: tuple, seed: int) -> Dict[str, torch.Tensor]:
    """(inputs, *cells) boolean masks, True = removed."""
    cells = tuple(min(s, 8) for s in spatial)
    random = torch.rand((INPUTS,) + cells, generator=torch.Generator().manual_seed(seed)) < 0.25
    grid = (4, 3) if len(spatial) == 2 else (1, 4, 3)  # 3D: (k, j, i), all slices
    regions = torch.eye(INPUTS, dtype=torch.bool).reshape((INPUTS,) + grid)
    return {f"masks_seed{seed}": random, "regions": regions}


def relative_r(forward, image: torch.Tensor, maps: Dict[str, torch.Tensor], finding: int, masks: torch.Tensor) -> Dict[str, float]:
    spatial = tuple(image.shape[1:])
    removed = F.interpolate(masks[:, None].float(), size=spatial, mode="nearest")[:, 0] > 0.5
    baseline = background(image[None], len(spatial))[0]
    batch = torch.stack([torch.where(m, baseline, image) for m in removed])
    cost = (forward(image[None])[0, finding] - torch.cat([forward(batch[i : i + 4]) for i in range(0, len(batch), 4)])[:, finding]).numpy()
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    shape = next(iter(maps.values())).shape
    nulls = torch.rand((NULL_MAPS,) + tuple(shape), generator=torch.Generator().manual_seed(123))

    def r(m: torch.Tensor) -> float:
        a = F.interpolate(m[None, None].float().clamp_min(0), size=spatial, mode=mode, align_corners=False)[0, 0]
        mass = torch.stack([(a * u).sum() for u in removed]).numpy() / max(float(a.sum()), 1e-12)
        return float(np.corrcoef(mass, cost)[0, 1]) if mass.std() > 0 and cost.std() > 1e-9 else 0.0

    centre = float(np.median([r(n) for n in nulls]))
    return {name: r(m) - centre for name, m in maps.items()}


def main() -> int:
    cpu = torch.device("cpu")
    wins: Dict[str, List[bool]] = {}
    for package, case, spacing, segmenter in separation_cases():
        model = load_package(MODELS / package)
        outliner = load_package(MODELS / segmenter) if segmenter else None
        model_input = case_input(model, load_volume(case, image_spacing=spacing), outliner, cpu)
        real = classify_and_explain(model, model_input, "gradcam", cpu)
        top = int(np.argmax(real.probabilities))
        maps = torch.from_numpy(real.maps)
        candidates = {"real": maps, "random map": torch.rand(maps.shape, generator=torch.Generator().manual_seed(0)),
                      "randomised network": torch.from_numpy(classify_and_explain(randomised(model), model_input, "gradcam", cpu).maps),
                      "shifted": torch.roll(maps, shifts=(maps.shape[-2] // 2, maps.shape[-1] // 2), dims=(-2, -1))}
        if model.metadata.input.spatial_dims == 2:
            k = key_slices(real.maps[top], 1)[0]
            image, chosen = model_input.tensor[:, k], {n: c[top, k] for n, c in candidates.items()}
        else:
            image, chosen = model_input.tensor, {n: c[top] for n, c in candidates.items()}
        forward = network_forward(model.network, model.metadata.task, cpu)
        for seed in (0, 1, 2):
            for measure, masks in mask_sets(tuple(image.shape[1:]), seed).items():
                if measure in wins and seed and not measure.startswith("masks"):
                    continue
                scores = relative_r(forward, image, chosen, top, masks)
                wins.setdefault(measure, []).append(all(scores["real"] > v for n, v in scores.items() if n != "real"))
    for measure, won in wins.items():
        print(f"{measure}_real_beats_all={sum(won)}_of_{len(won)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
