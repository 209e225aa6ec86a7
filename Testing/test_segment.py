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


def _blob_probabilities() -> np.ndarray:
    """Three segments on a 6x40x40 grid: segment 1 wins two large blocks, a third block of
    half their size and a speck; segment 2 wins one block; the background the rest."""
    probabilities = np.zeros((3, 6, 40, 40), dtype=np.float32)
    probabilities[0] = 0.6
    probabilities[1, :, 2:18, 2:18] = 0.9  # 6*16*16 = 1536 voxels
    probabilities[1, :, 22:38, 2:18] = 0.9  # as large
    probabilities[1, :, 2:18, 22:30] = 0.9  # half: beyond the first two
    probabilities[1, 2, 35, 35] = 0.9  # a speck
    probabilities[2, :, 22:38, 22:30] = 0.8
    return probabilities


def test_keep_largest_parts_drops_the_parts_beyond_the_limit_and_the_specks() -> None:
    probabilities = _blob_probabilities()
    before = probabilities.copy()
    segment.keep_largest_parts(probabilities, [None, 2, 1])
    winners = probabilities.argmax(axis=0)
    assert (winners[:, 2:18, 2:18] == 1).all() and (winners[:, 22:38, 2:18] == 1).all()
    assert (winners[:, 2:18, 22:30] == 0).all() and winners[2, 35, 35] == 0  # the third part and the speck
    assert (winners[:, 22:38, 22:30] == 2).all()  # one part, kept
    np.testing.assert_array_equal(probabilities[[0, 2]], before[[0, 2]])  # only segment 1 lost voxels
    unlimited = before.copy()
    segment.keep_largest_parts(unlimited, [None, None, 1])
    np.testing.assert_array_equal(unlimited, before)


def test_keep_largest_parts_drops_parts_under_a_tenth_of_the_largest_even_within_the_limit() -> None:
    probabilities = _blob_probabilities()
    segment.keep_largest_parts(probabilities, [None, 10, None])
    winners = probabilities.argmax(axis=0)
    assert (winners[:, 2:18, 22:30] == 1).all()  # half the largest: kept
    assert winners[2, 35, 35] == 0  # 1 voxel of 1536


def test_a_part_one_segment_loses_to_another_is_held_to_the_others_limit() -> None:
    """A stray liver part whose runner-up is lung (bowel gas below the lungs, as on the demo
    chest): dropping it from the liver must not hand the lung a part beyond its own limit."""
    probabilities = _blob_probabilities()  # lungs: two large blocks (and a third, a speck)
    probabilities[1, :, 2:18, 22:30] = 0.0
    probabilities[2, :, 2:6, 22:30] = 0.8  # a second, smaller liver part ...
    probabilities[1, :, 2:6, 22:30] = 0.7  # ... where lung comes second, above the background
    segment.keep_largest_parts(probabilities, [None, 2, 1])
    winners = probabilities.argmax(axis=0)
    assert (winners[:, 2:6, 22:30] == 0).all()  # neither liver nor lung: background
    assert (winners[:, 22:38, 22:30] == 2).all() and (winners[:, 2:18, 2:18] == 1).all()


def test_settled_winners_need_a_clear_lead_over_the_whole_block() -> None:
    """A model-grid voxel is settled only where its 2x2x2 block (the far edges repeated) has one
    winner everywhere, leading by more than SETTLED_MARGIN: near-ties are left to interpolation."""
    probabilities = _blob_probabilities()
    unsettled = np.iinfo(np.uint8).max
    settled = segment._settled_winners(probabilities, np.uint8)
    assert settled[0, 5, 5] == 1 and settled[5, 30, 25] == 2 and settled[5, 39, 39] == 0  # inside blocks, far corner
    assert settled[0, 17, 5] == unsettled and settled[0, 1, 5] == unsettled  # block reaches the background
    assert settled[2, 34, 34] == unsettled  # the speck's block
    near_tie = probabilities.copy()
    near_tie[2, :, 22:38, 22:30] = 0.6 + segment.SETTLED_MARGIN / 2  # leads the background by half the margin
    assert segment._settled_winners(near_tie, np.uint8)[3, 30, 25] == unsettled
