"""What to train on: a CSV manifest or class folders, read into a checked :class:`Manifest`.

Every problem a run would otherwise meet hours later (a missing image, a label nobody
defined, a patient in both train and test, a class without examples) is raised here as one
:class:`ManifestError` naming the file, the CSV row and the problem, before any training.

CSV conventions (one row per example; the header names the columns):

- ``binary``: one label column (default ``label``) of 0/1 (also true/false, yes/no);
  ``classes`` is the one positive class name (default: the column's name).
- ``multiclass``: one label column (default ``label``) holding class names; ``classes`` is the
  given list, or the sorted distinct values.
- ``multilabel``: several 0/1 label columns (default: every column that is not the image,
  mask, patient or split column); ``classes`` names them in order (default: the column names).
- ``segmentation``: image and mask columns; ``classes`` (the segment names, background
  first) must be given.

Optional columns: ``patient`` (default: the image path relative to the CSV's folder, without
its image suffix), ``split`` (train, val, test; ``valid``/``validation`` read as val) and
``slice``: for 2D slice models trained on volumes, one row per axial slice ``k`` (0-based, in
the volume's own index order) with that slice's labels; rows of one volume share its image.
Image and mask paths are taken relative to the CSV's folder. Example::

    from CTExplainTraining.manifest import read_manifest
    manifest = read_manifest("cases.csv", "multilabel", label_columns=["bleed", "fracture"])
    len(manifest.examples), manifest.classes
"""
from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from CTExplainLib.errors import InputError
from CTExplainLib.loading.image_file import volume_file_format
from CTExplainLib.loading.image_stack import IMAGE_SUFFIXES

LOG = logging.getLogger(__name__)

TASKS = ("binary", "multiclass", "multilabel", "segmentation")
SPLITS = ("train", "val", "test")
PathLike = Union[str, Path]

_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_TRUE = ("1", "1.0", "true", "yes")
_FALSE = ("0", "0.0", "false", "no")
_FILE_SUFFIXES = tuple(IMAGE_SUFFIXES) + (".bmp", ".tif", ".tiff", ".dcm")
_MAX_LISTED = 100  # problems listed one by one in a message; the count always covers all


class ManifestError(InputError):
    """A manifest cannot be trained on; the message names the file, the row and the problem."""


@dataclass
class Example:
    """One training example: an image (file or folder) and its target or mask."""

    image: Path
    target: Optional[np.ndarray]
    mask: Optional[Path]
    patient: str
    split: Optional[str]
    row: int
    slice: Optional[int] = None  # axial index k of a slice row; None: the whole image


@dataclass
class Manifest:
    """The examples of one task, with the class (or segment) names in target order."""

    task: str
    classes: List[str]
    examples: List[Example]
    source: Path


def read_manifest(
    path: PathLike,
    task: str,
    label_columns: Optional[Sequence[str]] = None,
    classes: Optional[Sequence[str]] = None,
    image_column: str = "image",
    mask_column: str = "mask",
    patient_column: Optional[str] = "patient",
    split_column: Optional[str] = "split",
    slice_column: Optional[str] = "slice",
) -> Manifest:
    """Read and check the CSV manifest at ``path`` for ``task`` (see the module docstring).

    ``patient_column`` and ``split_column`` are optional: absent from the header (or None),
    the defaults apply. Raises :class:`ManifestError` for anything that would fail training.
    """
    path = Path(path)
    _check_task(path, task)
    header, rows = _read_csv(path)
    folder = path.parent
    slice_column = slice_column if slice_column in header else None
    label_columns = _label_columns(path, task, header, label_columns, image_column, mask_column, patient_column, split_column, slice_column)
    required = [image_column] + label_columns + ([mask_column] if task == "segmentation" else [])
    missing = [c for c in dict.fromkeys(required) if c not in header]
    if missing:
        raise ManifestError(path, f"missing column(s) {', '.join(missing)}; the header has {', '.join(header)}")
    names = _class_names(path, task, label_columns, classes, rows)

    problems: List[str] = []
    examples: List[Example] = []
    for line, values in rows:
        image_text = values.get(image_column, "").strip()
        if not image_text:
            problems.append(f"row {line}: column {image_column} is empty")
            continue
        image = _resolve(folder, image_text)
        # Classifiers may have masks too: point models cut their box around the outline.
        mask_text = values.get(mask_column, "").strip()
        if task == "segmentation" and not mask_text:
            problems.append(f"row {line}: column {mask_column} is empty")
            continue
        mask = _resolve(folder, mask_text) if mask_text else None
        target = None if task == "segmentation" else _target(task, names, label_columns, line, values, problems)
        split = None
        if split_column and split_column in header:
            split = _split(values.get(split_column, ""), line, split_column, problems)
        patient = values.get(patient_column, "").strip() if patient_column and patient_column in header else ""
        index = _slice_index(values.get(slice_column, ""), line, slice_column, problems) if slice_column else None
        examples.append(Example(image, target, mask, patient or _default_patient(image, folder), split, line, index))
    if problems:
        raise ManifestError(path, _listed(f"{len(problems)} row problem(s)", problems))
    manifest = Manifest(task, names, examples, path)
    check_manifest(manifest)
    LOG.info("%s: %d %s examples, classes %s", path, len(examples), task, ", ".join(names))
    return manifest


def read_class_folders(
    root: PathLike,
    task: str = "multiclass",
    classes: Optional[Sequence[str]] = None,
    split: Optional[str] = None,
) -> Manifest:
    """Examples from ``root/<class>/<file>``, or ``root/<split>/<class>/<file>`` with split folders.

    Split folders are ``train``, ``val`` or ``valid`` (read as val) and ``test``. With split
    folders, ``split`` reads only that split; without them, it is the split given to every
    example. A file is one example (PNG/JPEG/TIFF/BMP/DICOM/NIfTI/NRRD/MetaImage); a subfolder
    is one example too (a DICOM series or a slice stack). ``multiclass``: ``classes`` is the
    class folders' order (default: sorted names); ``binary``: ``classes`` is the one positive
    folder, every other folder is negative. The patient of an example is its path below
    ``root`` without suffix (nothing tells two images of one patient apart here).
    """
    root = Path(root)
    if task not in ("binary", "multiclass"):
        raise ManifestError(root, f"class folders hold binary or multiclass examples, not {task!r}")
    if not root.is_dir():
        raise ManifestError(root, "no such folder")
    wanted = _split_name(split, root) if split is not None else None
    children = _subfolders(root)
    split_folders = {c: _SPLIT_NAMES[c.name.lower()] for c in children if c.name.lower() in ("train", "val", "valid", "test")}
    if split_folders:
        others = [c.name for c in children if c not in split_folders]
        if others:
            raise ManifestError(root, f"mixes split folders ({', '.join(sorted(c.name for c in split_folders))}) with other folders ({', '.join(sorted(others))})")
        groups = [(s, folder) for folder, s in sorted(split_folders.items()) if wanted is None or s == wanted]
        if not groups:
            raise ManifestError(root, f"has no {wanted!r} split folder; it has {', '.join(sorted(c.name for c in split_folders))}")
    else:
        groups = [(wanted, root)]

    found: List[Tuple[str, Path, Optional[str]]] = []  # (class folder name, entry, split)
    for split_value, base in groups:
        for class_folder in _subfolders(base):
            for entry in sorted(class_folder.iterdir()):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir() or entry.name.lower().endswith(_FILE_SUFFIXES) or volume_file_format(entry):
                    found.append((class_folder.name, entry, split_value))
                else:
                    LOG.debug("%s: not an image, skipped", entry)
    if not found:
        raise ManifestError(root, "no images found in class folders (expected root/<class>/<file> or root/<split>/<class>/<file>)")
    folder_names = sorted({name for name, _, _ in found})
    if task == "binary":
        if classes is None or len(classes) != 1:
            raise ManifestError(root, f"binary class folders need classes=[<positive folder>]; the folders are {', '.join(folder_names)}")
        names = [str(classes[0])]
        if names[0] not in folder_names:
            raise ManifestError(root, f"class {names[0]!r} has no examples: no folder of that name ({', '.join(folder_names)})")
    else:
        names = [str(c) for c in classes] if classes is not None else folder_names
        unknown = [n for n in folder_names if n not in names]
        if unknown:
            raise ManifestError(root, f"folder(s) {', '.join(unknown)} are not among the classes {', '.join(names)}")

    examples = []
    for name, entry, split_value in found:
        if task == "binary":
            target = np.array([1.0 if name == names[0] else 0.0], dtype=np.float32)
        else:
            target = np.zeros(len(names), dtype=np.float32)
            target[names.index(name)] = 1.0
        patient = _strip_suffix(entry.relative_to(root).as_posix()) if entry.is_file() else entry.relative_to(root).as_posix()
        examples.append(Example(entry, target, None, patient, split_value, 0))
    manifest = Manifest(task, names, examples, root)
    check_manifest(manifest)
    LOG.info("%s: %d %s examples in class folders, classes %s", root, len(examples), task, ", ".join(names))
    return manifest


def check_manifest(manifest: Manifest, need_splits: Sequence[str] = ()) -> None:
    """Raise :class:`ManifestError` if ``manifest`` cannot be trained on.

    Checks: not empty; targets match the classes; every image (and mask) exists; no image
    twice; every class has positive examples (binary and multilabel: negative ones too); no
    patient in two splits; each split in ``need_splits`` has examples.
    """
    source = manifest.source
    _check_task(source, manifest.task)
    examples = manifest.examples
    if not examples:
        raise ManifestError(source, "has no examples")
    if not manifest.classes:
        raise ManifestError(source, "names no classes")

    n_classes = len(manifest.classes)
    if manifest.task == "binary" and n_classes != 1:
        raise ManifestError(source, f"a binary task has one (positive) class name, not {n_classes}: {', '.join(manifest.classes)}")
    if manifest.task == "segmentation":
        if n_classes < 2:
            raise ManifestError(source, "segmentation needs the segment names, background first, and at least one segment")
        no_mask = [_where(e) for e in examples if e.mask is None]
        if no_mask:
            raise ManifestError(source, _listed(f"{len(no_mask)} of {len(examples)} examples have no mask", no_mask))
    else:
        bad = [_where(e) for e in examples if e.target is None or np.shape(e.target) != (n_classes,)]
        if bad:
            raise ManifestError(source, _listed(f"{len(bad)} of {len(examples)} targets are not vectors of {n_classes} values", bad))

    missing = [_where_path(e, e.image) for e in examples if not e.image.exists()]
    if missing:
        raise ManifestError(source, _listed(f"{len(missing)} of {len(examples)} images are missing", missing))
    missing = [_where_path(e, e.mask) for e in examples if e.mask is not None and not e.mask.exists()]
    if missing:
        raise ManifestError(source, _listed(f"{len(missing)} of {len(examples)} masks are missing", missing))

    by_image: Dict[Tuple[str, Optional[int]], List[Example]] = defaultdict(list)
    for e in examples:
        by_image[(os.path.normcase(str(e.image)), e.slice)].append(e)
    duplicates = [f"{group[0].image} ({', '.join(_where(e) for e in group)})" for group in by_image.values() if len(group) > 1]
    if duplicates:
        raise ManifestError(source, _listed(f"{len(duplicates)} image(s) listed more than once", duplicates))

    if manifest.task != "segmentation":
        targets = np.stack([np.asarray(e.target, dtype=np.float32) for e in examples])
        positives = targets.sum(axis=0)
        negatives = len(examples) - positives
        empty = []
        for name, pos, neg in zip(manifest.classes, positives, negatives):
            if pos == 0:
                empty.append(f"class {name!r} has no (positive) examples")
            elif neg == 0 and manifest.task in ("binary", "multilabel"):
                empty.append(f"class {name!r} has no negative examples (all {len(examples)} are positive)")
        if empty:
            raise ManifestError(source, "; ".join(empty))

    patient_splits: Dict[str, Dict[str, List[Example]]] = defaultdict(lambda: defaultdict(list))
    for e in examples:
        patient_splits[e.patient][e.split or "no split"].append(e)
    leaks = []
    for patient, splits in patient_splits.items():
        # A patient with rows in two splits, or with a split on some rows and none on others
        # (those would be assigned later and could land beside the test rows), leaks.
        if len(splits) > 1:
            parts = [f"{s} ({', '.join(_where(e) for e in group)})" for s, group in sorted(splits.items())]
            leaks.append(f"patient {patient!r} is in {' and '.join(parts)}")
    if leaks:
        raise ManifestError(source, _listed(f"{len(leaks)} patient(s) in more than one split", leaks))

    for wanted in need_splits:
        name = _split_name(wanted, source)
        if not any(e.split == name for e in examples):
            present = sorted({e.split for e in examples if e.split is not None})
            raise ManifestError(source, f"has no {name!r} examples (splits present: {', '.join(present) or 'none'})")


# --- helpers ---------------------------------------------------------------------------


def _check_task(path: Path, task: str) -> None:
    if task not in TASKS:
        raise ManifestError(path, f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def _read_csv(path: Path) -> Tuple[List[str], List[Tuple[int, Dict[str, str]]]]:
    """The header and the non-blank rows with their 1-based line numbers."""
    if not path.is_file():
        raise ManifestError(path, "no such manifest file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise ManifestError(path, "is empty (no header row)")
            header = [h.strip() for h in header]
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise ManifestError(path, f"header repeats column(s) {', '.join(repeated)}")
            rows = []
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                if len(values) > len(header):
                    raise ManifestError(path, f"row {reader.line_num} has {len(values)} values but the header has {len(header)} columns")
                rows.append((reader.line_num, dict(zip(header, values))))
    except UnicodeDecodeError as exc:
        raise ManifestError(path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise ManifestError(path, f"is not a readable CSV: {exc}") from exc
    if not rows:
        raise ManifestError(path, "has a header but no examples")
    return header, rows


def _label_columns(
    path: Path,
    task: str,
    header: List[str],
    given: Optional[Sequence[str]],
    image_column: str,
    mask_column: str,
    patient_column: Optional[str],
    split_column: Optional[str],
    slice_column: Optional[str] = None,
) -> List[str]:
    if task == "segmentation":
        return []
    if given is not None:
        columns = [str(c) for c in given]
    elif task == "multilabel":
        reserved = {image_column, mask_column, patient_column, split_column, slice_column}
        columns = [c for c in header if c not in reserved]
    else:
        columns = ["label"]
    if task in ("binary", "multiclass") and len(columns) != 1:
        raise ManifestError(path, f"a {task} manifest has one label column, not {len(columns)} ({', '.join(columns)})")
    if not columns:
        raise ManifestError(path, "a multilabel manifest needs label columns; the header has none besides image/mask/patient/split")
    return columns


def _class_names(
    path: Path, task: str, label_columns: List[str], classes: Optional[Sequence[str]], rows: List[Tuple[int, Dict[str, str]]]
) -> List[str]:
    names = [str(c) for c in classes] if classes is not None else None
    if names is not None and len(set(names)) != len(names):
        raise ManifestError(path, f"class names repeat: {', '.join(names)}")
    if task == "segmentation":
        if not names or len(names) < 2:
            raise ManifestError(path, "segmentation needs classes=[segment names], background first, and at least one segment")
        return names
    if task == "binary":
        if names is None:
            return [label_columns[0]]
        if len(names) != 1:
            raise ManifestError(path, f"a binary task takes one (positive) class name, not {len(names)}: {', '.join(names)}")
        return names
    if task == "multilabel":
        if names is None:
            return list(label_columns)
        if len(names) != len(label_columns):
            raise ManifestError(path, f"{len(names)} class names for {len(label_columns)} label columns ({', '.join(label_columns)})")
        return names
    if names is not None:
        return names
    values = sorted({values.get(label_columns[0], "").strip() for _, values in rows} - {""})
    return values


def _target(
    task: str, names: List[str], label_columns: List[str], line: int, values: Dict[str, str], problems: List[str]
) -> Optional[np.ndarray]:
    target = np.zeros(len(names), dtype=np.float32)
    if task == "multiclass":
        column = label_columns[0]
        value = values.get(column, "").strip()
        if value not in names:
            problems.append(f"row {line}: column {column} has unknown class {value!r}; allowed: {', '.join(names)}")
            return None
        target[names.index(value)] = 1.0
        return target
    ok = True
    for i, column in enumerate(label_columns):
        value = values.get(column, "").strip()
        if value.lower() in _TRUE:
            target[i] = 1.0
        elif value.lower() not in _FALSE:
            problems.append(f"row {line}: column {column} has {value!r}; allowed: 0/1, true/false, yes/no")
            ok = False
    return target if ok else None


def _slice_index(value: str, line: int, column: str, problems: List[str]) -> Optional[int]:
    text = value.strip()
    if not text:
        return None
    if not text.isdigit():
        problems.append(f"row {line}: column {column} must be a slice index 0, 1, 2, ..., got {text!r}")
        return None
    return int(text)


def _split(value: str, line: int, column: str, problems: List[str]) -> Optional[str]:
    value = value.strip()
    if not value:
        return None
    name = _SPLIT_NAMES.get(value.lower())
    if name is None:
        problems.append(f"row {line}: column {column} has unknown split {value!r}; allowed: train, val (valid), test or empty")
    return name


def _split_name(value: str, source: Path) -> str:
    name = _SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise ManifestError(source, f"unknown split {value!r}; expected train, val (valid) or test")
    return name


def _resolve(folder: Path, text: str) -> Path:
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = folder / path
    return Path(os.path.normpath(os.path.abspath(path)))


def _strip_suffix(name: str) -> str:
    lowered = name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd") + _FILE_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _default_patient(image: Path, folder: Path) -> str:
    """The image path below the manifest's folder (or its name), without its image suffix."""
    try:
        relative = image.relative_to(Path(os.path.normpath(os.path.abspath(folder)))).as_posix()
    except ValueError:
        relative = image.name
    return _strip_suffix(relative)


def _subfolders(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _where(example: Example) -> str:
    return f"row {example.row}" if example.row else str(example.image)


def _where_path(example: Example, path: Path) -> str:
    return f"row {example.row} {path}" if example.row else str(path)


def _listed(summary: str, items: List[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f", ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"{summary}: {', '.join(shown)}{more}"
