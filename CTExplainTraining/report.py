"""One self-contained HTML report of a training run.

Everything is in the one file: each plot is a PNG drawn with matplotlib (Agg canvas, no
pyplot state) and embedded as a base64 data URI, the CSS is inline, and no address outside
the file is referenced. Images, in this order, each only when its data is there:

- classification: learning curves (``history``), ROC and PR curves per class
  (``probabilities``/``targets``), confusion matrices (``metrics["confusion_matrix"]``, or
  computed from the probabilities), reliability plot (``probabilities``/``targets``), then
  the overlays;
- segmentation: learning curves, then the overlays.

Tables: the metrics summary (``mean ± sd`` where the metrics are a ``summarise_folds``
output), per class (or per segment), per fold and across folds when ``fold_metrics`` is
given, and the run's configuration. Example::

    from CTExplainTraining.report import RunReport, write_report
    write_report(RunReport("ICH, fold 0", "multilabel", names, history, metrics, probs, targets,
                           overlays=[], config={"epochs": 40}), Path("out/report.html"))
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from .metrics import calibration_bins, classification_metrics, curves, summarise_folds

LOG = logging.getLogger(__name__)

_HEADLINE = (
    "accuracy", "balanced_accuracy", "auc_macro", "map_macro", "mcc", "f1_macro", "ece", "subset_accuracy",
    "dice_mean", "iou_mean",
)
_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; height: auto; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figcaption { font-size: .9em; color: #444; }
.note { color: #666; font-size: .9em; }
"""


@dataclass
class RunReport:
    """What a report shows; see the module docstring for which parts become which plots."""

    title: str
    task: str
    class_names: List[str]
    history: List[Dict[str, float]]
    metrics: Dict[str, Any]
    probabilities: Optional[np.ndarray]
    targets: Optional[np.ndarray]
    overlays: List[Tuple[str, np.ndarray]]
    config: Dict[str, Any]
    fold_metrics: Optional[List[Dict[str, Any]]] = None
    sanity_check: Optional[Dict[str, Any]] = None  # CTExplainLib.trust.sanity's record, for classifiers


def write_report(report: RunReport, path: Path) -> Path:
    """Write ``report`` as one HTML file at ``path`` (atomically) and return the path."""
    path = Path(path)
    text = render_report(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target (same file system, so the rename is atomic); created with the
    # umask's permissions, unlike mkstemp's 0600.
    temporary = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    LOG.info("report written to %s", path)
    return path


def render_report(report: RunReport) -> str:
    """The report's HTML text."""
    esc = _esc
    segmentation = report.task == "segmentation"
    parts: List[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
        f"<p>Task: <b>{esc(report.task)}</b>. {'Segments' if segmentation else 'Classes'}: "
        f"{esc(', '.join(str(c) for c in report.class_names))}. "
        f"Written {esc(datetime.datetime.now().isoformat(timespec='seconds'))}.</p>",
    ]

    parts.append("<h2>Metrics</h2>")
    parts.append(_summary_table(report.metrics))
    per_key = "per_segment" if segmentation else "per_class"
    if isinstance(report.metrics.get(per_key), dict):
        parts.append(f"<h2>Per {'segment' if segmentation else 'class'}</h2>")
        parts.append(_per_class_table(report.metrics[per_key], report.class_names, segmentation))
    if report.fold_metrics:
        parts.append("<h2>Folds</h2>")
        parts.append(_fold_table(report.fold_metrics))
        if not _is_summary(report.metrics):
            summary = summarise_folds(report.fold_metrics)
            parts.append("<h3>Across folds (mean ± sd)</h3>")
            parts.append(_summary_table(summary))
            if isinstance(summary.get(per_key), dict):
                parts.append(_per_class_table(summary[per_key], report.class_names, segmentation))

    parts.append("<h2>Learning curves</h2>")
    if report.history:
        parts.append(_img(_learning_curves(report.history), "learning curves"))
    else:
        parts.append('<p class="note">No training history was recorded.</p>')

    if not segmentation:
        parts.extend(_classification_plots(report))

    if report.overlays:
        parts.append("<h2>Overlays</h2>")
        for caption, image in report.overlays:
            parts.append(f"<figure>{_img(_overlay_png(image, caption), caption)}<figcaption>{esc(caption)}</figcaption></figure>")

    if report.sanity_check:
        parts.append("<h2>Sanity check of the maps</h2>")
        parts.append(_sanity_table(report.sanity_check))

    parts.append("<h2>Configuration</h2>")
    parts.append(_config_table(report.config))
    parts.append("</body></html>")
    return "\n".join(parts)


# --- tables ----------------------------------------------------------------------------


def _summary_table(metrics: Dict[str, Any]) -> str:
    keys = [k for k in _HEADLINE if k in metrics]
    keys += [k for k in metrics if k not in keys and k not in ("per_class", "per_segment", "confusion_matrix") and _is_scalar(metrics[k])]
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(metrics[k]))}</td></tr>" for k in keys)
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _per_class_table(per_class: Dict[str, Any], names: Sequence[str], segmentation: bool) -> str:
    order = [str(n) for n in names if str(n) in per_class] + [n for n in per_class if n not in [str(m) for m in names]]
    columns: List[str] = []
    for name in order:
        for key in per_class[name]:
            if key not in columns:
                columns.append(key)
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><td>{_esc(name)}</td>" + "".join(f"<td>{_esc(_fmt(per_class[name].get(c)))}</td>" for c in columns) + "</tr>"
        for name in order
    )
    label = "segment" if segmentation else "class"
    return f"<table><tr><th>{label}</th>{head}</tr>{body}</table>"


def _sanity_table(record: Dict[str, Any]) -> str:
    """Per cascading-randomisation step, the mean (sd) Spearman correlation with the trained maps."""
    rows = "".join(
        f"<tr><td>{_esc(step['layers_randomised'])}</td><td>{_esc(step['layer'])}</td>"
        f"<td>{step['spearman_mean']:+.3f}</td><td>{step['spearman_sd']:.3f}</td></tr>"
        for step in record.get("steps", [])
    )
    note = (f'<p class="note">{_esc(record.get("method", ""))}, on {len(record.get("cases", []))} case(s). '
            f'Verdict: <b>{_esc(record.get("verdict", ""))}</b> ({_esc(record.get("rule", ""))}).</p>')
    return note + "<table><tr><th>step</th><th>layer randomised (and those above)</th><th>Spearman mean</th><th>sd</th></tr>" + rows + "</table>"


def _fold_table(fold_metrics: List[Dict[str, Any]]) -> str:
    columns = [k for k in _HEADLINE if any(k in m for m in fold_metrics)]
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><td>fold {i}</td>" + "".join(f"<td>{_esc(_fmt(m.get(c)))}</td>" for c in columns) + "</tr>"
        for i, m in enumerate(fold_metrics)
    )
    return f"<table><tr><th>fold</th>{head}</tr>{body}</table>"


def _config_table(config: Dict[str, Any]) -> str:
    rows = []
    for key, value in _flatten(config):
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        rows.append(f"<tr><td>{_esc(key)}</td><td style='text-align:left'>{_esc(text)}</td></tr>")
    if not rows:
        return '<p class="note">No settings recorded.</p>'
    return f"<table><tr><th>setting</th><th>value</th></tr>{''.join(rows)}</table>"


def _flatten(config: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    items: List[Tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value))
    return items


# --- plots -----------------------------------------------------------------------------


def _classification_plots(report: RunReport) -> List[str]:
    parts: List[str] = []
    names = [str(c) for c in report.class_names]
    probabilities = targets = None
    if report.probabilities is not None and report.targets is not None:
        probabilities = np.asarray(report.probabilities, dtype=np.float64).reshape(len(report.probabilities), -1)
        targets = np.asarray(report.targets, dtype=np.float64).reshape(len(report.targets), -1)
        parts.append("<h2>ROC and precision–recall curves</h2>")
        roc_pr = curves(probabilities, targets, names)
        parts.append(_img(_roc_pr_figure(roc_pr, report.metrics.get("per_class")), "ROC and precision-recall curves"))
        undefined = [n for n, c in roc_pr.items() if not c["fpr"]]
        if undefined:
            parts.append(f'<p class="note">AUC undefined (targets all one value in this set): {_esc(", ".join(undefined))}.</p>')

    confusion = report.metrics.get("confusion_matrix") or None
    if confusion is None and probabilities is not None:
        threshold = report.metrics.get("threshold", 0.5)
        threshold = threshold.get("mean", 0.5) if isinstance(threshold, dict) else threshold
        confusion = classification_metrics(report.task, probabilities, targets, names, threshold=float(threshold or 0.5))["confusion_matrix"]
    if confusion is not None:
        parts.append("<h2>Confusion matrix</h2>" if report.task == "multiclass" else "<h2>Confusion matrices (per class)</h2>")
        parts.append(_img(_confusion_figure(confusion, names, report.task), "confusion matrices"))
        if report.task == "multiclass":
            parts.append('<p class="note">Rows: true class; columns: predicted class (argmax).</p>')

    if probabilities is not None:
        parts.append("<h2>Calibration</h2>")
        bins = calibration_bins(probabilities, targets, task=report.task)
        parts.append(_img(_calibration_figure(bins, report.metrics.get("ece"), report.task), "reliability plot"))
    return parts


def _learning_curves(history: List[Dict[str, float]]) -> Figure:
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    keys: List[str] = []
    for h in history:
        for k in h:
            if k not in keys and k != "epoch":
                keys.append(k)
    losses = [k for k in keys if k.endswith("loss")]
    metrics = [k for k in keys if k.startswith("val_") and k not in losses]
    figure = Figure(figsize=(12, 3.6))
    axes = figure.subplots(1, 3)
    for ax, group, title in ((axes[0], losses, "loss"), (axes[1], metrics, "validation metrics")):
        for key in group:
            x, y = _series(epochs, history, key)
            ax.plot(x, y, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if group:
            ax.legend(fontsize=8)
    ax = axes[2]
    x, y = _series(epochs, history, "lr")
    if y:
        ax.plot(x, y, color="tab:purple", label="lr")
        if all(v > 0 for v in y):
            ax.set_yscale("log")
        ax.set_ylabel("learning rate")
    fx, fy = _series(epochs, history, "data_fraction")
    if fy:
        twin = ax.twinx()
        twin.plot(fx, fy, color="tab:gray", linestyle="--", label="data_fraction")
        twin.set_ylabel("data fraction")
        twin.set_ylim(0, 1.05)
    ax.set_title("learning rate and data fraction")
    ax.set_xlabel("epoch")
    figure.tight_layout()
    return figure


def _series(epochs: List[float], history: List[Dict[str, float]], key: str) -> Tuple[List[float], List[float]]:
    pairs = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None and np.isfinite(h[key])]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _roc_pr_figure(roc_pr: Dict[str, Dict[str, List[float]]], per_class: Any) -> Figure:
    figure = Figure(figsize=(11, 4.6))
    roc_ax, pr_ax = figure.subplots(1, 2)
    for name, c in roc_pr.items():
        stats = per_class.get(name, {}) if isinstance(per_class, dict) else {}
        if c["fpr"]:
            roc_ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {_fmt(stats.get('auc'))})")
        if c["recall"]:
            pr_ax.step(c["recall"], c["precision"], where="post", label=f"{name} (AP {_fmt(stats.get('average_precision'))})")
    roc_ax.plot([0, 1], [0, 1], color="#aaa", linestyle=":", linewidth=1)
    roc_ax.set(title="ROC (one vs rest)", xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    pr_ax.set(title="precision–recall", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
        else:
            ax.text(0.5, 0.5, "undefined for every class", ha="center", va="center", transform=ax.transAxes)
    figure.tight_layout()
    return figure


def _confusion_figure(confusion: Any, names: List[str], task: str) -> Figure:
    if task == "multiclass":
        matrix = np.asarray(confusion)
        size = max(4.0, 0.7 * len(names) + 2.5)
        figure = Figure(figsize=(size, size))
        ax = figure.subplots()
        _matrix_axes(ax, matrix, names, names)
        ax.set(xlabel="predicted", ylabel="true")
        figure.tight_layout()
        return figure
    panels = [(name, np.asarray(confusion[name])) for name in names if name in confusion]
    columns = min(4, max(1, len(panels)))
    rows = (len(panels) + columns - 1) // columns
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).reshape(-1)
    for ax, (name, matrix) in zip(axes, panels):
        _matrix_axes(ax, matrix, ["neg", "pos"], ["neg", "pos"])
        ax.set_title(name, fontsize=9)
        ax.set(xlabel="predicted", ylabel="true")
    for ax in axes[len(panels):]:
        ax.axis("off")
    figure.tight_layout()
    return figure


def _matrix_axes(ax: Any, matrix: np.ndarray, rows: List[str], columns: List[str]) -> None:
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    top = matrix.max() if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=8, color="white" if top and value > top / 2 else "black")


def _calibration_figure(bins: Dict[str, List[float]], ece: Any, task: str) -> Figure:
    figure = Figure(figsize=(5, 5.4))
    top, bottom = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], color="#aaa", linestyle=":", linewidth=1, label="perfectly calibrated")
    top.plot(bins["mean_predicted"], bins["fraction_positive"], marker="o", label="model")
    what = "top-label confidence" if task == "multiclass" else "predicted probability"
    top.set(ylabel="fraction correct" if task == "multiclass" else "fraction positive", xlim=(0, 1), ylim=(0, 1.02))
    top.set_title(f"reliability (ECE {_fmt(ece)})")
    top.legend(fontsize=8, loc="upper left")
    widths = [u - lo for lo, u in zip(bins["bin_lower"], bins["bin_upper"])]
    bottom.bar(bins["bin_lower"], bins["count"], width=widths, align="edge", color="tab:gray", edgecolor="white")
    bottom.set(xlabel=what, ylabel="count")
    figure.tight_layout()
    return figure


# --- encoding --------------------------------------------------------------------------


def _img(png: Any, alt: str) -> str:
    """An <img> with ``png`` (a Figure, or PNG bytes) embedded as a data URI."""
    if isinstance(png, Figure):
        buffer = io.BytesIO()
        FigureCanvasAgg(png)
        png.savefig(buffer, format="png", dpi=90)
        png = buffer.getvalue()
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _overlay_png(image: np.ndarray, caption: str) -> bytes:
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(f"overlay {caption!r}: expected an RGB(A) uint8 image (H, W, 3), not {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    imsave(buffer, array, format="png")
    return buffer.getvalue()


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _is_stat(value: Any) -> bool:
    return isinstance(value, dict) and "mean" in value and "sd" in value and "n" in value


def _is_summary(metrics: Dict[str, Any]) -> bool:
    return any(_is_stat(v) for v in metrics.values())


def _is_scalar(value: Any) -> bool:
    return value is None or _is_stat(value) or isinstance(value, (int, float, str, np.integer, np.floating))


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if _is_stat(value):
        if value["mean"] is None:
            return f"n/a (undefined in {value.get('n_none', 0)})"
        text = _fmt(value["mean"])
        if value["sd"] is not None:
            text += f" ± {_fmt(value['sd'])}"
        text += f" (n={value['n']}"
        if value.get("n_none"):
            text += f", {value['n_none']} undefined"
        return text + ")"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else f"{float(value):.3f}"
    return str(value)
