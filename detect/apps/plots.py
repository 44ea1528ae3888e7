"""The figures of `python -m detect report`, drawn with matplotlib's Agg canvas into PNG files.

matplotlib is the optional `report` extra: it is imported on first use, never at module import,
and pyplot is never touched (no global figure state, no GUI backend): every figure is a plain
`Figure` on its own `FigureCanvasAgg`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detect.inference.detections import Detections

# Timeline lanes are bands of exactly this colour separated by white gaps, so the number of lanes
# can be read back from the pixels (tests do) and the eye can follow a lane across a long video.
LANE_COLOR = "#e6ecf5"
LANE_GAP = 0.16  # fraction of a lane's height left white between bands
GT_FACE = "#8c96a3"
GT_EDGE = "#1f2933"
SCORE_CMAP = "viridis"
DPI = 100
# (metrics.csv column, legend, line style) of the val curves, widest first.
VAL_CURVES = (
    ("val_f1_miga", "F1 (MiGA)", {"lw": 4.0, "alpha": 0.4, "marker": "o", "ms": 6,
                                  "color": "#2c7fb8"}),
    ("val_f1_strict", "F1 (strict)", {"lw": 1.4, "ls": "--", "marker": "s", "ms": 3,
                                      "color": "#08306b"}),
    ("val_map", "mAP", {"lw": 1.4, "ls": ":", "marker": "^", "ms": 4, "color": "#d95f02"}),
)
MIN_BAR_PX = 2.0  # a zero-length segment is drawn this wide, so it shows


class MissingMatplotlib(ImportError):
    """matplotlib (the `report` extra) is not installed."""


def require_matplotlib() -> Any:
    """The `matplotlib` module, or a clear error telling how to install the extra."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as e:
        raise MissingMatplotlib(
            "the report needs matplotlib, the optional `report` extra: "
            "pip install -e '.[report]'  (or pip install 'matplotlib>=3.7')"
        ) from e
    return matplotlib


def _figure(width: float, height: float) -> Any:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#52606d")


def _floats(rows: Sequence[dict[str, str]], key: str) -> np.ndarray:
    """One metrics.csv column as float64 (NaN where a row lacks it or it is empty)."""
    out = np.full(len(rows), np.nan)
    for i, r in enumerate(rows):
        v = r.get(key)
        if v not in (None, ""):
            try:
                out[i] = float(v)
            except ValueError:
                pass  # a non-numeric cell is shown as a gap, not a crash
    return out


def _is_aux(column: str) -> bool:
    # Auxiliary decoder layers log as train_loss_ce_0, train_loss_l1_1, ...: one line per layer
    # would bury the final-layer terms, so the curves show the final layer only.
    return column.rsplit("_", 1)[-1].isdigit()


def plot_training_curves(
    rows: Sequence[dict[str, str]], path: Path, best_epoch: int | None = None
) -> Path:
    """Training losses and val F1 (MiGA, strict) and mAP per epoch, from metrics.csv rows."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11.0, 3.8)
    ax_loss, ax_val = fig.subplots(1, 2)
    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs = _floats(rows, "epoch")
    columns = [k for k in (rows[0].keys() if rows else []) if k.startswith("train_loss")]
    loss_cols = [c for c in columns if not _is_aux(c)]
    drawn = False
    for col in loss_cols:
        y = _floats(rows, col)
        if np.isfinite(y).any():
            total = col == "train_loss"
            ax_loss.plot(epochs, y, marker="o", ms=3, lw=2.2 if total else 1.2,
                         label="total" if total else col.removeprefix("train_"),
                         color="black" if total else None)
            drawn = True
    ax_loss.set_title("training losses")
    ax_loss.set_xlabel("epoch")
    if drawn:
        values = np.concatenate([_floats(rows, c) for c in loss_cols])
        if np.all(values[np.isfinite(values)] > 0):
            ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
    else:
        _note(ax_loss, "no epochs recorded in metrics.csv")

    val_cols = []
    miga = _floats(rows, "val_f1_miga")
    # The two F1s often coincide (no detection overlaps two ground truths): a wide pale line
    # under a thin dashed one keeps both visible, and the legend says when they are equal.
    for col, label, style in VAL_CURVES:
        y = _floats(rows, col)
        if np.isfinite(y).any():
            if col == "val_f1_strict" and np.array_equal(y, miga, equal_nan=True):
                label += " = F1 (MiGA) here"
            ax_val.plot(epochs, y, label=label, **style)
            val_cols.append(col)
    ax_val.set_title("val metrics")
    ax_val.set_xlabel("epoch")
    if val_cols:
        # MiGA F1 can exceed 1 (one prediction credited to several ground truths).
        top = max(1.0, *(float(np.nanmax(_floats(rows, c))) for c in val_cols))
        ax_val.set_ylim(-0.02, top + 0.02)
        if best_epoch is not None and best_epoch > 0:
            ax_val.axvline(best_epoch, color="#9aa5b1", ls="--", lw=1,
                           label=f"best (epoch {best_epoch})")
        ax_val.legend(fontsize=8)
        ax_val.grid(alpha=0.3)
    else:
        _note(ax_val, "no val metrics (the run has no val subset)")
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """The (C+1, C+1) class confusion of `report.confusion_matrix`, counts in the cells."""
    m = np.asarray(matrix)
    C = len(classes)
    if m.shape != (C + 1, C + 1):
        raise ValueError(f"confusion matrix must be ({C + 1}, {C + 1}) for {C} classes, "
                         f"got {m.shape}")
    side = 2.8 + 0.42 * (C + 1)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    # log1p keeps a few confusions visible next to a large diagonal.
    im = ax.imshow(np.log1p(m), cmap="Blues", vmin=0, aspect="equal")
    rows = [*classes, "background"]
    cols = [*classes, "missed"]
    ax.set_xticks(range(C + 1), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(C + 1), rows, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title("confusion of matched detections")
    hi = float(np.log1p(m).max()) if m.size else 0.0
    if C <= 40:  # beyond that the numbers are unreadable; the HTML table has them
        for i, j in zip(*np.nonzero(m), strict=True):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if np.log1p(m[i, j]) > 0.6 * hi else "black")
    fig.colorbar(im, ax=ax, shrink=0.7, label="log(1 + count)")
    return _save(fig, path)


def plot_tiou_histogram(
    tiou_same: np.ndarray, tiou_other: np.ndarray, match_iou: float, path: Path
) -> Path:
    """Histogram of the tIoU of matched detections, stacked: same class as the ground truth,
    other class."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.5, 3.4)
    ax = fig.subplots()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    edges = np.linspace(match_iou, 1.0, max(2, int(round((1.0 - match_iou) / 0.05)) + 1))
    same = np.asarray(tiou_same, np.float64)
    other = np.asarray(tiou_other, np.float64)
    if same.size + other.size:
        ax.hist([same, other], bins=edges, stacked=True, color=["#2c7fb8", "#f03b20"],
                label=[f"same class ({same.size})", f"other class ({other.size})"])
        ax.legend(fontsize=8)
    else:
        _note(ax, "no detection matches a ground truth")
    ax.set_xlim(match_iou, 1.0)
    ax.set_xlabel(f"tIoU with the matched ground truth (> {match_iou:g})")
    ax.set_ylabel("detections")
    ax.set_title("tIoU of matches")
    return _save(fig, path)


def plot_online_curve(curves: dict[str, list[tuple[float, float]]], path: Path,
                      chosen: tuple[float, float] | None = None,
                      levels: dict[str, float] | None = None,
                      target_delay_s: float | None = None) -> Path:
    """Online accuracy against latency: per curve, (median emission delay after the
    ground-truth end (s), f1_strict) points joined in order; `chosen` marks the operating
    point; `levels` draws labelled horizontal lines (e.g. the offline F1)."""
    fig = _figure(6.5, 3.8)
    ax = fig.subplots()
    for name, pts in curves.items():
        pts = sorted(p for p in pts if p[0] is not None)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name)
    for (label, y), style in zip((levels or {}).items(), ("--", ":", "-."), strict=False):
        ax.axhline(y, color="#52606d", lw=0.8, ls=style, label=label)
    if target_delay_s is not None:
        ax.axvline(target_delay_s, color="#f03b20", lw=0.8, ls=":",
                   label=f"median delay {target_delay_s:g} s")
    if chosen is not None and chosen[0] is not None:
        ax.plot(*chosen, marker="*", ms=12, color="#f03b20", ls="none",
                label="operating point (threshold tuned on val)")
    if not ax.lines:
        _note(ax, "no emitted detection matches a ground truth")
    ax.set_xlabel("median emission delay after the gesture's end, AEDT (s)")
    ax.set_ylabel("online f1_strict")
    ax.set_title("Latency against accuracy online")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def score_norm(lo: float, hi: float = 1.0) -> Any:
    """The colour scale of detection scores: [lo, hi], widened when empty."""
    require_matplotlib()
    from matplotlib.colors import Normalize

    if not hi > lo:
        lo = hi - 1.0
    return Normalize(vmin=lo, vmax=hi)


def _bars(ax: Any, xs: tuple[float, float, float], s: np.ndarray, e: np.ndarray,
          ys: tuple[float, float], **style: Any) -> None:
    """Boxes [s, e] at height ys = (y, h) on one timeline row; xs = (row start, row span, least
    width): clipped so nothing enters the strip left of the row's start."""
    lo, span, sliver = xs
    keep = (e >= lo) & (s <= lo + span)
    if keep.any():
        s0 = np.maximum(s[keep], lo)
        widths = np.maximum(e[keep] - s0, sliver)
        colors = style.pop("facecolors")
        if not isinstance(colors, str):
            colors = colors[keep]
        ax.broken_barh(list(zip(s0, widths, strict=True)), ys, facecolors=colors, **style)


def _detection_bars(ax: Any, xs: tuple[float, float, float], d: Detections,
                    ys: tuple[float, float], colour: Any) -> None:
    """One class's detections in the band ys = (y, h), overlapping ones in stacked sub-rows."""
    sub, n_sub = stack_rows(d.start, np.maximum(d.end, d.start + xs[2]))
    h = ys[1] / n_sub
    for k in range(n_sub):
        m = sub == k
        _bars(ax, xs, d.start[m], d.end[m], (ys[0] + (n_sub - 1 - k) * h, h),
              facecolors=colour(d.score[m]), linewidth=0, zorder=3)


def stack_rows(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, int]:
    """Sub-rows for intervals so that none overlaps another in its row: (n,) row of each, in
    [0, rows), and the number of rows. Greedy by start time (the fewest rows possible)."""
    order = np.lexsort((end, start))
    row = np.zeros(len(start), np.int64)
    ends: list[float] = []  # the last end in each row
    for i in order:
        r = next((k for k, e in enumerate(ends) if e <= start[i]), len(ends))
        if r == len(ends):
            ends.append(end[i])
        else:
            ends[r] = end[i]
        row[i] = r
    return row, max(1, len(ends))


def plot_timeline(
    gt_segments: np.ndarray,
    gt_labels: np.ndarray,
    detections: Detections,
    classes: Sequence[str],
    duration: float,
    path: Path,
    title: str = "",
    norm: Any = None,
    row_seconds: float = 300.0,
    ground_truth: bool = True,
) -> Path:
    """One video: a lane per class (class 0 on top); in each lane the ground truth as boxes in the
    upper half and the detections in the lower half, coloured by score (colorbar). Without
    `ground_truth` (a new video), the detections fill the lanes.

    Detections of one class that overlap are stacked in sub-rows, and zero-length segments are
    drawn MIN_BAR_PX wide, so none hides behind another or vanishes.
    gt_segments: (n, 2) seconds; gt_labels: (n,) class indices. `norm` maps scores to colours
    (`score_norm`); the default is [0, 1]. A video longer than `row_seconds` wraps onto several
    rows at the same time scale, so a 1 s gesture stays visible in a 20-minute video.
    """
    require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    C = len(classes)
    if C < 1:
        raise ValueError("a timeline needs at least one class")
    if row_seconds <= 0:
        raise ValueError(f"row_seconds must be positive, got {row_seconds}")
    gt_segments = np.asarray(gt_segments, np.float64).reshape(-1, 2)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    norm = norm if norm is not None else score_norm(0.0, 1.0)
    cmap = colormaps[SCORE_CMAP]
    end = max([float(duration), *gt_segments[:, 1].tolist(), *detections.end.tolist(), 1e-3])
    n_rows = max(1, math.ceil(end / row_seconds - 1e-9))
    span = end if n_rows == 1 else row_seconds
    # A strip left of each row's start where nothing is drawn keeps every lane visible in some
    # pixel column.
    margin = 0.012 * span
    width_in = 13.0
    sliver = span * MIN_BAR_PX / (0.85 * width_in * DPI)  # the axes are ~85% of the figure
    lane_h = 0.42 if C <= 8 else 0.3
    fig = _figure(width_in, 0.5 + n_rows * (0.6 + lane_h * C))
    axes = fig.subplots(n_rows, 1, squeeze=False)[:, 0]
    band = 1.0 - LANE_GAP
    half = band / 2 if ground_truth else band

    for r, ax in enumerate(axes):
        lo = r * span
        for c in range(C):
            y = C - 1 - c
            ax.axhspan(y + LANE_GAP / 2, y + 1 - LANE_GAP / 2, color=LANE_COLOR, lw=0, zorder=0)
            xs = (lo, span, sliver)
            if ground_truth:
                g = gt_segments[gt_labels == c]
                _bars(ax, xs, g[:, 0], g[:, 1], (y + 0.5, half * 0.85), facecolors=GT_FACE,
                      edgecolors=GT_EDGE, linewidth=0.6, zorder=2)
            base = y + LANE_GAP / 2 + half * 0.075
            _detection_bars(ax, xs, detections.take(detections.label == c),
                            (base, half * 0.85), lambda v: cmap(norm(v)))
        if lo + span > end:  # the last row runs past the video: grey out the time after it
            ax.axvspan(end, lo + span, color="#f5f7fa", lw=0, zorder=1)
        ax.set_xlim(lo - margin, lo + span)
        ax.set_ylim(0, C)
        ax.set_yticks([C - 1 - c + 0.5 for c in range(C)], list(classes), fontsize=8)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    axes[-1].set_xlabel("time (s)   upper half: ground truth, lower half: detections"
                        if ground_truth else "time (s)   detections (no ground truth)")
    if title:
        axes[0].set_title(title, fontsize=10, loc="left")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), pad=0.01,
                 fraction=0.03 if C * n_rows > 3 else 0.05, label="score")
    return _save(fig, path)
