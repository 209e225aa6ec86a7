"""TotalSegmentator fixtures → grouped masks: each kept structure gets exactly the voxels of its
TotalSegmentator labels, numbered in the order asked for; the rest is background."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainTraining.datasets.totalsegmentator import GROUPS, group_lookup, prepare


def test_groups_keep_their_labels_voxels_in_the_order_asked(data_dir: Path, tmp_path: Path) -> None:
    root = data_dir / "totalsegmentator"
    manifest = prepare(root, tmp_path, ["liver", "lungs"])
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["patient"], row["split"]) for row in rows] == [("example_ct_sm", "train"), ("example_ct_dicom", "test")]
    names = json.loads((root / "labels_total_v2.json").read_text())
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "example_seg.nii.gz")))
    grouped_image = sitk.ReadImage(rows[0]["mask"])
    grouped = sitk.GetArrayFromImage(grouped_image)
    assert grouped_image.GetSpacing() == (3.0, 3.0, 3.0) and grouped.shape == original.shape
    for index, group in enumerate(["liver", "lungs"], start=1):
        values = [int(v) for v, name in names.items() if re.fullmatch(GROUPS[group], name)]
        expected = np.isin(original, values)
        assert expected.sum() > 1000, group  # both are in this chest-abdomen CT
        np.testing.assert_array_equal(grouped == index, expected)
    assert set(np.unique(grouped)) == {0, 1, 2}


def test_an_unknown_group_is_refused() -> None:
    with pytest.raises(ValueError, match="heart"):
        group_lookup({"1": "spleen"}, ["spleen", "heart"])
