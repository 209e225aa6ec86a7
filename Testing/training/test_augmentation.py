"""Training augmentation: the texture option makes smooth slices sharper and noisier, as thin-slice
CT looks next to the thick, upsampled slices a model may be trained on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from CTExplainTraining.config import make_config
from CTExplainTraining.data import IMAGE, augmentation


def high_frequency(image: np.ndarray) -> float:
    """Mean absolute Laplacian: the fine detail (edges, noise) of a 2D image."""
    return float(np.abs(sitk.GetArrayFromImage(sitk.Laplacian(sitk.GetImageFromArray(image)))).mean())


def test_texture_augmentation_adds_fine_detail(data_dir: Path, tmp_path: Path) -> None:
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz")))
    slice_ = np.clip((ct[15].astype(np.float32) + 1000) / 1400, 0, 1)  # a smooth 3 mm slice, in [0, 1]
    plain = dict(manifest=str(tmp_path), task="segmentation", out=str(tmp_path), spatial_dims=2, flip_axes=[],
                 rotate_degrees=0.0, scale_range=0.0, intensity_jitter=0.0)
    without = augmentation(make_config(plain), [IMAGE], 2)
    textured = augmentation(make_config({**plain, "texture_prob": 1.0}), [IMAGE], 2)
    torch.manual_seed(0)
    without.set_random_state(0)
    textured.set_random_state(0)
    base = np.asarray(without({IMAGE: torch.from_numpy(slice_)[None]})[IMAGE][0])
    sharp = np.asarray(textured({IMAGE: torch.from_numpy(slice_)[None]})[IMAGE][0])
    assert base.shape == sharp.shape == slice_.shape
    assert high_frequency(base) < 1.05 * high_frequency(slice_)  # no texture option: no added detail
    assert high_frequency(sharp) > 2 * high_frequency(slice_)
