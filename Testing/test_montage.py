"""Key-slice montage: the right slices, the heat where it belongs, the CT untouched elsewhere."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest
from PIL import Image

from CTExplainLib.montage import (
    MAX_PANEL_PX,
    PanelShape,
    finding_montage,
    key_slices,
    label_boundaries,
    montage_layout,
    montage_panel_shape,
    panel_shape,
    slice_panels,
    window_to_gray,
)
from CTExplainLib.volume import Grid, Volume

BLOB_KJI = (20, 35, 30)  # off-centre in j and i, so a flipped or transposed panel misses it


def blob(shape: Tuple[int, int, int], centre: Tuple[int, int, int], radius: float = 4.0) -> np.ndarray:
    """A heat map of 1 at ``centre`` falling to exactly 0 at ``radius`` voxels."""
    k, j, i = np.indices(shape)
    distance = np.sqrt((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2)
    return np.clip(1.0 - distance / radius, 0.0, 1.0).astype(np.float32)


def panel_pixel(shape: PanelShape, grid_shape: Tuple[int, int, int], j: float, i: float) -> Tuple[int, int]:
    """Panel (row, column) of voxel centre (j, i)."""
    return int((j + 0.5) * shape.height / grid_shape[1]), int((i + 0.5) * shape.width / grid_shape[2])


def test_key_slices_are_the_most_energetic_distinct_and_ordered() -> None:
    heat = np.zeros((30, 8, 8), dtype=np.float32)
    heat[25] = 0.9
    heat[5] = 0.5
    heat[12, 2:4, 2:4] = 1.0
    heat[13] = 0.2
    assert key_slices(heat, 3) == [5, 13, 25]
    assert key_slices(heat, 1) == [25]
    assert key_slices(heat, 50) == list(range(30))
    # An empty map still gives distinct slices to look at, spread through the volume.
    empty = key_slices(np.zeros((30, 4, 4)), 3)
    assert len(set(empty)) == 3 and empty == sorted(empty) and empty[0] > 0 and empty[-1] < 29


def test_montage_on_real_ct_shows_the_blob_slice(real_ct: Volume, real_seg: np.ndarray) -> None:
    heat = blob(real_ct.array.shape, BLOB_KJI)
    picture = finding_montage(real_ct, heat, real_seg, "Liver lesion", slices=3)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    chosen = key_slices(heat, 3)
    assert BLOB_KJI[0] in chosen and len(set(chosen)) == 3
    shape = montage_panel_shape(real_ct)
    layout = montage_layout(shape, 3)
    assert picture.shape[:2] == (layout["height"], layout["width"])
    assert max(shape.height, shape.width) == MAX_PANEL_PX

    # Each panel of the blob's row is exactly what slice_panels renders for that slice.
    row = chosen.index(BLOB_KJI[0])
    top = layout["first_panel_top"] + row * layout["row_pitch"]
    for column, panel in enumerate(slice_panels(real_ct, heat, real_seg, BLOB_KJI[0])):
        left = layout["left"] + column * layout["column_pitch"]
        assert np.array_equal(picture[top : top + shape.height, left : left + shape.width], panel)
    # The title and the row headings are drawn (white text on the black margins).
    assert picture[:top].max() == 255


def test_heat_is_colored_at_the_blob_and_absent_far_from_it(real_ct: Volume) -> None:
    heat = blob(real_ct.array.shape, BLOB_KJI)
    plain, heated, outlined = slice_panels(real_ct, heat, None, BLOB_KJI[0])
    shape = montage_panel_shape(real_ct)
    row, column = panel_pixel(shape, real_ct.array.shape, BLOB_KJI[1], BLOB_KJI[2])
    assert not np.array_equal(heated[row, column], plain[row, column])
    red, green, blue = heated[row, column].astype(int)
    assert max(red, green, blue) - min(red, green, blue) > 40  # colored, not gray
    assert np.all(plain[..., 0] == plain[..., 1]) and np.all(plain[..., 1] == plain[..., 2])

    # Far from the blob (and so at heat exactly 0) the overlay panel is the plain CT.
    mirrored_row, mirrored_column = panel_pixel(shape, real_ct.array.shape, real_ct.array.shape[1] - 1 - BLOB_KJI[1], real_ct.array.shape[2] - 1 - BLOB_KJI[2])
    far = np.ones(shape.height * shape.width, dtype=bool).reshape(shape.height, shape.width)
    far[max(0, row - 40) : row + 40, max(0, column - 40) : column + 40] = False
    assert far[mirrored_row, mirrored_column]
    assert np.array_equal(heated[far], plain[far])
    # The tinted pixels are all near the blob: the panel is neither flipped nor transposed.
    tinted = np.argwhere(np.any(heated != plain, axis=2))
    assert np.abs(tinted.mean(axis=0) - (row, column)).max() < 6
    # Without labels the third panel is the plain CT.
    assert np.array_equal(outlined, plain)


def test_ct_panel_is_the_windowed_slice_unflipped(real_ct: Volume, real_seg: np.ndarray) -> None:
    k = BLOB_KJI[0]
    plain, _, _ = slice_panels(real_ct, np.zeros(real_ct.array.shape, np.float32), None, k, window=(40, 400))
    rows, columns = real_ct.array.shape[1:]
    # Back at the slice's own resolution, the panel matches the windowed slice pixel by pixel.
    shrunk = np.asarray(Image.fromarray(plain[..., 0]).resize((columns, rows), Image.BILINEAR), dtype=np.float32) / 255.0
    expected = window_to_gray(real_ct.array[k], (40, 400))
    assert np.corrcoef(shrunk.ravel(), expected.ravel())[0, 1] > 0.95
    # The densest voxel of the vertebra is white, the air in the corner black.
    in_vertebra = np.argwhere(real_seg[k] == 31)
    densest = in_vertebra[np.argmax(real_ct.array[k][tuple(in_vertebra.T)])]
    row, column = panel_pixel(montage_panel_shape(real_ct), real_ct.array.shape, densest[0], densest[1])
    assert plain[row, column, 0] > 200 and plain[0, 0, 0] == 0


def test_radiological_option_flips_ras_like_grids_only(real_ct: Volume, real_seg: np.ndarray) -> None:
    # This NIfTI's i runs to the patient's right and j anteriorly (direction diag(-1, -1, 1)).
    assert np.allclose(real_ct.grid.direction, np.diag([-1.0, -1.0, 1.0]))
    heat = blob(real_ct.array.shape, BLOB_KJI)
    stored = slice_panels(real_ct, heat, real_seg, BLOB_KJI[0])
    flipped = slice_panels(real_ct, heat, real_seg, BLOB_KJI[0], radiological=True)
    for as_stored, radiological in zip(stored, flipped):
        assert np.array_equal(radiological, as_stored[::-1, ::-1])
    # The spine (posterior) is at the top as stored, and at the bottom in the radiological view.
    shape = montage_panel_shape(real_ct)
    in_vertebra = np.argwhere(real_seg[BLOB_KJI[0]] == 31)
    densest = in_vertebra[np.argmax(real_ct.array[BLOB_KJI[0]][tuple(in_vertebra.T)])]
    row, column = panel_pixel(shape, real_ct.array.shape, densest[0], densest[1])
    assert row < shape.height / 2 and stored[0][row, column, 0] > 200
    assert flipped[0][shape.height - 1 - row, shape.width - 1 - column, 0] > 200
    # An LPS-identity grid is already in the radiological view and is left alone.
    lps = Volume(real_ct.array, Grid(real_ct.grid.size, real_ct.grid.spacing, real_ct.grid.origin))
    assert np.array_equal(slice_panels(lps, heat, None, 5, radiological=True)[1], slice_panels(lps, heat, None, 5)[1])


def test_outlines_follow_the_label_boundaries(real_ct: Volume) -> None:
    labels = np.zeros(real_ct.array.shape, dtype=np.uint8)
    labels[:, 20:50, 10:40] = 3
    plain, _, outlined = slice_panels(real_ct, np.zeros(real_ct.array.shape, np.float32), labels, 15, label_colors={3: (0.0, 1.0, 0.0)})
    shape = montage_panel_shape(real_ct)
    changed = np.any(outlined != plain, axis=2)
    assert np.all(outlined[changed] == (0, 255, 0))
    inside_row, inside_column = panel_pixel(shape, real_ct.array.shape, 35, 25)
    assert not changed[inside_row, inside_column]  # the inside is not filled
    edge_row, _ = panel_pixel(shape, real_ct.array.shape, 20, 25)
    assert changed[edge_row - 2 : edge_row + 3, inside_column].any()  # the top edge is drawn


def test_label_boundaries_are_one_pixel_rings() -> None:
    labels = np.zeros((7, 7), dtype=int)
    labels[1:6, 1:6] = 2
    ring = label_boundaries(labels)
    assert ring.sum() == 16 and not ring[3, 3] and ring[1, 3]


def test_panels_keep_the_physical_aspect_ratio(real_ct: Volume) -> None:
    # Same voxels, but columns (i) 0.5 mm apart and rows (j) 1.5 mm apart.
    grid = Grid(real_ct.grid.size, (0.5, 1.5, 3.0), real_ct.grid.origin, real_ct.grid.direction)
    ct = Volume(real_ct.array, grid)
    shape = montage_panel_shape(ct)
    rows, columns = ct.array.shape[1], ct.array.shape[2]
    assert shape.height / shape.width == pytest.approx((rows * 1.5) / (columns * 0.5), rel=0.02)
    assert max(shape.height, shape.width) == MAX_PANEL_PX
    panels = slice_panels(ct, np.zeros(ct.array.shape, np.float32), None, 3)
    assert all(panel.shape == (shape.height, shape.width, 3) for panel in panels)
    picture = finding_montage(ct, blob(ct.array.shape, BLOB_KJI), None, "anisotropic")
    assert picture.shape[:2] == (montage_layout(shape, 3)["height"], montage_layout(shape, 3)["width"])


def test_panel_shape_upscales_small_images_to_the_limit() -> None:
    assert panel_shape(64, 64, 1.0, 1.0) == PanelShape(256, 256)
    assert panel_shape(100, 50, 1.0, 1.0, max_px=200) == PanelShape(200, 100)


def test_montage_rejects_maps_on_another_grid(real_ct: Volume) -> None:
    with pytest.raises(ValueError, match="heat map shape"):
        finding_montage(real_ct, np.zeros((2, 2, 2)), None, "x")
