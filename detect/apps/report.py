"""`python -m detect report runs/NAME`: a self-contained HTML page about one evaluated run.

    runs/NAME/report/index.html       the page (inline CSS, no external resources)
    runs/NAME/report/curves.png       losses and val F1 / mAP per epoch (metrics.csv)
    runs/NAME/report/confusion.png    class confusion of matched detections
    runs/NAME/report/tiou.png         tIoU of matched detections
    runs/NAME/report/timeline-NNNN.png  per video of the subset: ground truth vs detections

It reads what `python -m detect eval` wrote (metrics.json, predictions.json: the detections above
the run's score threshold, the ones F1 is computed on) and never runs the model itself.

Matching for the confusion and the tIoU histogram is class-agnostic, to show *which* class a
detection confuses a gesture with: a detection matches the ground truth of its own class with the
highest tIoU > match_iou if there is one (then it is a correct detection under the MiGA rule),
else the ground truth of any class with the highest tIoU > match_iou, else nothing.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from tqdm import tqdm

from detect.data.annotations import SUBSETS, Annotations, load_annotations
from detect.inference.detections import Detections, load_predictions, tiou
from detect.runs import read_run
from extract.io import RunError, atomic_write_bytes, read_metrics_rows

REPORT_DIR = "report"
INDEX = "index.html"
TIMELINE_GLOB = "timeline-*.png"


class ReportError(RunError):
    """The run cannot be reported on (not evaluated, stale or malformed outputs). A RunError, so
    the CLI prints it as a one-line error."""


def match_any_class(
    detections: Detections, gt_segments: np.ndarray, gt_labels: np.ndarray, match_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Class-agnostic matching of one video's detections (module docstring).

    gt_segments: (m, 2) seconds; gt_labels: (m,). Returns the matched ground truth per detection,
    (n,) int64 (-1 for none), and its tIoU, (n,) float64 (0 for none). Several detections may
    match one ground truth. Ties in tIoU go to the lower ground-truth index.
    """
    n = len(detections)
    gt_segments = np.asarray(gt_segments, np.float64).reshape(-1, 2)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    if n == 0 or gt_labels.size == 0:
        return np.full(n, -1, np.int64), np.zeros(n)
    iou = tiou(detections.segments, gt_segments)  # (n, m)
    same = detections.label[:, None] == gt_labels[None, :]
    # tIoU is in [0, 1], so +2 ranks every same-class candidate above every other-class one.
    key = np.where(iou > match_iou, iou + 2.0 * same, -1.0)
    j = key.argmax(axis=1)
    best = np.take_along_axis(iou, j[:, None], axis=1)[:, 0]
    ok = np.take_along_axis(key, j[:, None], axis=1)[:, 0] >= 0
    return np.where(ok, j, -1).astype(np.int64), np.where(ok, best, 0.0)


@dataclass
class MatchSummary:
    """Class-agnostic matches over a subset.

    confusion: (C+1, C+1) int64. Rows 0..C-1 are ground-truth classes, row C "background"
    (detections matching no ground truth); columns 0..C-1 are predicted classes, column C
    "missed" (ground truths matched by no detection). Cell [g, p] counts detections of class p
    matching a ground truth of class g, so columns sum to the detections per class.
    tiou: (M,) float64, the tIoU of each matching detection; same_class: (M,) bool, whether its
    class is the ground truth's.
    """

    confusion: np.ndarray
    tiou: np.ndarray
    same_class: np.ndarray


def match_summary(
    predictions: dict[str, Detections],
    annotations: Annotations,
    subset: str,
    match_iou: float = 0.3,
) -> MatchSummary:
    """The confusion and matched tIoUs of `predictions` on every video of `subset`."""
    C = annotations.num_classes
    counts = np.zeros((C + 1) * (C + 1), np.int64)
    ious, same = [], []
    for vid in annotations.subset(subset).video_ids():
        g = annotations.videos[vid]
        d = predictions.get(vid, Detections.empty())
        if len(d) and (d.label.min() < 0 or d.label.max() >= C):
            raise ValueError(f"video {vid!r}: prediction labels outside [0, {C})")
        j, iou = match_any_class(d, g.segments, g.labels, match_iou)
        hit = j >= 0
        rows = np.where(hit, g.labels[np.maximum(j, 0)] if len(g) else C, C)
        counts += np.bincount(rows * (C + 1) + d.label, minlength=counts.size)
        matched_gt = np.zeros(len(g), bool)
        matched_gt[j[hit]] = True
        counts += np.bincount(g.labels[~matched_gt] * (C + 1) + C, minlength=counts.size)
        ious.append(iou[hit])
        same.append(d.label[hit] == g.labels[j[hit]])
    return MatchSummary(
        confusion=counts.reshape(C + 1, C + 1),
        tiou=np.concatenate(ious) if ious else np.zeros(0),
        same_class=np.concatenate(same) if same else np.zeros(0, bool),
    )


# ---------------------------------------------------------------------------- inputs


def _eval_hint(run: Path, subset: str) -> str:
    return f"run `python -m detect eval {run} --subset {subset}` first"


def _read_metrics(run: Path, subset: str) -> dict[str, Any]:
    path = run / "metrics.json"
    if not path.is_file():
        raise ReportError(f"{path} not found: the run has not been evaluated; "
                          f"{_eval_hint(run, subset)}")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e}); {_eval_hint(run, subset)}") from e
    if not isinstance(metrics, dict):
        raise ReportError(f"{path}: expected a JSON object; {_eval_hint(run, subset)}")
    for key in ("subset", "per_class", "match_iou", "threshold", "num_predictions"):
        if key not in metrics:
            raise ReportError(f"{path}: key {key!r} is missing; {_eval_hint(run, subset)}")
    if metrics["subset"] != subset:
        raise ReportError(
            f"{path} is for subset {metrics['subset']!r}, not {subset!r}; {_eval_hint(run, subset)}"
        )
    return metrics


def _load_inputs(
    run: Path, subset: str
) -> tuple[dict[str, Any], Annotations, dict[str, Detections], list[dict[str, str]]]:
    """metrics.json, the annotations, predictions.json and metrics.csv rows of an evaluated run."""
    if subset not in SUBSETS:
        raise ReportError(f"unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    _, info = read_run(run)
    metrics = _read_metrics(run, subset)
    pred_path = run / "predictions.json"
    if not pred_path.is_file():
        raise ReportError(f"{pred_path} not found; {_eval_hint(run, subset)}")
    ann = load_annotations(Path(info["annotations"]))
    preds = load_predictions(pred_path, classes=ann.classes)
    unknown = sorted(set(preds) - set(ann.videos))
    if unknown:
        raise ReportError(f"{pred_path}: video(s) not in {info['annotations']}: "
                          f"{', '.join(map(repr, unknown[:5]))}")
    in_subset = ann.subset(subset).videos
    n = sum(len(d) for v, d in preds.items() if v in in_subset)
    if n != metrics["num_predictions"]:
        raise ReportError(
            f"{pred_path} holds {n} detections on {subset!r} but {run / 'metrics.json'} counts "
            f"{metrics['num_predictions']}: the files are from different evaluations; "
            f"{_eval_hint(run, subset)}"
        )
    return metrics, ann, preds, read_metrics_rows(run)


# ---------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1340px; padding: 0 16px; color: #1f2933; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: 4px; } h2 { margin-top: 32px; font-size: 1.2em;
     border-bottom: 1px solid #d9e2ec; padding-bottom: 4px; }
.muted { color: #627d98; } img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e7eb; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f4f8; position: sticky; top: 0; }
.headline td { font-size: 1.05em; } .video { margin: 18px 0; }
.broken { border: 2px solid #d64545; padding: 8px; color: #d64545; }
figure { margin: 8px 0; } figcaption { color: #627d98; font-size: 0.9em; }
"""

# Marks the page (data-images="ok" or "broken N") and flags every image that failed to load, so
# a missing PNG is visible to the reader instead of an empty gap.
SCRIPT = """
window.addEventListener("load", function () {
  var bad = 0;
  Array.prototype.forEach.call(document.images, function (img) {
    if (!(img.complete && img.naturalWidth > 0)) {
      bad += 1;
      var note = document.createElement("p");
      note.className = "broken";
      note.textContent = "image not found: " + img.getAttribute("src");
      img.replaceWith(note);
    }
  });
  document.body.setAttribute("data-images", bad ? "broken " + bad : "ok");
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; every cell is escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    c = f' class="{_e(cls)}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(name: str, alt: str) -> str:
    return f'<img src="{_e(quote(name))}" alt="{_e(alt)}">'


def per_class_rows(metrics: dict[str, Any], classes: Sequence[str]) -> list[list[str]]:
    """Rows (class, AP, P, R, F1, support, predictions) in the annotations' class order."""
    per = metrics["per_class"]
    rows = []
    for name in [*classes, *sorted(set(per) - set(classes))]:
        m = per.get(name)
        if m is None:
            continue
        rows.append([name, _num(m.get("ap")), _num(m.get("precision")), _num(m.get("recall")),
                     _num(m.get("f1")), _num(m.get("support")), _num(m.get("predictions"))])
    return rows


def render_page(
    title: str,
    metrics: dict[str, Any],
    classes: Sequence[str],
    summary: MatchSummary,
    videos: Sequence[dict[str, Any]],
) -> str:
    """The HTML of the report. `videos`: dicts with id, image, num_gt, num_pred, matched."""
    headline = [
        ["F1 (MiGA, tIoU > {:g})".format(metrics["match_iou"]), _num(metrics.get("f1_miga"), 4),
         _num(metrics.get("precision_miga"), 4), _num(metrics.get("recall_miga"), 4)],
        ["F1 (strict one-to-one)", _num(metrics.get("f1_strict"), 4),
         _num(metrics.get("precision_strict"), 4), _num(metrics.get("recall_strict"), 4)],
        ["mAP (tIoU 0.1:0.9)", _num(metrics.get("map"), 4), "", ""],
    ]
    facts = (
        f"subset <b>{_e(metrics['subset'])}</b>: "
        f"{_e(_plural(metrics.get('num_videos', len(videos)), 'video'))}, "
        f"{_e(_plural(metrics.get('num_ground_truth', 0), 'ground truth'))}, "
        f"{_e(_plural(metrics['num_predictions'], 'detection'))} at score &ge; "
        f"{_e(_num(metrics['threshold'], 4))}; checkpoint epoch "
        f"{_e(metrics.get('checkpoint_epoch', '?'))}"
    )
    C = len(classes)
    conf_rows = [
        [name, *(str(int(v)) for v in summary.confusion[i])]
        for i, name in enumerate([*classes, "background"])
    ]
    n_same = int(summary.same_class.sum())
    n_other = int((~summary.same_class).sum())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{facts}</p>',
        _table(["metric", "value", "precision", "recall"], headline, "headline"),
        "<h2>Training</h2>",
        _img("curves.png", "training losses and val metrics per epoch"),
        "<h2>Per class</h2>",
        '<p class="muted">AP on the full ranked list; P, R and F1 by the MiGA rule on the '
        "detections above the threshold.</p>",
        _table(["class", "AP", "P", "R", "F1", "support", "predictions"],
               per_class_rows(metrics, classes)),
        "<h2>Confusion between classes</h2>",
        f'<p class="muted">A detection matches the ground truth with the highest tIoU &gt; '
        f"{_e(_num(metrics['match_iou'], 2))}, of its own class when there is one, else of any "
        "class. Rows: ground-truth class (background: the detection matches nothing); columns: "
        "predicted class (missed: no detection matches the ground truth).</p>",
        _img("confusion.png", "confusion matrix of matched detections"),
        "<details><summary>as a table</summary>",
        _table(["ground truth \\ predicted", *classes, "missed"], conf_rows),
        "</details>",
        "<h2>tIoU of matches</h2>",
        f'<p class="muted">{n_same} detections match a ground truth of their class, '
        f"{n_other} one of another class.</p>",
        _img("tiou.png", "histogram of the tIoU of matched detections"),
        f"<h2>Timelines ({_e(_plural(len(videos), 'video'))})</h2>",
        '<p class="muted">One lane per class: ground truth as grey boxes (upper half), detections '
        "coloured by score (lower half).</p>",
    ]
    for v in videos:
        parts.append(
            '<figure class="video">'
            + _img(v["image"], f"timeline of {v['id']}")
            + f"<figcaption>{_e(v['id'])}: {_e(_plural(v['num_gt'], 'ground truth'))}, "
            f"{_e(_plural(v['num_pred'], 'detection'))}, {_e(v['matched'])} matching a ground "
            "truth of their class</figcaption></figure>"
        )
    if not videos:
        parts.append(f'<p class="muted">The subset has no videos ({C} classes).</p>')
    parts += [f"<script>{SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- entry point


def write_report(
    run: Path, subset: str = "test", out: Path | None = None, progress: bool = True
) -> Path:
    """Write the HTML report of an evaluated run and its PNGs; returns the index.html path.

    `out` defaults to runs/NAME/report. Raises ReportError when the run has not been evaluated on
    `subset` (or its outputs disagree), and MissingMatplotlib without the `report` extra.
    """
    from detect.apps import plots

    run = Path(run)
    plots.require_matplotlib()  # before anything is read or written
    metrics, ann, preds, rows = _load_inputs(run, subset)
    out = Path(out) if out is not None else run / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(TIMELINE_GLOB):  # a previous report may have had more videos
        old.unlink()

    match_iou = float(metrics["match_iou"])
    summary = match_summary(preds, ann, subset, match_iou)
    best = metrics.get("checkpoint_epoch")
    plots.plot_training_curves(rows, out / "curves.png", best if isinstance(best, int) else None)
    plots.plot_confusion(summary.confusion, ann.classes, out / "confusion.png")
    plots.plot_tiou_histogram(summary.tiou[summary.same_class], summary.tiou[~summary.same_class],
                              match_iou, out / "tiou.png")

    sub = ann.subset(subset)
    all_scores = [d.score for v, d in preds.items() if v in sub.videos]
    # The colours span the scores on the page: from the threshold (or the lowest score) to 1.
    scores = [float(s.min()) for s in all_scores if s.size]
    lo = min([float(metrics["threshold"]), *scores]) if scores else 0.0
    norm = plots.score_norm(min(max(lo, 0.0), 0.99), 1.0)
    videos = []
    for i, vid in enumerate(tqdm(sub.video_ids(), desc="report timelines", disable=not progress,
                                 leave=False)):
        g = sub.videos[vid]
        d = preds.get(vid, Detections.empty())
        name = f"timeline-{i:04d}.png"
        plots.plot_timeline(g.segments, g.labels, d, ann.classes, g.duration, out / name,
                            title=vid, norm=norm)
        j, _ = match_any_class(d, g.segments, g.labels, match_iou)
        hit = j >= 0
        same = int((d.label[hit] == g.labels[j[hit]]).sum())
        videos.append({"id": vid, "image": name, "num_gt": len(g), "num_pred": len(d),
                       "matched": same})

    page = render_page(f"mgdet report: {run.resolve().name}", metrics, ann.classes, summary,
                       videos)
    index = out / INDEX
    atomic_write_bytes(index, page.encode("utf-8"))
    return index
