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
    segment.keep_largest_parts(probabilities, segment.PartRules([None, 2, 1]))
    winners = probabilities.argmax(axis=0)
    assert (winners[:, 2:18, 2:18] == 1).all() and (winners[:, 22:38, 2:18] == 1).all()
    assert (winners[:, 2:18, 22:30] == 0).all() and winners[2, 35, 35] == 0  # the third part and the speck
    assert (winners[:, 22:38, 22:30] == 2).all()  # one part, kept
    np.testing.assert_array_equal(probabilities[[0, 2]], before[[0, 2]])  # only segment 1 lost voxels
    unlimited = before.copy()
    segment.keep_largest_parts(unlimited, segment.PartRules([None, None, 1]))
    np.testing.assert_array_equal(unlimited, before)


def test_keep_largest_parts_drops_parts_under_a_tenth_of_the_largest_even_within_the_limit() -> None:
    probabilities = _blob_probabilities()
    segment.keep_largest_parts(probabilities, segment.PartRules([None, 10, None]))
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
    segment.keep_largest_parts(probabilities, segment.PartRules([None, 2, 1]))
    winners = probabilities.argmax(axis=0)
    assert (winners[:, 2:6, 22:30] == 0).all()  # neither liver nor lung: background
    assert (winners[:, 22:38, 22:30] == 2).all() and (winners[:, 2:18, 2:18] == 1).all()


def test_a_part_wholly_below_the_named_segment_is_dropped_whichever_way_k_runs() -> None:
    """not_below: lungs reach above the bottom of the liver, so a lung part lying wholly below
    every liver slice (gas in the pelvis) goes, and one that reaches above it stays, however
    small; on a grid whose k runs towards the feet, "below" is the other end."""
    probabilities = np.zeros((3, 12, 20, 20), dtype=np.float32)
    probabilities[0] = 0.5
    probabilities[2, 4:9, 2:18, 10:18] = 0.9  # the liver: slices 4-8
    probabilities[1, 6:12, 2:18, 2:8] = 0.9  # a lung base reaching above the liver's bottom
    probabilities[1, 7:9, 2:4, 8:10] = 0.9  # ... a small part beside the liver, not below it
    probabilities[1, 0:3, 2:18, 2:18] = 0.9  # a large blob wholly below the liver (slices 0-2)
    for superior, kept, dropped in ((1, 6, 1), (-1, 1, 6)):
        flipped = probabilities if superior > 0 else probabilities[:, ::-1].copy()
        lung_kept = (slice(None), slice(6, 12)) if superior > 0 else (slice(None), slice(0, 6))
        blob = slice(0, 3) if superior > 0 else slice(9, 12)
        trial = flipped.copy()
        segment.keep_largest_parts(trial, segment.PartRules([None, None, None], [None, 2, None], superior))
        winners = trial.argmax(axis=0)
        assert (winners[blob, 2:18, 2:18] == 0).all(), superior  # the blob below the liver: background
        assert (winners[lung_kept[1], 2:18, 2:8] == 1).all() and (winners == 1).sum() == (flipped.argmax(axis=0)[lung_kept[1]] == 1).sum()
        assert (winners == 2).sum() == 5 * 16 * 8
    # k not head-to-foot (superior 0): the rule cannot tell below from above and leaves every part.
    untouched = probabilities.copy()
    segment.keep_largest_parts(untouched, segment.PartRules([None, None, None], [None, 2, None], 0))
    np.testing.assert_array_equal(untouched, probabilities)
    # From a package's segments and its model grid: LPS k grows towards the head; RAI falls.
    from CTExplainLib.model_package import ClassSpec
    from CTExplainLib.preprocess import orientation_direction

    classes = [ClassSpec("background"), ClassSpec("lungs", max_parts=4, not_below="liver"), ClassSpec("liver", max_parts=1)]
    assert segment.part_rules(classes, orientation_direction("LPS")) == segment.PartRules([None, 4, 1], [None, 2, None], 1)
    assert segment.part_rules(classes, orientation_direction("RAI")).superior == -1


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
