"""Montages that explain themselves: outlines in the package's segment colours, a legend naming
them, a colour bar of the heat map, and a note when no segmenter ran (read from the pixels)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Set, Tuple

import numpy as np
import pytest
from PIL import Image

from CTExplainLib.models_catalog import locate_package
from CTExplainLib.package_files import METADATA_FILE
from CTExplainLib.montage import (
    NO_SEGMENTER_NOTE,
    colorbar_strip,
    draw_montage_footer,
    finding_montage,
    montage_layout,
    montage_panel_shape,
)
from CTExplainLib.volume import Volume

RGB = Tuple[int, int, int]


def _rgb255(color) -> RGB:
    return tuple(int(v) for v in np.round(np.asarray(color) * 255).astype(np.uint8))


def _colours(pixels: np.ndarray) -> Set[RGB]:
    """The non-gray colours of an RGB region (the CT and the text are gray)."""
    flat = pixels.reshape(-1, 3)
    coloured = flat[~((flat[:, 0] == flat[:, 1]) & (flat[:, 1] == flat[:, 2]))]
    return {tuple(int(v) for v in c) for c in np.unique(coloured, axis=0)}


@pytest.fixture(scope="module")
def chest(real_ct: Volume, real_seg: np.ndarray, data_dir: Path):
    """TotalSegmentator's lungs (all lobes) and liver of the real CT as labels 1 and 2, and the
    shipped chest segmenter's segments (label, name, colour) for them."""
    names = json.loads((data_dir / "totalsegmentator" / "labels_total_v2.json").read_text())
    labels = np.zeros(real_seg.shape, np.uint8)
    labels[np.isin(real_seg, [int(v) for v, n in names.items() if n.startswith("lung_")])] = 1
    labels[np.isin(real_seg, [int(v) for v, n in names.items() if n == "liver"])] = 2
    package = json.loads((locate_package("chest-ct-segmenter")[0] / METADATA_FILE).read_text())  # no torch needed
    segments = [(i, c["name"], tuple(c["color"])) for i, c in enumerate(package["classes"]) if i > 0]
    assert [s[1] for s in segments] == ["lungs", "liver"]
    return labels, segments


def _heat_on_slices(shape, slices) -> np.ndarray:
    heat = np.zeros(shape, np.float32)
    heat[list(slices), 10:20, 10:20] = 1.0
    return heat


def test_outlines_and_legend_use_the_package_colours(real_ct: Volume, chest) -> None:
    labels, segments = chest
    both = [k for k in range(labels.shape[0]) if (labels[k] == 1).any() and (labels[k] == 2).any()]
    assert len(both) >= 3, "the lung bases lie over the liver in some slices"
    picture = finding_montage(real_ct, _heat_on_slices(labels.shape, both[:3]), labels, "test", segments=segments)
    layout = montage_layout(montage_panel_shape(real_ct), 3)
    shape = montage_panel_shape(real_ct)
    expected = {_rgb255(color) for _, _, color in segments}
    assert len(expected) == 2, "lungs and liver have different colours in the package"
    for row in range(3):
        top = layout["first_panel_top"] + row * layout["row_pitch"]
        left = layout["left"] + 2 * layout["column_pitch"]
        anatomy = picture[top : top + shape.height, left : left + shape.width]
        assert _colours(anatomy) == expected, f"row {row}: outline colours {_colours(anatomy)} != package {expected}"
        plain = picture[top : top + shape.height, layout["left"] : layout["left"] + shape.width]
        assert _colours(plain) == set(), "the CT panel stays gray"
    # The legend: one swatch per segment, in its colour, where the footer drew it.
    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0]))
    placed = draw_montage_footer(canvas, layout["footer_top"], labels, segments)
    swatches = placed["swatches"]
    assert [rgb for _, rgb in swatches] == [_rgb255(color) for _, _, color in segments]
    for (x, y, w, h), rgb in swatches:
        assert (picture[y : y + h, x : x + w] == np.array(rgb, np.uint8)).all()
    # The colour bar: the heat map's colours from 0 (left) to 1 (right).
    x, y, w, h = placed["colorbar"]
    assert np.array_equal(picture[y : y + h, x : x + w], colorbar_strip(w, h))
    assert tuple(picture[y, x]) != tuple(picture[y, x + w - 1])


def test_without_package_colours_the_legend_still_matches_the_outlines(real_ct: Volume, chest) -> None:
    """No segments given (e.g. a label map from elsewhere): the legend shows the colours drawn."""
    labels, _ = chest
    picture = finding_montage(real_ct, _heat_on_slices(labels.shape, [5, 6, 7]), labels, "test")
    layout = montage_layout(montage_panel_shape(real_ct), 3)
    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0]))
    placed = draw_montage_footer(canvas, layout["footer_top"], labels, None)
    footer = picture[layout["footer_top"] + 14 :]
    panels = picture[: layout["footer_top"], layout["left"] + 2 * layout["column_pitch"] :]
    assert _colours(panels) <= {rgb for _, rgb in placed["swatches"]} == _colours(footer)


def test_no_segmenter_note_and_no_legend(real_ct: Volume) -> None:
    heat = _heat_on_slices(real_ct.array.shape, [5, 6, 7])
    picture = finding_montage(real_ct, heat, None, "test")
    layout = montage_layout(montage_panel_shape(real_ct), 3)
    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0]))
    placed = draw_montage_footer(canvas, layout["footer_top"], None, None)
    assert placed["note"] == NO_SEGMENTER_NOTE and placed["swatches"] == []
    legend_row = picture[layout["footer_top"] + 18 :]
    assert _colours(legend_row) == set() and (legend_row > 128).any(), "a white note, no colour swatch"
    # The colour bar is there without a segmenter too.
    x, y, w, h = placed["colorbar"]
    assert np.array_equal(picture[y : y + h, x : x + w], colorbar_strip(w, h))
