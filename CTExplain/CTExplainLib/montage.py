"""A key-slice picture of one finding: CT, CT with the heat map, CT with the anatomy outlines.

Display convention: slice ``array[k]`` is shown with rows = j and columns = i, unflipped.
For an LPS-identity grid (i towards the patient's left, j towards posterior) this is the
radiological view: patient's right on the image left, anterior at the top. For other
axis-aligned grids, ``radiological=True`` flips the panels into that view. Panels are
resized so that one screen pixel covers the same distance along rows and columns, which
keeps the anatomy's proportions when the in-plane spacing is anisotropic.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .volume import Grid, Volume
from .windowing import window_bounds, window_to_unit

logger = logging.getLogger(__name__)

Color = Tuple[float, float, float]

MAX_PANEL_PX = 256
GAP_PX = 4
TEXT_LINE_PX = 14
HEAT_COLORMAP = "jet"
MAX_HEAT_ALPHA = 0.6
# Below this the heat is treated as zero: bilinear resizing spreads tiny values around a
# blob, and those should not tint the CT.
HEAT_FLOOR = 1e-3
PANEL_TITLES = ("CT", "heat map", "anatomy")
# Below the rows: the heat map's colour bar, then the outline legend (or the no-segmenter note).
COLORBAR_PX = 10
SWATCH_PX = 10
FOOTER_PX = 2 * (TEXT_LINE_PX + GAP_PX)
NO_SEGMENTER_NOTE = "no segmenter ran: no anatomy outlines"
LegendEntry = Tuple[int, str, Color]  # a segment's label value, name and RGB colour (0..1)


@dataclass(frozen=True)
class PanelShape:
    """Size in pixels of one panel, chosen so that the in-plane aspect ratio follows spacing."""

    height: int
    width: int


def panel_shape(rows: int, columns: int, row_spacing: float, column_spacing: float, max_px: int = MAX_PANEL_PX) -> PanelShape:
    """Largest panel within ``max_px`` whose pixels are square in millimetres."""
    height_mm = rows * row_spacing
    width_mm = columns * column_spacing
    scale = max_px / max(height_mm, width_mm)
    return PanelShape(max(1, int(round(height_mm * scale))), max(1, int(round(width_mm * scale))))


def slice_energy(heat: np.ndarray) -> np.ndarray:
    """Sum of the non-negative, finite heat of each axial slice (k), in float64.

    Slice by slice, so that no temporary copy of the whole (possibly 512x512x300) map is made.
    """
    return np.array([np.clip(np.nan_to_num(section), 0, None).sum(dtype=np.float64) for section in heat])


def key_slices(heat: np.ndarray, count: int = 3) -> List[int]:
    """The ``count`` axial slices (k) holding most heat, distinct and in increasing order.

    With no heat at all, slices evenly spread through the volume are returned instead, so a
    montage of an empty map still shows the anatomy.
    """
    return key_slices_of_energy(slice_energy(heat), count)


def key_slices_of_energy(energy: np.ndarray, count: int = 3) -> List[int]:
    """:func:`key_slices` from per-slice energies already computed by :func:`slice_energy`."""
    depth = energy.shape[0]
    count = max(0, min(int(count), depth))
    if count == 0:
        return []
    if not np.any(energy > 0):
        return sorted(set(int(round(x)) for x in np.linspace(0, depth - 1, count + 2)[1:-1]))
    # A stable sort on -energy keeps the lower k first among equal energies.
    order = np.argsort(-energy, kind="stable")[:count]
    return sorted(int(k) for k in order)


def window_to_gray(ct_slice: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    """CT values mapped to 0..1 by a (level, width) window."""
    level, width = float(window[0]), float(window[1])
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    values = ct_slice.astype(np.float32)
    return window_to_unit(values, *window_bounds(level, width), out=values)


def _resize_float(values: np.ndarray, shape: PanelShape) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize((shape.width, shape.height), Image.BILINEAR), dtype=np.float32)


def _resize_labels(values: np.ndarray, shape: PanelShape) -> np.ndarray:
    # Nearest neighbour: label values must never be blended into other labels.
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.int32))  # mode "I"
    return np.asarray(image.resize((shape.width, shape.height), Image.NEAREST), dtype=np.int64)


def _colormap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except AttributeError:  # matplotlib < 3.5
        from matplotlib import cm

        return cm.get_cmap(name)


def heat_overlay(gray_rgb: np.ndarray, heat: np.ndarray, colormap: str = HEAT_COLORMAP) -> np.ndarray:
    """Blend a 0..1 heat map onto an RGB uint8 image; pixels with heat ≈ 0 are left unchanged."""
    heat = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    colors = _colormap(colormap)(heat)[..., :3] * 255.0
    alpha = np.where(heat > HEAT_FLOOR, MAX_HEAT_ALPHA * heat, 0.0)[..., None]
    blended = gray_rgb.astype(np.float32) * (1.0 - alpha) + colors * alpha
    result = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    untouched = alpha[..., 0] == 0
    result[untouched] = gray_rgb[untouched]
    return result


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of a nonzero label with a 4-neighbour of another value (image edges count as 0)."""
    padded = np.pad(labels, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs & (centre != 0)


def default_label_color(label: int) -> Color:
    """A distinct color per label value (matplotlib's tab20, cycled)."""
    rgba = _colormap("tab20")((int(label) - 1) % 20)
    return (float(rgba[0]), float(rgba[1]), float(rgba[2]))


def outline_overlay(gray_rgb: np.ndarray, labels: np.ndarray, colors: Optional[Dict[int, Color]] = None) -> np.ndarray:
    """Draw the boundary pixels of each label of ``labels`` on an RGB uint8 image."""
    result = gray_rgb.copy()
    boundary = label_boundaries(labels)
    for value in np.unique(labels[boundary]):
        color = (colors or {}).get(int(value)) or default_label_color(int(value))
        result[boundary & (labels == value)] = np.round(np.asarray(color) * 255).astype(np.uint8)
    return result


def _gray_panel(section: np.ndarray, shape: PanelShape, window: Tuple[float, float]) -> np.ndarray:
    """A CT slice in the (level, width) ``window``, resized to ``shape``, as (H, W, 3) uint8 gray."""
    gray = np.clip(np.round(_resize_float(window_to_gray(section, window), shape) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def slice_panels(
    ct: Volume,
    heat: np.ndarray,
    labels: Optional[np.ndarray],
    k: int,
    window: Tuple[float, float] = (40.0, 400.0),
    max_px: int = MAX_PANEL_PX,
    label_colors: Optional[Dict[int, Color]] = None,
    radiological: bool = False,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three (H, W, 3) uint8 panels of axial slice ``k``: CT, CT + heat, CT + outlines.

    The third panel is the plain CT when ``labels`` is None. ``radiological`` flips the
    slice of an axis-aligned grid into the radiological view (see :func:`finding_montage`).
    """
    shape = montage_panel_shape(ct, max_px)
    orient = _radiological_flip(ct.grid) if radiological else (lambda section: section)
    plain = _gray_panel(orient(ct.array[k]), shape, window)
    heated = heat_overlay(plain, _resize_float(orient(heat[k]), shape))
    if labels is None:
        outlined = plain.copy()
    else:
        outlined = outline_overlay(plain, _resize_labels(orient(labels[k]), shape), label_colors)
    return plain, heated, outlined


def _radiological_flips(grid: Grid) -> Tuple[bool, bool]:
    """(flip rows, flip columns) that turn a [j, i] slice into the radiological view: anterior
    up, the patient's right on the image left.

    Only for grids whose i axis runs mostly along L-R and j mostly along P-A (the usual axial
    acquisition, e.g. NIfTI files with RAS-like directions); other grids are shown as stored.
    """
    direction = grid.direction
    i_axis, j_axis = direction[:, 0], direction[:, 1]
    if abs(i_axis[0]) < 0.7 or abs(j_axis[1]) < 0.7:
        logger.debug("radiological view needs i along L-R and j along P-A; showing the slice as stored")
        return False, False
    return bool(j_axis[1] < 0), bool(i_axis[0] < 0)


def _radiological_flip(grid: Grid) -> Callable[[np.ndarray], np.ndarray]:
    """A function flipping a [j, i] slice into the radiological view (see :func:`_radiological_flips`)."""
    flip_rows, flip_columns = _radiological_flips(grid)

    def orient(section: np.ndarray) -> np.ndarray:
        if flip_rows:
            section = section[::-1, :]
        if flip_columns:
            section = section[:, ::-1]
        return section

    return orient


def montage_layout(panel: PanelShape, rows: int, caption_lines: int = 0) -> Dict[str, int]:
    """Where :func:`finding_montage` puts things, for callers and tests that locate panels
    (``caption_lines``: lines of caption under the title)."""
    header = (2 + caption_lines) * TEXT_LINE_PX + GAP_PX
    row_h = TEXT_LINE_PX + panel.height + GAP_PX
    return {
        "width": 3 * panel.width + 4 * GAP_PX,
        "height": header + rows * row_h + FOOTER_PX,
        "footer_top": header + rows * row_h,
        "first_panel_top": header + TEXT_LINE_PX,
        "row_pitch": row_h,
        "column_pitch": panel.width + GAP_PX,
        "left": GAP_PX,
    }


def montage_panel_shape(ct: Volume, max_px: int = MAX_PANEL_PX) -> PanelShape:
    """The panel shape :func:`finding_montage` uses for ``ct``."""
    return panel_shape(ct.array.shape[1], ct.array.shape[2], ct.grid.spacing[1], ct.grid.spacing[0], max_px)


def _check_inputs(ct: Volume, heat: np.ndarray, labels: Optional[np.ndarray], slices: int) -> None:
    if heat.shape != ct.array.shape:
        raise ValueError(f"heat map shape {heat.shape} differs from the CT's {ct.array.shape}")
    if labels is not None and labels.shape != ct.array.shape:
        raise ValueError(f"label map shape {labels.shape} differs from the CT's {ct.array.shape}")
    if slices < 1:
        raise ValueError(f"a montage needs at least one slice, got {slices}")


def _draw_text(canvas: Image.Image, xy: Tuple[int, int], text: str) -> None:
    draw = ImageDraw.Draw(canvas)
    try:
        draw.text(xy, text, fill=(255, 255, 255))
    except UnicodeEncodeError:
        # Without FreeType, Pillow's default bitmap font covers Latin-1 only.
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), fill=(255, 255, 255))


def finding_montage(
    ct: Volume,
    heat: np.ndarray,
    labels: Optional[np.ndarray],
    title: str,
    slices: int = 3,
    window: Tuple[float, float] = (40.0, 400.0),
    label_colors: Optional[Dict[int, Color]] = None,
    radiological: bool = False,
    energy: Optional[np.ndarray] = None,
    segments: Optional[Sequence[LegendEntry]] = None,
    caption: Optional[str] = None,
    first_slice: int = 0,
) -> np.ndarray:
    """An (H, W, 3) uint8 picture of one finding on its ``slices`` key axial slices.

    One row per key slice (those of largest heat energy, in increasing k), three panels per
    row: the CT in the (level, width) ``window``, the CT with the heat map (0..1, same grid)
    in color, the CT with the outlines of ``labels`` (same grid, integers). A title line
    names the finding and each row is headed by its slice index.

    By default slices are shown as stored (rows = j, columns = i), which is the radiological
    view only for LPS-aligned grids; a NIfTI with RAS-like axes then appears upside down and
    mirrored. ``radiological=True`` flips the panels of such axis-aligned grids so that
    anterior is up and the patient's right is on the image left; slice indices stay k.

    ``energy``, the map's :func:`slice_energy` if already computed (e.g. by the anatomy
    statistics), saves a pass over the map. ``caption``, if given, is a line under the title
    (e.g. the map's faithfulness). ``first_slice``: the index in the whole CT of ``ct``'s
    slice 0, when ``ct`` is a part of it (rows are headed by the whole CT's k).

    Below the rows, a colour bar reads the heat map's colours (0 to 1), and a legend names
    each outline's colour: ``segments`` (label value, name, RGB), the package's segments, give
    the outlines their colours unless ``label_colors`` does; with ``labels`` None a note says
    that no segmenter ran.
    """
    heat = np.asarray(heat)
    _check_inputs(ct, heat, labels, slices)
    if energy is None:
        energy = slice_energy(heat)  # one pass over the map serves the choice and the shares
    elif np.shape(energy) != (heat.shape[0],):
        raise ValueError(f"{np.shape(energy)} slice energies for a map of {heat.shape[0]} slices")
    chosen = key_slices_of_energy(energy, slices)
    total = float(energy.sum())
    if label_colors is None and segments:
        label_colors = segment_colors(segments)
    rows = [(k, slice_panels(ct, heat, labels, k, window, MAX_PANEL_PX, label_colors, radiological)) for k in chosen]
    captions = [caption] if caption else []
    layout = montage_layout(montage_panel_shape(ct), len(rows), len(captions))
    canvas = Image.new("RGB", (layout["width"], layout["height"]), (0, 0, 0))
    for line, text in enumerate([title] + captions):
        _draw_text(canvas, (GAP_PX, line * TEXT_LINE_PX + 2), text)
    for column, name in enumerate(PANEL_TITLES):
        _draw_text(canvas, (layout["left"] + column * layout["column_pitch"], (1 + len(captions)) * TEXT_LINE_PX + 2), name)
    for row, (k, panels) in enumerate(rows):
        top = layout["first_panel_top"] + row * layout["row_pitch"]
        share = float(energy[k]) / total if total > 0 else 0.0
        _draw_text(canvas, (GAP_PX, top - TEXT_LINE_PX + 1), f"slice k={first_slice + k}  ({100.0 * share:.0f}% of map energy)")
        for column, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel), (layout["left"] + column * layout["column_pitch"], top))
    draw_montage_footer(canvas, layout["footer_top"], labels, segments, label_colors)
    return np.asarray(canvas, dtype=np.uint8)


# ---------------------------------------------------------------- colour bar and legend


def legend_of(segments: Sequence[Dict[str, object]]) -> Optional[List[LegendEntry]]:
    """The legend entries of result.json's ``segments`` records (label, name, color); None for none."""
    entries = [(int(s["label"]), str(s["name"]), tuple(float(c) for c in s["color"])) for s in segments]  # type: ignore[union-attr]
    return entries or None


def segment_colors(segments: Sequence[LegendEntry]) -> Dict[int, Color]:
    """The outline colour of each label value, from (label, name, RGB) entries."""
    return {int(label): (float(color[0]), float(color[1]), float(color[2])) for label, _, color in segments}


def legend_entries(
    labels: Optional[np.ndarray],
    segments: Optional[Sequence[LegendEntry]],
    label_colors: Optional[Dict[int, Color]] = None,
) -> List[Tuple[str, Color]]:
    """(name, colour) of each outline the anatomy panel may show, in the colour
    :func:`outline_overlay` draws it: the segments given, else each nonzero value of ``labels``."""
    if labels is None:
        return []
    colors = label_colors or {}
    if segments:
        return [(name, colors.get(int(label)) or tuple(float(c) for c in color)) for label, name, color in segments]
    values = [int(v) for v in np.unique(labels) if v != 0]
    return [(f"label {v}", colors.get(v) or default_label_color(v)) for v in values]


def _rgb255(color: Color) -> Tuple[int, int, int]:
    return tuple(int(v) for v in np.round(np.asarray(color, dtype=np.float64) * 255).astype(np.uint8))


def colorbar_strip(width: int, height: int = COLORBAR_PX, colormap: str = HEAT_COLORMAP) -> np.ndarray:
    """An (height, width, 3) uint8 strip of ``colormap`` from heat 0 (left) to 1 (right), in the
    colours :func:`heat_overlay` blends in."""
    values = np.linspace(0.0, 1.0, max(int(width), 2))
    row = np.clip(np.round(_colormap(colormap)(values)[:, :3] * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(row[None], int(height), axis=0)


def _text_width(canvas: Image.Image, text: str) -> int:
    draw = ImageDraw.Draw(canvas)
    try:
        return int(round(draw.textlength(text)))
    except (AttributeError, UnicodeEncodeError):
        return 6 * len(text)


def draw_montage_footer(
    canvas: Image.Image,
    top: int,
    labels: Optional[np.ndarray],
    segments: Optional[Sequence[LegendEntry]],
    label_colors: Optional[Dict[int, Color]] = None,
) -> Dict[str, object]:
    """Draw the colour bar and the outline legend (or the no-segmenter note) from row ``top``.
    Returns where things went, for tests: the bar's box and each swatch's box and colour."""
    left = GAP_PX
    caption = "heat map  0"
    _draw_text(canvas, (left, top + 1), caption)
    bar_left = left + _text_width(canvas, caption) + GAP_PX
    bar_width = max(2, min(canvas.width // 3, canvas.width - bar_left - 4 * GAP_PX - 12))
    bar_top = top + (TEXT_LINE_PX - COLORBAR_PX) // 2
    canvas.paste(Image.fromarray(colorbar_strip(bar_width)), (bar_left, bar_top))
    _draw_text(canvas, (bar_left + bar_width + GAP_PX, top + 1), "1")
    placed: Dict[str, object] = {"colorbar": (bar_left, bar_top, bar_width, COLORBAR_PX), "swatches": []}
    line = top + TEXT_LINE_PX + GAP_PX
    if labels is None:
        _draw_text(canvas, (left, line + 1), NO_SEGMENTER_NOTE)
        placed["note"] = NO_SEGMENTER_NOTE
        return placed
    draw = ImageDraw.Draw(canvas)
    _draw_text(canvas, (left, line + 1), "outlines:")
    x = left + _text_width(canvas, "outlines:") + GAP_PX
    swatch_top = line + (TEXT_LINE_PX - SWATCH_PX) // 2
    for name, color in legend_entries(labels, segments, label_colors):
        if x + SWATCH_PX >= canvas.width:
            break  # more segments than the picture is wide: the rest are in result.json
        rgb = _rgb255(color)
        draw.rectangle([x, swatch_top, x + SWATCH_PX - 1, swatch_top + SWATCH_PX - 1], fill=rgb)
        placed["swatches"].append(((x, swatch_top, SWATCH_PX, SWATCH_PX), rgb))
        x += SWATCH_PX + 3
        _draw_text(canvas, (x, line + 1), name)
        x += _text_width(canvas, name) + 2 * GAP_PX
    return placed


def _outlined(section: np.ndarray, labels: np.ndarray, shape: PanelShape, window: Tuple[float, float],
              label_colors: Optional[Dict[int, Color]]) -> np.ndarray:
    return outline_overlay(_gray_panel(section, shape, window), _resize_labels(labels, shape), label_colors)


def segmentation_overview(
    ct: Volume,
    labels: np.ndarray,
    axial: List[int],
    coronal: int,
    window: Tuple[float, float] = (-600.0, 1500.0),
    label_colors: Optional[Dict[int, Color]] = None,
    max_px: int = 384,
) -> np.ndarray:
    """An (H, W, 3) uint8 picture of a label map's outlines on the CT: the ``axial`` slices (k)
    in the radiological view, then the ``coronal`` row (j) with the head up, side by side."""
    if labels.shape != ct.array.shape:
        raise ValueError(f"label map shape {labels.shape} differs from the CT's {ct.array.shape}")
    orient = _radiological_flip(ct.grid)
    shape = montage_panel_shape(ct, max_px)
    panels = [_outlined(orient(ct.array[k]), orient(labels[k]), shape, window, label_colors) for k in axial]
    # Coronal: rows are k, the head up; columns are i, flipped as in the axial view.
    rows = slice(None, None, -1) if ct.grid.direction[2, 2] > 0 else slice(None)
    columns = slice(None, None, -1) if _radiological_flips(ct.grid)[1] else slice(None)
    section, section_labels = ct.array[rows, coronal, columns], labels[rows, coronal, columns]
    coronal_shape = panel_shape(section.shape[0], section.shape[1], ct.grid.spacing[2], ct.grid.spacing[0], max_px=shape.height)
    panels.append(_outlined(section, section_labels, coronal_shape, window, label_colors))
    height = max(panel.shape[0] for panel in panels)
    canvas = Image.new("RGB", (sum(panel.shape[1] for panel in panels) + GAP_PX * (len(panels) - 1), height), (0, 0, 0))
    left = 0
    for panel in panels:
        canvas.paste(Image.fromarray(panel), (left, 0))
        left += panel.shape[1] + GAP_PX
    return np.asarray(canvas, dtype=np.uint8)


__all__ = [
    "LegendEntry",
    "PanelShape",
    "colorbar_strip",
    "draw_montage_footer",
    "legend_entries",
    "legend_of",
    "segment_colors",
    "finding_montage",
    "heat_overlay",
    "key_slices",
    "label_boundaries",
    "montage_layout",
    "montage_panel_shape",
    "outline_overlay",
    "panel_shape",
    "segmentation_overview",
    "slice_panels",
    "window_to_gray",
]
