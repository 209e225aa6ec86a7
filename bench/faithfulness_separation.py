"""Does the faithfulness score separate good maps from bad ones? On real CT with the shipped
classifiers, the score of the top finding's real Grad-CAM against a random map, the map of the
same network with every layer re-initialised and the real map shifted by half the image (same
key slice, ``fast``), as Testing/test_faithfulness.py computes them, on more cases than it runs;
for the 3D point model, on the first malignant (rated >= 4) nodule of each of six test patients
of lidc-nodules (in nodules.csv order), its crop cut as at a point.

    PYTHONPATH=CTExplain:. .venv/bin/python bench/faithfulness_separation.py

Needs build/ct-ich-check/volumes/051.nii.gz and 053.nii.gz (CT-ICH patients rebuilt to HU:
``prepare(Path('../shared/data/ct-ich'), Path('build/ct-ich-check'), ['051', '053'])`` from
CTExplainTraining.datasets.ct_ich). Prints one line per case.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))

from test_faithfulness import DATA, HEAD_SAMPLE, alternative_scores, real_beats_the_others  # noqa: E402


def separation_cases() -> list:
    """(package, case, spacing, segmenter) of every case, in the README's order."""
    chest, covid, one = DATA / "chest-ct-4class" / "test", DATA / "covid-infection-2d" / "train" / "Imgs", (1.0, 1.0, 1.0)
    cases = [("head-ct-ich-findings", HEAD_SAMPLE, None)]
    cases += [("head-ct-ich-findings", REPO / "build" / "ct-ich-check" / "volumes" / f"{p}.nii.gz", None) for p in ("051", "053")]
    cases += [("chest-ct-4class", chest / k / "0002.png", one) for k in ("adenocarcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma", "normal")]
    cases += [("covid-consolidation-2d", covid / f"{i}.jpg", one) for i in (3, 25, 40)]
    cases = [(package, case, spacing, None) for package, case, spacing in cases]
    nodules = ["LIDC-IDRI-0037_R_1", "LIDC-IDRI-0058_R_1", "LIDC-IDRI-0060_R_1", "LIDC-IDRI-0075_R_2", "LIDC-IDRI-0095_R_1", "LIDC-IDRI-0159_R_2"]
    cases += [("lung-nodule-malignancy", DATA / "lidc-nodules" / "image" / f"{key}.nii.gz", None, "lung-nodule-segmenter") for key in nodules]
    return cases


def main() -> int:
    for package, case, spacing, segmenter in separation_cases():
        scores = alternative_scores(package, case, spacing, segmenter)
        print(package, case.parent.name + "/" + case.name, " ".join(f"{k.replace(' ', '_')}={v:+.3f}" for k, v in scores.items()),
              f"real_beats_all={real_beats_the_others(scores)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
