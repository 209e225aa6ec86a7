"""U-Net probabilities of a 2D segmenter, computed a few slices at a time."""
from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from CTExplainLib import segment
from CTExplainLib.model_package import load_package
from CTExplainLib.models_catalog import resolve_package
from CTExplainLib.preprocess import preprocess
from CTExplainLib.volume import Volume


def test_2d_probabilities_by_slabs_equal_all_slices_at_once(real_ct: Volume) -> None:
    model = load_package(resolve_package("chest-ct-segmenter"))
    model_input = preprocess(real_ct, model.metadata.input, crop=False)
    slices = model_input.tensor.shape[1]
    assert slices > segment.SLICES_PER_PASS  # the boundary between passes is crossed
    probabilities = segment._probabilities(model, model_input, torch.device("cpu"))
    with torch.no_grad():
        logits = sliding_window_inference(model_input.slices(), tuple(reversed(model.metadata.input.size)), 4, model.network,
                                          overlap=segment.SW_OVERLAP, mode="gaussian")
    expected = torch.softmax(logits, dim=1).permute(1, 0, 2, 3).numpy()
    assert probabilities.shape == expected.shape == (len(model.metadata.classes),) + tuple(model_input.tensor.shape[1:])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
