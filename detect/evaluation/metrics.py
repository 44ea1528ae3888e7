"""Detection metrics for micro-gesture online recognition: MiGA F1, strict F1, detection mAP.

All metrics score one subset of an annotation file. Every video of the subset counts: a video
without predictions has all its ground truth missed. Predictions for videos of other subsets are
ignored (one predictions file may cover every subset); predictions for a video the annotation
file does not know are an error (most likely the wrong file).

tIoU uses interval length end - start (`postprocess.tiou`); a zero-length ground truth can
therefore never be matched, as in the organisers' scorer.

- f1_miga: the organisers' starter-kit rule (SMG `THDutils.tester_SMG`): a prediction hits a
  ground truth when the classes agree and tIoU > match_iou (strictly). Each ground truth is
  matched when any prediction hits it (the kit takes the first hit, which does not change the
  count); a prediction may be credited to several ground truths. Counts are pooled over videos:
  P = matched GT / predictions, R = matched GT / GT, F1 = 2PR / (P + R) (0 when P + R = 0).
  Because of the duplicate credit, P (and so F1) can exceed 1 when one prediction covers several
  ground truths; we report it as the kit computes it (f1_strict has no such loophole).
- f1_strict: one-to-one. Per video and class, predictions in descending score each take the
  not-yet-matched ground truth with the highest tIoU when that tIoU > match_iou.
  P = matched predictions / predictions, R = matched predictions / GT.
- map: ActivityNet-style AP per class at each tIoU threshold t (predictions of all videos by
  descending score, greedy one-to-one to the highest-tIoU unmatched GT with tIoU >= t,
  interpolated precision envelope, area under it), mean over the classes with at least one GT;
  `map` is the mean over thresholds. Ties in score keep video order, then detection order.
- per_class: P, R and F1 by the MiGA rule restricted to one class (so they add up to the
  headline counts), AP averaged over thresholds (None for a class without ground truth).
- recall_by_duration: MiGA recall (a ground truth is found when a prediction of its class has
  tIoU > match_iou with it) by ground-truth duration end - start, in the bins cut at
  `DURATION_BINS` seconds ("<0.8s" [0, 0.8), "0.8-2s" [0.8, 2), "2-4s" [2, 4), ">=4s" [4, inf)).
  Each bin gives recall = matched / support (0 when support is 0), matched and support; matched
  and support add up to `matched_gt_miga` and `num_ground_truth`. Durations are rounded to 1e-6 s
  before binning, so a gesture of exactly 20 frames at 25 fps lands in "0.8-2s" however the
  subtraction rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detect.data.annotations import Annotations, VideoAnnotations, load_annotations
from detect.inference.detections import Detections, load_predictions, tiou
from extract.io import atomic_write_json

DEFAULT_IOUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Edges (seconds) of the ground-truth duration bins of `recall_by_duration`: short micro-gestures
# are the hard ones, and one recall over all of them hides that.
DURATION_BINS = (0.8, 2.0, 4.0)


def _pairs(
    predictions: dict[str, Detections], annotations: Annotations, subset: str
) -> list[tuple[Detections, VideoAnnotations]]:
    """(predictions, ground truth) for every video of the subset, sorted by video id."""
    unknown = sorted(set(predictions) - set(annotations.videos))
    if unknown:
        shown = ", ".join(repr(v) for v in unknown[:5])
        raise ValueError(f"predictions for {len(unknown)} video(s) not in the annotations: {shown}")
    C = annotations.num_classes
    out = []
    for vid in annotations.subset(subset).video_ids():
        d = predictions.get(vid, Detections.empty())
        if len(d) and (d.label.min() < 0 or d.label.max() >= C):
            raise ValueError(f"video {vid!r}: prediction labels outside [0, {C})")
        out.append((d, annotations.videos[vid]))
    return out


def _hits(d: Detections, g: VideoAnnotations, match_iou: float) -> np.ndarray:
    """(n_pred, n_gt) bool: same class and tIoU > match_iou."""
    same = d.label[:, None] == g.labels[None, :]
    return same & (tiou(d.segments, g.segments) > match_iou)


def miga_hit_scores(
    predictions: dict[str, Detections],
    annotations: Annotations,
    subset: str,
    match_iou: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, int]:
    """For the MiGA rule at every score threshold: per ground truth the best score of a
    prediction hitting it (-inf if none), (G,); all prediction scores of the subset, (N,); G."""
    best, scores = [], []
    for d, g in _pairs(predictions, annotations, subset):
        h = _hits(d, g, match_iou)
        best.append(np.where(h, d.score[:, None], -np.inf).max(axis=0, initial=-np.inf))
        scores.append(d.score)
    gt_best = np.concatenate(best) if best else np.zeros(0)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    return gt_best, all_scores, int(gt_best.size)


def best_threshold(
    predictions: dict[str, Detections],
    annotations: Annotations,
    subset: str,
    match_iou: float = 0.3,
) -> tuple[float, float]:
    """The score threshold t (keep score >= t) maximising the MiGA F1 (`metrics.f1_miga`) on a
    subset, and that F1. Without predictions the threshold is 0.0 and the F1 0.0.

    F1 is constant for t in (c[i-1], c[i]] between consecutive distinct scores. When several
    thresholds tie (common on a small `val`), t is the middle of the widest run of optimal
    intervals: the largest margin on both sides, so it transfers better to unseen videos than
    either end of the plateau.

    The sweep is exact and needs one pass: under the MiGA rule a ground truth is matched at t iff
    some hitting prediction scores >= t, and F1 = 2M / (N + G) (M matched GT, N predictions,
    G ground truths), so all thresholds are evaluated with two sorted searches.
    """
    gt_best, pred_scores, num_gt = miga_hit_scores(predictions, annotations, subset, match_iou)
    if pred_scores.size == 0:
        return 0.0, 0.0
    cand = np.unique(pred_scores)  # ascending
    n_pred = pred_scores.size - np.searchsorted(np.sort(pred_scores), cand, side="left")
    hits = np.sort(gt_best[np.isfinite(gt_best)])
    matched = hits.size - np.searchsorted(hits, cand, side="left")
    f1 = 2.0 * matched / (n_pred + num_gt)
    best = np.flatnonzero(f1 == f1.max())
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    lows = [cand[r[0] - 1] if r[0] > 0 else 0.0 for r in runs]
    widths = [cand[r[-1]] - lo for r, lo in zip(runs, lows, strict=True)]
    k = int(np.argmax(widths))
    return float((lows[k] + cand[runs[k][-1]]) / 2), float(f1[best[0]])


def duration_labels(edges: Sequence[float] = DURATION_BINS) -> list[str]:
    """Labels of the len(edges) + 1 duration bins cut at `edges` (seconds, strictly increasing,
    positive), e.g. ["<0.8s", "0.8-2s", "2-4s", ">=4s"] for `DURATION_BINS`."""
    e = np.asarray(edges, np.float64)
    ok = e.ndim == 1 and e.size > 0 and bool(np.all(np.isfinite(e)) and np.all(np.diff(e) > 0))
    if not ok or e[0] <= 0:
        raise ValueError(f"duration bins must be positive and strictly increasing, got {edges}")
    inner = [f"{a:g}-{b:g}s" for a, b in zip(e[:-1], e[1:], strict=True)]
    return [f"<{e[0]:g}s", *inner, f">={e[-1]:g}s"]


def _recall_by_duration(
    pairs: list[tuple[Detections, VideoAnnotations]],
    match_iou: float,
    edges: Sequence[float] = DURATION_BINS,
) -> dict[str, dict[str, Any]]:
    """MiGA recall per ground-truth duration bin (module docstring): label -> recall, matched,
    support."""
    labels = duration_labels(edges)
    found = [_hits(d, g, match_iou).any(axis=0) for d, g in pairs]
    dur = [g.segments[:, 1] - g.segments[:, 0] for _, g in pairs]
    found_all = np.concatenate(found) if found else np.zeros(0, bool)
    # Times come from frame / fps, so a duration on an edge can come out 1 ulp short of it.
    dur_all = np.round(np.concatenate(dur), 6) if dur else np.zeros(0)
    bins = np.digitize(dur_all, np.asarray(edges, np.float64))  # i: edges[i-1] <= d < edges[i]
    support = np.bincount(bins, minlength=len(labels))
    matched = np.bincount(bins[found_all], minlength=len(labels))
    return {
        lab: {"recall": float(m / n) if n else 0.0, "matched": int(m), "support": int(n)}
        for lab, m, n in zip(labels, matched, support, strict=True)
    }


def _prf(tp_for_p: int, num_pred: int, tp_for_r: int, num_gt: int) -> tuple[float, float, float]:
    p = tp_for_p / num_pred if num_pred else 0.0
    r = tp_for_r / num_gt if num_gt else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def f1_miga(
    predictions: dict[str, Detections],
    annotations: Annotations,
    subset: str,
    match_iou: float = 0.3,
) -> dict[str, float]:
    """MiGA starter-kit F1 (module docstring): precision, recall, f1, matched_gt, num_pred,
    num_gt."""
    matched = num_pred = num_gt = 0
    for d, g in _pairs(predictions, annotations, subset):
        matched += int(_hits(d, g, match_iou).any(axis=0).sum())
        num_pred += len(d)
        num_gt += len(g)
    p, r, f = _prf(matched, num_pred, matched, num_gt)
    return {
        "precision": p,
        "recall": r,
        "f1": f,
        "matched_gt": matched,
        "num_pred": num_pred,
        "num_gt": num_gt,
    }


def greedy_assign(iou: np.ndarray, thr: float, inclusive: bool = False) -> np.ndarray:
    """One-to-one greedy matching; rows of `iou` (n, m) are predictions by descending score.

    Each prediction takes the unmatched GT with the highest tIoU (ties: lowest index) when it
    passes the threshold. Returns (n,) int64: the GT each prediction took, -1 for none. Only
    predictions with some passing tIoU enter the Python loop.
    """
    ok = iou >= thr if inclusive else iou > thr
    got = np.full(iou.shape[0], -1, np.int64)
    taken = np.zeros(iou.shape[1], bool)
    for i in np.flatnonzero(ok.any(axis=1)):
        cand = np.where(ok[i] & ~taken, iou[i], -np.inf)
        j = int(np.argmax(cand))
        if cand[j] > -np.inf:
            taken[j] = True
            got[i] = j
    return got


def _greedy_match(iou: np.ndarray, thr: float, inclusive: bool) -> np.ndarray:
    """(n,) bool: prediction matched by `greedy_assign`."""
    return greedy_assign(iou, thr, inclusive) >= 0


def _by_score(d: Detections) -> np.ndarray:
    return np.argsort(-d.score, kind="stable")


def strict_pairs(d: Detections, g: VideoAnnotations, match_iou: float = 0.3
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matches of f1_strict in one video: (prediction indices, ground-truth
    indices), both (m,). Per class, predictions by descending score each take the unmatched
    ground truth of highest tIoU > match_iou."""
    pis, gis = [], []
    for c in np.unique(d.label):
        pi = np.flatnonzero(d.label == c)
        pi = pi[_by_score(d.take(pi))]
        gi = np.flatnonzero(g.labels == c)
        if gi.size:
            got = greedy_assign(tiou(d.segments[pi], g.segments[gi]), match_iou)
            pis.append(pi[got >= 0])
            gis.append(gi[got[got >= 0]])
    if not pis:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pis), np.concatenate(gis)


def f1_strict(
    predictions: dict[str, Detections],
    annotations: Annotations,
    subset: str,
    match_iou: float = 0.3,
) -> dict[str, float]:
    """One-to-one F1 (module docstring): precision, recall, f1, matched, num_pred, num_gt."""
    matched = num_pred = num_gt = 0
    for d, g in _pairs(predictions, annotations, subset):
        num_pred += len(d)
        num_gt += len(g)
        matched += len(strict_pairs(d, g, match_iou)[0])
    p, r, f = _prf(matched, num_pred, matched, num_gt)
    return {
        "precision": p,
        "recall": r,
        "f1": f,
        "matched": matched,
        "num_pred": num_pred,
        "num_gt": num_gt,
    }


def interpolated_ap(tp: np.ndarray, num_gt: int) -> float:
    """Area under the interpolated precision-recall curve (ActivityNet / VOC 2010+).

    tp: (n,) bool for predictions by descending score. 0 when there is no prediction.
    """
    if num_gt <= 0:
        raise ValueError("AP needs at least one ground truth")
    tp = np.asarray(tp, bool)
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp)
    prec = ctp / np.arange(1, tp.size + 1)
    rec = ctp / num_gt
    mprec = np.concatenate([[0.0], prec, [0.0]])
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def average_precision(
    predictions: dict[str, Detections],
    annotations: Annotations,
    subset: str,
    iou_thresholds: Sequence[float] = DEFAULT_IOUS,
) -> np.ndarray:
    """AP per threshold and class, (K, C) float64; NaN for classes without ground truth."""
    pairs = _pairs(predictions, annotations, subset)
    C = annotations.num_classes
    ths = list(iou_thresholds)
    ap = np.full((len(ths), C), np.nan)
    for c in range(C):
        num_gt = sum(int((g.labels == c).sum()) for _, g in pairs)
        if num_gt == 0:
            continue
        scores, tps = [], []
        for d, g in pairs:
            pi = np.flatnonzero(d.label == c)
            if pi.size == 0:
                continue
            pi = pi[_by_score(d.take(pi))]
            gi = np.flatnonzero(g.labels == c)
            iou = tiou(d.segments[pi], g.segments[gi])
            scores.append(d.score[pi])
            tps.append(np.stack([_greedy_match(iou, t, inclusive=True) for t in ths]))
        if not scores:
            ap[:, c] = 0.0
            continue
        all_scores = np.concatenate(scores)
        all_tp = np.concatenate(tps, axis=1)  # (K, n)
        order = np.argsort(-all_scores, kind="stable")
        for k in range(len(ths)):
            ap[k, c] = interpolated_ap(all_tp[k, order], num_gt)
    return ap


def score(
    predictions: dict[str, Detections],
    annotations: Annotations,
    subset: str,
    iou_thresholds: Sequence[float] = DEFAULT_IOUS,
    match_iou: float = 0.3,
    duration_bins: Sequence[float] = DURATION_BINS,
) -> dict[str, Any]:
    """All metrics of one subset (module docstring). Values are fractions in [0, 1]; `map` and
    the F1s are 0 when the subset has no ground truth. `duration_bins`: the edges (seconds) of
    the ground-truth duration bins of `recall_by_duration`."""
    miga = f1_miga(predictions, annotations, subset, match_iou)
    strict = f1_strict(predictions, annotations, subset, match_iou)
    ap = average_precision(predictions, annotations, subset, iou_thresholds)
    has_gt = ~np.isnan(ap[0]) if ap.shape[0] else np.zeros(annotations.num_classes, bool)
    map_at = {
        round(float(t), 6): float(ap[k, has_gt].mean()) if has_gt.any() else 0.0
        for k, t in enumerate(iou_thresholds)
    }
    pairs = _pairs(predictions, annotations, subset)
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(annotations.classes):
        matched = num_pred = num_gt = 0
        for d, g in pairs:
            dc = d.take(np.flatnonzero(d.label == c))
            gc = VideoAnnotations(
                g.subset, g.duration, g.fps, g.segments[g.labels == c], g.labels[g.labels == c]
            )
            matched += int(_hits(dc, gc, match_iou).any(axis=0).sum())
            num_pred += len(dc)
            num_gt += len(gc)
        p, r, f = _prf(matched, num_pred, matched, num_gt)
        per_class[name] = {
            "ap": float(ap[:, c].mean()) if has_gt[c] else None,
            "precision": p,
            "recall": r,
            "f1": f,
            "support": num_gt,
            "predictions": num_pred,
        }
    return {
        "subset": subset,
        "match_iou": match_iou,
        "f1_miga": miga["f1"],
        "precision_miga": miga["precision"],
        "recall_miga": miga["recall"],
        "f1_strict": strict["f1"],
        "precision_strict": strict["precision"],
        "recall_strict": strict["recall"],
        "map": float(np.mean(list(map_at.values()))) if map_at else 0.0,
        "map_at": map_at,
        "per_class": per_class,
        "num_videos": len(pairs),
        "num_predictions": miga["num_pred"],
        "num_ground_truth": miga["num_gt"],
        "matched_gt_miga": miga["matched_gt"],
        "matched_strict": strict["matched"],
        "recall_by_duration": _recall_by_duration(pairs, match_iou, duration_bins),
    }


def format_table(metrics: dict[str, Any]) -> str:
    """The per-class table (AP, P, R, F1, support), the headline numbers and the recall by
    ground-truth duration (when present), as text."""
    names = list(metrics["per_class"])
    width = max([len("class"), *(len(n) for n in names)])
    lines = [f"{'class':<{width}}  {'AP':>6} {'P':>6} {'R':>6} {'F1':>6} {'support':>8}"]
    for name in names:
        m = metrics["per_class"][name]
        ap = "-" if m["ap"] is None else f"{m['ap']:.3f}"
        lines.append(
            f"{name:<{width}}  {ap:>6} {m['precision']:>6.3f} {m['recall']:>6.3f} "
            f"{m['f1']:>6.3f} {m['support']:>8d}"
        )
    at = metrics["map_at"]
    shown = ", ".join(f"@{t:g} {v:.3f}" for t, v in at.items() if round(t, 6) in (0.3, 0.5, 0.7))
    lines += [
        "",
        f"subset {metrics['subset']}: {metrics['num_videos']} videos, "
        f"{metrics['num_ground_truth']} ground truths, {metrics['num_predictions']} predictions",
        f"F1 (MiGA, tIoU > {metrics['match_iou']:g}): {metrics['f1_miga']:.4f}  "
        f"(P {metrics['precision_miga']:.4f}, R {metrics['recall_miga']:.4f})",
        f"F1 (strict one-to-one):     {metrics['f1_strict']:.4f}  "
        f"(P {metrics['precision_strict']:.4f}, R {metrics['recall_strict']:.4f})",
        f"mAP (mean over {len(at)} tIoU): {metrics['map']:.4f}" + (f"  ({shown})" if shown else ""),
    ]
    if "recall_by_duration" in metrics:  # metrics files written before it existed lack it
        bins = "  ".join(
            f"{lab} {b['recall']:.3f} ({b['matched']}/{b['support']})"
            for lab, b in metrics["recall_by_duration"].items()
        )
        lines.append(f"recall by duration (class match, tIoU > {metrics['match_iou']:g}): {bins}")
    return "\n".join(lines)


def score_files(
    predictions_path: Path | str,
    annotations_path: Path | str,
    subset: str,
    out: Path | str | None = None,
    iou_thresholds: Sequence[float] = DEFAULT_IOUS,
    match_iou: float = 0.3,
) -> dict[str, Any]:
    """Score a predictions JSON against an annotations JSON; with `out`, also write the metrics
    as JSON there (atomically)."""
    ann = load_annotations(annotations_path)
    preds = load_predictions(predictions_path, classes=ann.classes)
    try:
        metrics = score(preds, ann, subset, iou_thresholds, match_iou)
    except ValueError as e:
        raise ValueError(f"{predictions_path} vs {annotations_path}: {e}") from e
    if out is not None:
        atomic_write_json(Path(out), metrics)
    return metrics


def emission_delays(
    predictions: dict[str, Detections],
    emitted_at: dict[str, np.ndarray],
    annotations: Annotations,
    subset: str,
    match_iou: float = 0.3,
) -> np.ndarray:
    """Emission time minus ground-truth end (seconds) of every true positive of f1_strict's
    one-to-one matching (class match, tIoU > match_iou): the delays behind AEDT (OAT's average
    emission delay), (m,). emitted_at[video]: (n,) seconds, one per prediction of that video."""
    out = []
    for vid in annotations.subset(subset).video_ids():
        d = predictions.get(vid, Detections.empty())
        at = np.asarray(emitted_at.get(vid, np.zeros(0)), np.float64)
        if at.shape != (len(d),):
            raise ValueError(f"video {vid!r}: {at.shape[0]} emission times for {len(d)} "
                             "predictions")
        g = annotations.videos[vid]
        pi, gi = strict_pairs(d, g, match_iou)
        out.append(at[pi] - g.segments[gi, 1])
    return np.concatenate(out) if out else np.zeros(0)
