"""LPS <-> RAS conversion between SimpleITK images and Slicer's IJK-to-RAS (slicer-api.md section 3).

Slicer's reader builds IJKtoLPS[r][c] = spacing[c] * D[r][c], left-multiplies by
diag(-1, -1, 1, 1) and sets the translation to (-oL, -oP, oS): the *rows* 0 and 1 are negated,
not the columns. The numpy array of SimpleITK (z, y, x) is already Slicer's (K, J, I).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

F = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras_from_sitk(origin, spacing, direction) -> np.ndarray:
    """IJKToRAS = [[F.D.diag(s), F.o], [0, 0, 0, 1]] for SimpleITK header numbers (section 3)."""
    d = np.reshape(np.asarray(direction, dtype=float), (3, 3))
    s = np.asarray(spacing, dtype=float)
    o = np.asarray(origin, dtype=float)
    m = np.eye(4)
    m[:3, :3] = F @ d @ np.diag(s)
    m[:3, 3] = F @ o
    return m


def sitk_geometry_from_ijk_to_ras(m: np.ndarray) -> Tuple[tuple, tuple, tuple]:
    """The inverse used when saving: s = column norms, D = F.dirs, o = F.Origin (section 3)."""
    m = np.asarray(m, dtype=float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dirs = m[:3, :3] / spacing
    direction = F @ dirs
    origin = F @ m[:3, 3]
    return tuple(float(v) for v in origin), tuple(float(v) for v in spacing), tuple(float(v) for v in direction.ravel())


def right_handed(array: np.ndarray, ijk_to_ras: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Slicer >= 5.8 loading: a left-handed IJK system is reversed along K (sections 2 and 3).

    new IJKToRAS = old . Translate(0, 0, K-1) . Scale(1, 1, -1); the voxels are array[::-1].
    """
    if np.linalg.det(ijk_to_ras[:3, :3]) >= 0:
        return array, ijk_to_ras
    k = array.shape[0]
    translate = np.eye(4)
    translate[2, 3] = k - 1
    scale = np.diag([1.0, 1.0, -1.0, 1.0])
    return np.ascontiguousarray(array[::-1]), ijk_to_ras @ translate @ scale
