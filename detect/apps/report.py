"""`python -m detect report runs/NAME`: one self-contained HTML file about one evaluated run.

    runs/NAME/report/index.html       the page: inline CSS, the figures embedded as data URIs,
                                      nothing fetched; it can be mailed or archived on its own
    runs/NAME/report/curves.png       the same figures as PNG files, for papers and slides:
    runs/NAME/report/confusion.png      losses and val F1 / mAP per epoch (metrics.csv), class
    runs/NAME/report/tiou.png           confusion and tIoU of matched detections, and per video
    runs/NAME/report/timeline-NNNN.png  of the subset its ground truth vs detections

With `linked=True` (`--linked-images`) the page links the PNG files instead of embedding them: a
smaller page for a subset of hundreds of videos, which then needs its folder. A linked image that
is missing is replaced by a visible note, and the page says how many are missing.

The page also says what made the run's features (backbone, weights and digest, resolution,
stride), the config name and the code version, and warns in red when the weights were random.

It reads what `python -m detect eval` wrote (metrics.json, predictions.json: the detections above
the run's score threshold, the ones F1 is computed on) and never runs the model itself.

Two matching rules, each named where it is used. The per-class table is metrics.json's: P, R and
F1 by the MiGA rule (a detection is correct when it overlaps some ground truth of its class at
tIoU > match_iou, so one detection may count for several ground truths). The confusion, the tIoU
histogram and the timeline captions match one-to-one, to show *which* class a detection confuses
a gesture with: first the strict rule (per class, detections by descending score each take the
unmatched ground truth of their class with the highest tIoU > match_iou; these are the diagonal
and the strict F1's hits), then the same greedy pass over the detections and ground truths left,
classes ignored. So each ground truth is counted once: a confusion row sums to its class support.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from detect.config import Config
from detect.data.annotations import SUBSETS, Annotations, load_annotations
from detect.evaluation.metrics import greedy_assign
from detect.inference.detections import Detections, load_predictions, tiou
from detect.runs import features_provenance, random_weights_warning, read_run
from extract.io import RunError, atomic_write_bytes, read_json, read_metrics_rows
from extract.progress import progress as progress_bar

REPORT_DIR = "report"
INDEX = "index.html"
ONLINE_METRICS = "metrics_online.json"  # `eval --online`
TIMELINE_GLOB = "timeline-*.png"


class ReportError(RunError):
    """The run cannot be reported on (not evaluated, stale or malformed outputs). A RunError, so
    the CLI prints it as a one-line error."""


def match_one_to_one(
    detections: Detections, gt_segments: np.ndarray, gt_labels: np.ndarray, match_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of one video's detections (module docstring).

    gt_segments: (m, 2) seconds; gt_labels: (m,). First the strict rule (per class, detections
    by descending score each take the unmatched ground truth of their class with the highest
    tIoU > match_iou), then the same greedy pass over what is left with classes ignored. Returns
    the ground truth each detection took, (n,) int64 (-1 for none), and its tIoU, (n,) float64
    (0 for none). Each ground truth is taken at most once.
    """
    n = len(detections)
    gt_segments = np.asarray(gt_segments, np.float64).reshape(-1, 2)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    if n == 0 or gt_labels.size == 0:
        return np.full(n, -1, np.int64), np.zeros(n)
    order = np.argsort(-detections.score, kind="stable")
    iou = tiou(detections.segments[order], gt_segments)  # (n, m), rows by descending score
    same = detections.label[order][:, None] == gt_labels[None, :]
    first = greedy_assign(np.where(same, iou, 0.0), match_iou)
    rest = np.where((first < 0)[:, None], iou, 0.0)
    rest[:, first[first >= 0]] = 0.0
    j_sorted = np.where(first >= 0, first, greedy_assign(rest, match_iou))
    j = np.empty(n, np.int64)
    j[order] = j_sorted
    hs = j_sorted >= 0
    best = np.zeros(n)
    best[order[hs]] = iou[hs, j_sorted[hs]]
    return j, best


@dataclass
class MatchSummary:
    """One-to-one matches over a subset.

    confusion: (C+1, C+1) int64. Rows 0..C-1 are ground-truth classes, row C "background"
    (detections matching no ground truth); columns 0..C-1 are predicted classes, column C
    "missed" (ground truths matched by no detection). Cell [g, p] counts detections of class p
    matching a ground truth of class g. Matching is one-to-one, so row g sums to the support of
    class g, columns 0..C-1 sum to the detections per class, and the diagonal holds the strict
    (one-to-one) hits. tiou: (M,) float64, the tIoU of each matching detection; same_class: (M,)
    bool, whether its class is the ground truth's. matched: per video, its detections matching a
    ground truth of their class (the video's diagonal).
    """

    confusion: np.ndarray
    tiou: np.ndarray
    same_class: np.ndarray
    matched: dict[str, int] = field(default_factory=dict)


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
    matched: dict[str, int] = {}
    for vid in annotations.subset(subset).video_ids():
        g = annotations.videos[vid]
        d = predictions.get(vid, Detections.empty())
        if len(d) and (d.label.min() < 0 or d.label.max() >= C):
            raise ValueError(f"video {vid!r}: prediction labels outside [0, {C})")
        j, iou = match_one_to_one(d, g.segments, g.labels, match_iou)
        hit = j >= 0
        rows = np.where(hit, g.labels[np.maximum(j, 0)] if len(g) else C, C)
        counts += np.bincount(rows * (C + 1) + d.label, minlength=counts.size)
        matched_gt = np.zeros(len(g), bool)
        matched_gt[j[hit]] = True
        counts += np.bincount(g.labels[~matched_gt] * (C + 1) + C, minlength=counts.size)
        ious.append(iou[hit])
        same.append(d.label[hit] == g.labels[j[hit]])
        matched[vid] = int(same[-1].sum())
    return MatchSummary(
        confusion=counts.reshape(C + 1, C + 1),
        tiou=np.concatenate(ious) if ious else np.zeros(0),
        same_class=np.concatenate(same) if same else np.zeros(0, bool),
        matched=matched,
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
) -> tuple[dict[str, Any], Annotations, dict[str, Detections], list[dict[str, str]],
           tuple[Config, dict[str, Any]]]:
    """metrics.json, the annotations, predictions.json, metrics.csv rows and (config, run.json)
    of an evaluated run."""
    if subset not in SUBSETS:
        raise ReportError(f"unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    cfg, info = read_run(run)
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
    return metrics, ann, preds, read_metrics_rows(run), (cfg, info)


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
.warning { background: #d64545; color: #fff; padding: 10px 14px; font-weight: 600; }
.facts td { text-align: left; }
figure { margin: 8px 0; } figcaption { color: #627d98; font-size: 0.9em; }
"""

# Marks the page (data-images="ok" or "broken N") and flags every image that failed to load, so
# a missing PNG is visible to the reader instead of an empty gap. document.images is live:
# replacing an image removes it from the collection, so walk a copy of it.
SCRIPT = """
window.addEventListener("load", function () {
  var bad = 0;
  Array.prototype.slice.call(document.images).forEach(function (img) {
    if (!(img.complete && img.naturalWidth > 0)) {
      bad += 1;
      var note = document.createElement("p");
      note.className = "broken";
      note.textContent = "image not found: " + img.getAttribute("data-name");
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


def _img(name: str, alt: str, images: Mapping[str, bytes] | None) -> str:
    """An image: embedded as a data URI from `images` (name -> PNG bytes), or linked by name."""
    if images is None:
        src = quote(name)
    else:
        src = "data:image/png;base64," + base64.b64encode(images[name]).decode("ascii")
    return f'<img src="{_e(src)}" alt="{_e(alt)}" data-name="{_e(name)}">'


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


@dataclass
class PageContext:
    """What the page says about the run besides its metrics: its name, what made its features
    ((name, value) rows), the config name, the code version and a warning (random weights)."""

    title: str
    features: Sequence[tuple[str, str]] = ()
    config_name: str = ""
    code_version: str = ""
    warning: str | None = None


def _headline(metrics: dict[str, Any], videos: int) -> list[str]:
    rows = [
        ["F1 (MiGA, tIoU > {:g})".format(metrics["match_iou"]), _num(metrics.get("f1_miga"), 4),
         _num(metrics.get("precision_miga"), 4), _num(metrics.get("recall_miga"), 4)],
        ["F1 (strict one-to-one)", _num(metrics.get("f1_strict"), 4),
         _num(metrics.get("precision_strict"), 4), _num(metrics.get("recall_strict"), 4)],
        ["mAP (tIoU 0.1:0.9)", _num(metrics.get("map"), 4), "", ""],
    ]
    facts = (
        f"subset <b>{_e(metrics['subset'])}</b>: "
        f"{_e(_plural(metrics.get('num_videos', videos), 'video'))}, "
        f"{_e(_plural(metrics.get('num_ground_truth', 0), 'ground truth'))}, "
        f"{_e(_plural(metrics['num_predictions'], 'detection'))} at score &ge; "
        f"{_e(_num(metrics['threshold'], 4))} (tuned on val); checkpoint epoch "
        f"{_e(metrics.get('checkpoint_epoch', '?'))}"
    )
    return [f'<p class="muted">{facts}</p>',
            _table(["metric", "value", "precision", "recall"], rows, "headline")]


def _run_facts(ctx: PageContext) -> list[str]:
    parts = []
    if ctx.warning:
        parts.append(f'<p class="warning">{_e(ctx.warning)}</p>')
    rows = [("config", ctx.config_name or "-"), ("code version", ctx.code_version or "-"),
            *ctx.features]
    parts += ["<h2>Run</h2>", _table(["", ""], [list(r) for r in rows], "facts")]
    return parts


def _matching_sections(metrics: dict[str, Any], classes: Sequence[str], summary: MatchSummary,
                       images: Mapping[str, bytes] | None) -> list[str]:
    iou = _e(_num(metrics["match_iou"], 2))
    conf_rows = [
        [name, *(str(int(v)) for v in summary.confusion[i])]
        for i, name in enumerate([*classes, "background"])
    ]
    n_same = int(summary.same_class.sum())
    n_other = int((~summary.same_class).sum())
    return [
        "<h2>Per class</h2>",
        '<p class="muted">AP on the full ranked list. P, R and F1 by the MiGA rule on the '
        f"detections above the threshold: a detection is correct when its tIoU with some ground "
        f"truth of its class is &gt; {iou}, so one detection may count for several ground truths "
        "(the confusion below matches one to one instead).</p>",
        _table(["class", "AP", "P", "R", "F1", "support", "predictions"],
               per_class_rows(metrics, classes)),
        "<h2>Confusion between classes</h2>",
        f'<p class="muted">One-to-one matching at tIoU &gt; {iou}: first each detection, by '
        "descending score, takes the unmatched ground truth of its own class with the highest "
        "tIoU (the diagonal: the strict F1's hits), then what is left is matched the same way "
        "with classes ignored. Rows: ground-truth class, each summing to its support, and "
        "background (detections matching nothing: false alarms and duplicates); columns: "
        "predicted class, each summing to its detections, and missed (ground truths no detection "
        "matched).</p>",
        _img("confusion.png", "confusion matrix of matched detections", images),
        "<details><summary>as a table</summary>",
        _table(["ground truth \\ predicted", *classes, "missed"], conf_rows),
        "</details>",
        "<h2>tIoU of matches</h2>",
        f'<p class="muted">Under the same one-to-one matching: {n_same} detections match a '
        f"ground truth of their class, {n_other} one of another class.</p>",
        _img("tiou.png", "histogram of the tIoU of matched detections", images),
    ]


def render_page(
    ctx: PageContext | str,
    metrics: dict[str, Any],
    classes: Sequence[str],
    summary: MatchSummary,
    videos: Sequence[dict[str, Any]],
    images: Mapping[str, bytes] | None = None,
    online: dict[str, Any] | None = None,
) -> str:
    """The HTML of the report. `videos`: dicts with id, image, num_gt, num_pred, matched.
    `images`: PNG bytes by file name, embedded as data URIs; None links the files instead.
    `online`: metrics_online.json (`eval --online`), shown with its latency curve."""
    ctx = ctx if isinstance(ctx, PageContext) else PageContext(ctx)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(ctx.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(ctx.title)}</h1>",
        *_headline(metrics, len(videos)),
        *_run_facts(ctx),
        "<h2>Training</h2>",
        _img("curves.png", "training losses and val metrics per epoch", images),
        *_matching_sections(metrics, classes, summary, images),
        *(_online_section(online, images) if online is not None else []),
        f"<h2>Timelines ({_e(_plural(len(videos), 'video'))})</h2>",
        '<p class="muted">One lane per class: ground truth as grey boxes (upper half), detections '
        "coloured by score (lower half).</p>",
    ]
    for v in videos:
        parts.append(
            '<figure class="video">'
            + _img(v["image"], f"timeline of {v['id']}", images)
            + f"<figcaption>{_e(v['id'])}: {_e(_plural(v['num_gt'], 'ground truth'))}, "
            f"{_e(_plural(v['num_pred'], 'detection'))}, {_e(v['matched'])} matching a ground "
            "truth of their class one to one</figcaption></figure>"
        )
    if not videos:
        parts.append(f'<p class="muted">The subset has no videos ({len(classes)} classes).</p>')
    parts += [f"<script>{SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- entry point


def write_report(
    run: Path, subset: str = "test", out: Path | None = None, progress: bool = True,
    linked: bool = False,
) -> Path:
    """Write the HTML report of an evaluated run and its PNGs; returns the index.html path.

    `out` defaults to runs/NAME/report. The page embeds the PNGs unless `linked`. Raises
    ReportError when the run has not been evaluated on `subset` (or its outputs disagree), and
    MissingMatplotlib without the `report` extra.
    """
    from detect.apps import plots

    run = Path(run)
    plots.require_matplotlib()  # before anything is read or written
    metrics, ann, preds, rows, (cfg, info) = _load_inputs(run, subset)
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
    videos = _timelines(preds, ann.subset(subset), ann.classes, metrics, summary.matched, out,
                        progress)

    online = _read_online(run, subset)
    names = ["curves.png", "confusion.png", "tiou.png", *(v["image"] for v in videos)]
    if online is not None:
        names.append(_plot_online(online, out / "online.png"))
    images = None if linked else {n: (out / n).read_bytes() for n in names}
    ctx = PageContext(f"mgdet report: {run.resolve().name}", features_provenance(info),
                      cfg.name, _code_version(info), random_weights_warning(info))
    page = render_page(ctx, metrics, ann.classes, summary, videos, images, online)
    index = out / INDEX
    atomic_write_bytes(index, page.encode("utf-8"))
    return index


def _read_online(run: Path, subset: str) -> dict[str, Any] | None:
    """metrics_online.json when `eval --online` scored the same subset, else None."""
    path = run / ONLINE_METRICS
    if not path.is_file():
        return None
    m = read_json(path, "online metrics", ReportError)
    return m if isinstance(m, dict) and m.get("subset") == subset else None


def _plot_online(online: dict[str, Any], path: Path) -> str:
    from detect.apps import plots

    curves: dict[str, list[tuple[float, float]]] = {}
    for r in online.get("curve") or []:
        curves.setdefault(f"D = {r['horizon_s']:g} s", []).append(
            (r["aedt_median_s"], r["f1_strict"]))
    plots.plot_online_curve(curves, path, chosen=(online.get("aedt_median_s"),
                                                  online["f1_strict"]))
    return path.name


def _online_section(m: dict[str, Any], images: Mapping[str, bytes] | None) -> list[str]:
    st = m.get("settings", {})
    rows = [["F1 (MiGA)", _num(m.get("f1_miga"), 4)], ["F1 (strict)", _num(m["f1_strict"], 4)],
            ["mAP", _num(m.get("map"), 4)], ["emitted", str(m.get("emitted", "-"))],
            ["AEDT median / p95 / mean (s)", " / ".join(
                _num(m.get(k), 2) for k in ("aedt_median_s", "aedt_p95_s", "aedt_mean_s"))]]
    setting = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in st.items())
    return [
        "<h2>Online</h2>",
        f'<p class="muted">`eval --online`: the videos replayed step by step from the feature '
        f"set; {_e(setting)}. AEDT: emission time minus the ground-truth end over the strict "
        "true positives. The curve sweeps the horizon D and the emission threshold on this "
        "subset; the star is the operating point, its threshold tuned on val.</p>",
        _table(["online metric", "value"], rows, "headline"),
        *([_img("online.png", "online f1 against emission delay", images)]
          if m.get("curve") else []),
    ]


def _code_version(info: dict[str, Any]) -> str:
    """The mgdet version and git commit that trained the run (run.json's versions)."""
    v = info.get("versions") or {}
    pkg = (v.get("packages") or {}).get("mgdet")
    commit = v.get("git_commit")
    parts = [f"mgdet {pkg}" if pkg else "", f"commit {str(commit)[:12]}" if commit else ""]
    return ", ".join(p for p in parts if p) or "-"


def _timelines(preds: dict[str, Detections], sub: Annotations, classes: list[str],
               metrics: dict[str, Any], matched: dict[str, int], out: Path, progress: bool
               ) -> list[dict[str, Any]]:
    """One timeline PNG per video of the subset; the page's facts about each."""
    from detect.apps import plots

    all_scores = [d.score for v, d in preds.items() if v in sub.videos]
    # The colours span the scores on the page: from the threshold (or the lowest score) to 1.
    scores = [float(s.min()) for s in all_scores if s.size]
    lo = min([float(metrics["threshold"]), *scores]) if scores else 0.0
    norm = plots.score_norm(min(max(lo, 0.0), 0.99), 1.0)
    videos = []
    for i, vid in enumerate(progress_bar(sub.video_ids(), desc="report timelines",
                                         enabled=progress, leave=False)):
        g = sub.videos[vid]
        d = preds.get(vid, Detections.empty())
        name = f"timeline-{i:04d}.png"
        plots.plot_timeline(g.segments, g.labels, d, classes, g.duration, out / name,
                            title=vid, norm=norm)
        videos.append({"id": vid, "image": name, "num_gt": len(g), "num_pred": len(d),
                       "matched": matched[vid]})
    return videos
