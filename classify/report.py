"""What a classification run writes for people and for submission: predictions.csv, the MiGA
track-1 CSV, the ablation table, the confusion matrix, and the metrics as printed.

    RUN/metrics.json      test top-1/top-5, mean class accuracy, per-class, confusion, per stream
                          and fused (summed softmax of the streams), fusion heads, emotion
    RUN/predictions.csv   per test clip: video, row, frames, true class, predicted top-5
    RUN/miga_track1.csv   videoID_clipIndex,label
    RUN/ablations.md      every model of the run
    RUN/confusion.csv     the final confusion matrix (rows true, columns predicted)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from classify.data.clips import UNLABELLED, Clip, ClipIndex
from classify.metrics import ranked
from extract.io import atomic_write_bytes, atomic_write_json


def write_predictions(path: Path, clips: list[Clip], scores: np.ndarray,
                       classes: tuple[str, ...]) -> None:
    """One row per clip; class ids from 1; `label` and `class` empty for an unlabelled clip."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["video", "row", "start_frame", "end_frame", "label", "class", "pred",
                "pred_class", "top5", "score"])
    order = ranked(scores)
    for c, rank, s in zip(clips, order, scores, strict=True):
        truth = ["", ""] if c.label == UNLABELLED else [c.label + 1, classes[c.label]]
        w.writerow([c.video, c.row, c.start, c.end, *truth,
                    rank[0] + 1, classes[rank[0]], " ".join(str(r + 1) for r in rank[:5]),
                    f"{s[rank[0]]:.4f}"])
    atomic_write_bytes(path, buf.getvalue().encode())


def write_miga_csv(path: Path, clips: list[Clip], scores: np.ndarray, index: ClipIndex) -> None:
    """The MiGA classification submission: `videoID_clipIndex,label` per clip, the clip index
    0-based within its video's label file and the label 0-based (file class 99 -> 31)."""
    position: dict[str, int] = {}
    for vid in sorted({c.video for c in index.clips}):
        rows = sorted(c.row for c in index.clips if c.video == vid)
        position.update({f"{vid}/{r}": i for i, r in enumerate(rows)})
    pred = ranked(scores)[:, 0]
    lines = [f"{c.video}_{position[c.key]},{int(p)}" for c, p in zip(clips, pred, strict=True)]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def write_ablation_table(path: Path, metrics: dict) -> None:
    """A markdown table of every model of the run (top-1, top-5, mean class accuracy)."""
    rows = [(f"skeleton 2s-AGCN, {k} stream", v) for k, v in metrics["streams"].items()]
    rows.append(("skeleton 2s-AGCN, streams fused", metrics["fused"]))
    names = {"rgb": "RGB only (MViTv2-S tokens)", "skeleton": "skeleton only (AGCN tokens)",
             "late": "late fusion (mean softmax)", "token": "cross-modal token fusion"}
    rows += [(names[m], metrics["fusion"][m]) for m in names if m in metrics.get("fusion", {})]
    lines = ["| model | top-1 | top-5 | mean class | clips |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {100 * r['top1']:.2f} | {100 * r['top5']:.2f} | "
              f"{100 * r['mean_class_accuracy']:.2f} | {r['clips']} |" for n, r in rows]
    if "emotion" in metrics:
        names = {"face": "face only (SwinFace)", "context": "context only (MViTv2-S)",
                 "late": "late fusion (mean softmax)", "interfusion": "InterFusion"}
        lines += ["", "Emotion (win / lose per test video):", "",
                  "| model | accuracy | F1 (win) | AUROC | videos |", "|---|---|---|---|---|"]
        lines += [f"| {names[h]} | {100 * r['accuracy']:.2f} | {100 * r['f1']:.2f} | "
                  f"{r['auroc']:.3f} | {r['videos']} |"
                  for h, r in metrics["emotion"].items() if h in names]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def format_metrics(metrics: dict) -> str:
    lines = []
    fusion = [(m, metrics["fusion"][m]) for m in ("rgb", "skeleton", "late", "token")
              if m in metrics.get("fusion", {})]
    for name, rep in [*metrics["streams"].items(), ("fused", metrics["fused"]), *fusion]:
        lines.append(f"{name:>6}: top-1 {100 * rep['top1']:.2f}  top-5 {100 * rep['top5']:.2f}  "
                     f"mean class {100 * rep['mean_class_accuracy']:.2f}  ({rep['clips']} clips)")
    for h in ("face", "context", "late", "interfusion"):
        if h in metrics.get("emotion", {}):
            r = metrics["emotion"][h]
            lines.append(f"emotion {h:>11}: accuracy {100 * r['accuracy']:.2f}  F1 "
                         f"{100 * r['f1']:.2f}  AUROC {r['auroc']:.3f}  ({r['videos']} videos)")
    return "\n".join(lines)


def write_confusion(path: Path, confusion: np.ndarray) -> None:
    """The confusion matrix as CSV, rows true and columns predicted, classes numbered from 1."""
    n = len(confusion)
    rows = [",".join(["true\\pred", *[str(i + 1) for i in range(n)]])]
    rows += [",".join([str(i + 1), *map(str, r)]) for i, r in enumerate(confusion)]
    atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())


def write_outputs(out: Path, metrics: dict, clips: list[Clip], scores: np.ndarray,
                  index: ClipIndex) -> None:
    """Everything a run writes once evaluated: metrics.json, predictions.csv, the MiGA track-1
    CSV, ablations.md and confusion.csv (of the final model)."""
    atomic_write_json(out / "metrics.json", metrics)
    write_predictions(out / "predictions.csv", clips, scores, index.classes)
    write_miga_csv(out / "miga_track1.csv", clips, scores, index)
    write_ablation_table(out / "ablations.md", metrics)
    write_confusion(out / "confusion.csv", np.asarray(metrics["final"]["confusion"]))
