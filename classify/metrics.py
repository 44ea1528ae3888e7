"""Clip classification metrics: top-k accuracy, per-class accuracy and the confusion matrix.

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
