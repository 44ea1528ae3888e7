"""Clip classification metrics: top-k accuracy, per-class accuracy and the confusion matrix;
binary accuracy, F1 and AUROC for emotion.

scores (N, C) (logits or probabilities: only their order matters), labels (N,) in 0..C-1.
Ties are broken toward the lower class id (a stable sort), so a result never depends on luck.
"""

from __future__ import annotations

import numpy as np


def ranked(scores: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, C) class ids by descending score, ties toward the lower id."""
    return np.argsort(-np.asarray(scores, np.float64), axis=1, kind="stable")


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of clips whose label is among their k best-scored classes."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    hits = (ranked(scores)[:, :k] == labels[:, None]).any(axis=1)
    return float(hits.mean())


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """(C,) recall of each class from a confusion matrix; NaN for a class with no clips."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def classification_report(scores: np.ndarray, labels: np.ndarray,
                          classes: list[str] | tuple[str, ...]) -> dict:
    """top-1, top-5, mean class accuracy (over classes with clips), per-class and confusion."""
    pred = ranked(scores)[:, 0]
    cm = confusion_matrix(pred, labels, len(classes))
    pc = per_class_accuracy(cm)
    present = ~np.isnan(pc)
    return {
        "clips": int(len(labels)),
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "mean_class_accuracy": float(pc[present].mean()) if present.any() else float("nan"),
        "per_class": {classes[c]: {"accuracy": float(pc[c]), "clips": int(cm[c].sum())}
                      for c in np.flatnonzero(present)},
        "confusion": cm.tolist(),
    }


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counting half
    (the Mann-Whitney U with average ranks). NaN without both classes."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # average rank over each group of equal scores
    ranks = (first + (counts + 1) / 2)[inv]
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def binary_report(p_pos: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, F1 of the positive class and AUROC of p(positive) (N,) against labels (N,)."""
    p, y = np.asarray(p_pos, np.float64), np.asarray(labels).astype(bool)
    pred = p >= threshold
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    return {
        "videos": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        "auroc": auroc(p, y),
        "positives": int(y.sum()),
    }
