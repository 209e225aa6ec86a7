"""Manifests: CSV and class-folder layouts read right, and every unusable one stopped with a
message naming the file, the row and the problem."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from CTExplainTraining.manifest import ManifestError, check_manifest, read_class_folders, read_manifest


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture()
def heads(data_dir: Path) -> List[Path]:
    """Ten real single-slice DICOM files of Slicer's CT head series."""
    return [data_dir / "slicer-cthead" / f"CTHead{i}.dcm" for i in range(1, 11)]


@pytest.fixture()
def volumes(tmp_path: Path) -> List[Path]:
    """Four tiny NIfTI images with label maps beside them, in tmp_path/cases."""
    folder = tmp_path / "cases"
    folder.mkdir()
    paths = []
    for i in range(4):
        image = sitk.GetImageFromArray(np.full((2, 3, 3), i, dtype=np.int16))
        label = sitk.GetImageFromArray((np.arange(18).reshape(2, 3, 3) % 3).astype(np.uint8))
        sitk.WriteImage(image, str(folder / f"case{i}.nii.gz"))
        sitk.WriteImage(label, str(folder / f"case{i}_seg.nii.gz"))
        paths.append(folder / f"case{i}.nii.gz")
    return paths


def test_binary_values_paths_and_defaults(tmp_path: Path, volumes: List[Path]) -> None:
    csv_path = _write_csv(
        tmp_path / "m.csv",
        ["image", "label"],
        [["cases/case0.nii.gz", "0"], ["cases/case1.nii.gz", "Yes"], ["./cases/case2.nii.gz", "TRUE"], [str(volumes[3]), "no"]],
    )
    m = read_manifest(csv_path, "binary", classes=["bleed"])
    assert m.task == "binary" and m.classes == ["bleed"] and m.source == csv_path
    assert [float(e.target[0]) for e in m.examples] == [0.0, 1.0, 1.0, 0.0]
    assert all(e.target.dtype == np.float32 and e.target.shape == (1,) for e in m.examples)
    assert [e.image for e in m.examples] == volumes  # relative paths resolved against the CSV's folder
    assert [e.row for e in m.examples] == [2, 3, 4, 5]
    assert [e.patient for e in m.examples] == ["cases/case0", "cases/case1", "cases/case2", "cases/case3"]
    assert all(e.split is None and e.mask is None for e in m.examples)
    # Without classes, the positive class is named after the label column.
    assert read_manifest(csv_path, "binary").classes == ["label"]


def test_multiclass_classes_and_unknown_value(tmp_path: Path, heads: List[Path]) -> None:
    rows = [[str(h), c, f"p{i}"] for i, (h, c) in enumerate(zip(heads, ["b", "a", "c", "a", "b", "c"]))]
    csv_path = _write_csv(tmp_path / "m.csv", ["image", "diagnosis", "patient"], rows)
    m = read_manifest(csv_path, "multiclass", label_columns=["diagnosis"])
    assert m.classes == ["a", "b", "c"]
    assert np.array_equal(m.examples[0].target, np.array([0, 1, 0], dtype=np.float32))
    assert [e.patient for e in m.examples] == [f"p{i}" for i in range(6)]
    m = read_manifest(csv_path, "multiclass", label_columns=["diagnosis"], classes=["c", "b", "a"])
    assert np.array_equal(m.examples[0].target, np.array([0, 1, 0], dtype=np.float32))
    assert np.array_equal(m.examples[1].target, np.array([0, 0, 1], dtype=np.float32))
    with pytest.raises(ManifestError) as info:
        read_manifest(csv_path, "multiclass", label_columns=["diagnosis"], classes=["a", "b"])
    message = str(info.value)
    assert str(csv_path) in message and "row 4" in message and "diagnosis" in message and "'c'" in message
    assert "allowed: a, b" in message and "row 7" in message  # both bad rows, not only the first
    with pytest.raises(ManifestError, match="class 'd' has no"):
        read_manifest(csv_path, "multiclass", label_columns=["diagnosis"], classes=["a", "b", "c", "d"])


def test_multilabel_columns_and_label_never_positive_or_negative(tmp_path: Path, heads: List[Path]) -> None:
    rows = [[str(h), i % 2, (i + 1) % 2, 1 if i < 2 else 0] for i, h in enumerate(heads[:4])]
    csv_path = _write_csv(tmp_path / "m.csv", ["image", "bleed", "fracture", "edema"], rows)
    m = read_manifest(csv_path, "multilabel")  # label columns: all but image/mask/patient/split
    assert m.classes == ["bleed", "fracture", "edema"]
    assert np.array_equal(m.examples[0].target, np.array([0, 1, 1], dtype=np.float32))
    m = read_manifest(csv_path, "multilabel", label_columns=["edema", "bleed"], classes=["Edema", "Bleed"])
    assert m.classes == ["Edema", "Bleed"] and np.array_equal(m.examples[0].target, [1, 0])

    never = [[str(h), i % 2, 0] for i, h in enumerate(heads[:4])]
    with pytest.raises(ManifestError, match="class 'edema' has no \\(positive\\) examples"):
        read_manifest(_write_csv(tmp_path / "n.csv", ["image", "bleed", "edema"], never), "multilabel")
    always = [[str(h), i % 2, 1] for i, h in enumerate(heads[:4])]
    with pytest.raises(ManifestError, match="class 'edema' has no negative examples"):
        read_manifest(_write_csv(tmp_path / "a.csv", ["image", "bleed", "edema"], always), "multilabel")
    bad = [[str(heads[0]), 1, 0], [str(heads[1]), "maybe", 1]]
    with pytest.raises(ManifestError, match="row 3: column bleed has 'maybe'; allowed: 0/1"):
        read_manifest(_write_csv(tmp_path / "b.csv", ["image", "bleed", "edema"], bad), "multilabel")


def test_segmentation_masks(tmp_path: Path, volumes: List[Path]) -> None:
    rows = [[f"cases/case{i}.nii.gz", f"cases/case{i}_seg.nii.gz", "train" if i < 3 else "valid"] for i in range(4)]
    csv_path = _write_csv(tmp_path / "seg.csv", ["image", "mask", "split"], rows)
    m = read_manifest(csv_path, "segmentation", classes=["background", "liver", "spleen"])
    assert m.classes == ["background", "liver", "spleen"]
    assert [e.split for e in m.examples] == ["train", "train", "train", "val"]  # valid read as val
    assert all(e.target is None and e.mask.name.endswith("_seg.nii.gz") for e in m.examples)
    with pytest.raises(ManifestError, match="segment names"):
        read_manifest(csv_path, "segmentation")
    rows[1][1] = "cases/nothing_seg.nii.gz"
    with pytest.raises(ManifestError, match="1 of 4 masks are missing: row 3 .*nothing_seg.nii.gz"):
        read_manifest(_write_csv(tmp_path / "m.csv", ["image", "mask", "split"], rows), "segmentation", classes=["bg", "a"])
    with pytest.raises(ManifestError, match="missing column\\(s\\) mask"):
        read_manifest(_write_csv(tmp_path / "x.csv", ["image"], [[r[0]] for r in rows]), "segmentation", classes=["bg", "a"])


def test_every_missing_image_is_named(tmp_path: Path, heads: List[Path]) -> None:
    rows = [[str(h), i % 2] for i, h in enumerate(heads)]
    for i in (2, 7, 8):
        rows[i][0] = f"/nowhere/scan{i}.nii.gz"
    csv_path = _write_csv(tmp_path / "m.csv", ["image", "label"], rows)
    with pytest.raises(ManifestError) as info:
        read_manifest(csv_path, "binary")
    message = str(info.value)
    assert message.startswith(f"{csv_path}: 3 of 10 images are missing: row 4 /nowhere/scan2.nii.gz, row 9 ")
    assert "row 10 /nowhere/scan8.nii.gz" in message


def test_patient_in_two_splits(tmp_path: Path, heads: List[Path]) -> None:
    rows = [[str(h), i % 2, f"p{i // 2}", "train" if i < 6 else "test"] for i, h in enumerate(heads)]
    rows[6][2] = "p2"  # p2 has rows 6 and 7 in train, and now row 8 in test
    csv_path = _write_csv(tmp_path / "m.csv", ["image", "label", "patient", "split"], rows)
    with pytest.raises(ManifestError) as info:
        read_manifest(csv_path, "binary")
    message = str(info.value)
    assert "patient 'p2'" in message and "test (row 8)" in message and "train (row 6, row 7)" in message
    rows[6][2] = "p3"
    rows[7][3] = ""  # p3: test on row 8, no split on row 9
    with pytest.raises(ManifestError, match="patient 'p3' is in no split \\(row 9\\) and test \\(row 8\\)"):
        read_manifest(_write_csv(tmp_path / "n.csv", ["image", "label", "patient", "split"], rows), "binary")


def test_structural_errors(tmp_path: Path, heads: List[Path]) -> None:
    header_only = _write_csv(tmp_path / "h.csv", ["image", "label"], [])
    with pytest.raises(ManifestError, match="no examples"):
        read_manifest(header_only, "binary")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="empty"):
        read_manifest(tmp_path / "empty.csv", "binary")
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "absent.csv", "binary")
    rows = [[str(h), i % 2] for i, h in enumerate(heads[:4])]
    with pytest.raises(ManifestError, match="missing column\\(s\\) label; the header has image, target"):
        read_manifest(_write_csv(tmp_path / "c.csv", ["image", "target"], rows), "binary")
    with pytest.raises(ManifestError, match="unknown task"):
        read_manifest(_write_csv(tmp_path / "t.csv", ["image", "label"], rows), "regression")
    rows.append([str(heads[1]).replace("slicer-cthead/", "slicer-cthead/./"), 1])
    with pytest.raises(ManifestError, match="1 image\\(s\\) listed more than once: .*CTHead2.dcm \\(row 3, row 6\\)"):
        read_manifest(_write_csv(tmp_path / "d.csv", ["image", "label"], rows), "binary")
    split_rows = [[str(h), i % 2, "holdout"] for i, h in enumerate(heads[:2])]
    with pytest.raises(ManifestError, match="row 2: column split has unknown split 'holdout'"):
        read_manifest(_write_csv(tmp_path / "s.csv", ["image", "label", "split"], split_rows), "binary")


def test_check_manifest_needed_splits(tmp_path: Path, heads: List[Path]) -> None:
    rows = [[str(h), i % 2, "train" if i < 4 else "val"] for i, h in enumerate(heads[:6])]
    m = read_manifest(_write_csv(tmp_path / "m.csv", ["image", "label", "split"], rows), "binary")
    check_manifest(m, need_splits=("train", "valid"))
    with pytest.raises(ManifestError, match="has no 'test' examples \\(splits present: train, val\\)"):
        check_manifest(m, need_splits=("test",))


def _ct_ich_patient_csv(data_dir: Path, out: Path) -> Dict[str, int]:
    """The per-slice CT-ICH labels reduced to one row per patient; returns positive counts."""
    per_patient: Dict[int, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with open(data_dir / "ct-ich" / "hemorrhage_diagnosis.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            p = per_patient[int(row["PatientNumber"])]
            p["any_hemorrhage"] |= int(row["No_Hemorrhage"]) == 0
            p["intraparenchymal"] |= int(row["Intraparenchymal"])
            p["epidural"] |= int(row["Epidural"])
            p["fracture"] |= int(row["Fracture_Yes_No"])
    labels = ["any_hemorrhage", "intraparenchymal", "epidural", "fracture"]
    rows = [[f"{data_dir}/ct-ich/brain/{n:03d}", f"{n:03d}"] + [int(per_patient[n][k]) for k in labels] for n in sorted(per_patient)]
    _write_csv(out, ["image", "patient"] + labels, rows)
    return {k: sum(int(p[k]) for p in per_patient.values()) for k in labels}


def test_real_ct_ich_patient_manifest(data_dir: Path, tmp_path: Path) -> None:
    counts = _ct_ich_patient_csv(data_dir, tmp_path / "ct_ich.csv")
    m = read_manifest(tmp_path / "ct_ich.csv", "multilabel")
    assert len(m.examples) == 66 and len({e.patient for e in m.examples}) == 66
    assert m.classes == ["any_hemorrhage", "intraparenchymal", "epidural", "fracture"]
    assert all(e.image.is_dir() and e.image.parent.name == "brain" for e in m.examples)
    targets = np.stack([e.target for e in m.examples])
    assert targets.sum(axis=0).tolist() == [counts[c] for c in m.classes]
    assert counts["any_hemorrhage"] == 29  # as the data README says


def test_real_chest_ct_class_folders_with_split_folders(data_dir: Path) -> None:
    root = data_dir / "chest-ct-4class"
    m = read_class_folders(root)
    assert m.classes == ["adenocarcinoma", "large_cell_carcinoma", "normal", "squamous_cell_carcinoma"]
    splits = [e.split for e in m.examples]
    assert set(splits) == {"train", "val", "test"}  # "valid" read as val
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (515, 62, 213)
    assert len({e.patient for e in m.examples}) == len(m.examples)  # file names repeat across folders
    normal = m.classes.index("normal")
    assert sum(1 for e in m.examples if e.split == "test" and e.target[normal] == 1) == 8
    assert all(e.row == 0 and e.target.sum() == 1 for e in m.examples)
    only_test = read_class_folders(root, split="test")
    assert len(only_test.examples) == 213 and {e.split for e in only_test.examples} == {"test"}
    binary = read_class_folders(root, task="binary", classes=["normal"], split="val")
    assert sum(float(e.target[0]) for e in binary.examples) == 3


def test_flat_class_folders(tmp_path: Path, heads: List[Path]) -> None:
    for name, files in (("healthy", heads[:3]), ("sick", heads[3:5])):
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f.name).symlink_to(f)
    (tmp_path / "sick" / "notes.txt").write_text("not an image")
    m = read_class_folders(tmp_path, split="train")
    assert m.classes == ["healthy", "sick"] and len(m.examples) == 5
    assert {e.split for e in m.examples} == {"train"} and m.examples[0].patient == "healthy/CTHead1"
    with pytest.raises(ManifestError, match="folder\\(s\\) sick are not among the classes healthy"):
        read_class_folders(tmp_path, classes=["healthy"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="class 'empty' has no"):
        read_class_folders(tmp_path, classes=["healthy", "sick", "empty"])
    (tmp_path / "test").mkdir()
    with pytest.raises(ManifestError, match="mixes split folders"):
        read_class_folders(tmp_path)


def test_max_parts_are_checked_before_training(tmp_path: Path, volumes: List[Path]) -> None:
    from CTExplainTraining.config import make_config
    from CTExplainTraining.run import load_manifest

    rows = [[f"cases/case{i}.nii.gz", f"cases/case{i}_seg.nii.gz", "train" if i < 3 else "valid"] for i in range(4)]
    csv_path = _write_csv(tmp_path / "seg.csv", ["image", "mask", "split"], rows)
    run = {"manifest": str(csv_path), "task": "segmentation", "out": str(tmp_path / "run"), "classes": ["background", "liver", "spleen"]}
    assert load_manifest(make_config({**run, "max_parts": {"liver": 1}})).classes == ["background", "liver", "spleen"]
    with pytest.raises(ManifestError, match=r"seg.csv: max_parts names lungs, not among its segments \(liver, spleen\)"):
        load_manifest(make_config({**run, "max_parts": {"lungs": 2, "liver": 1}}))
    with pytest.raises(ManifestError, match="whole numbers of at least 1"):
        make_config({**run, "max_parts": {"liver": 0}})
    with pytest.raises(ManifestError, match="max_parts and not_below apply to segmentation only"):
        make_config({**run, "task": "multiclass", "max_parts": {"liver": 1}})
    assert load_manifest(make_config({**run, "not_below": {"spleen": "liver"}})).classes[1:] == ["liver", "spleen"]
    with pytest.raises(ManifestError, match=r"seg.csv: not_below names lungs, not among its segments"):
        load_manifest(make_config({**run, "not_below": {"lungs": "liver"}}))
    with pytest.raises(ManifestError, match=r"seg.csv: not_below names heart, not among its segments"):
        load_manifest(make_config({**run, "not_below": {"liver": "heart"}}))
