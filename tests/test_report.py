"""The HTML report of a run: class-agnostic matching, the PNGs by their pixels, the page in a
headless browser, and the errors for runs that cannot be reported on."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from detect.apps import plots
from detect.apps.report import (
    MatchSummary,
    ReportError,
    match_any_class,
    match_summary,
    render_page,
    write_report,
)
from detect.config import load_config
from detect.data.annotations import Annotations, VideoAnnotations
from detect.evaluation.evaluate import evaluate_run
from detect.inference.detections import Detections
from detect.synthetic.features import synth_feature_set
from detect.train.loop import train
from extract.config import config_to_dict, to_toml
from extract.io import RunError

mpl = pytest.importorskip("matplotlib", reason="the report extra: pip install -e '.[report]'")
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.image import imread  # noqa: E402

TINY = [
    "data.window=32", "model.hidden_dim=32", "model.num_queries=8", "model.num_points=6",
    "model.num_layers=2", "model.num_heads=2", "model.ffn_dim=64", "model.mix_dim=8",
    "model.dropout=0.1", "train.batch_size=4", "train.lr=1e-3", "train.epochs=2",
    "train.device=cpu",
]


# ---------------------------------------------------------------------------- helpers


def _rgb(path):
    """(H, W, 3) uint8 pixels of a PNG."""
    img = imread(path)
    return np.round(img[..., :3] * 255).astype(np.int16)


def _count_lanes(img):
    """The number of lane bands (exact LANE_COLOR, at least 3 px tall) crossed by the pixel
    columns at the left end of the lanes: the strip before each row's start holds no drawing."""
    lane = np.round(np.array(to_rgb(plots.LANE_COLOR)) * 255)
    is_lane = (np.abs(img - lane) <= 1).all(axis=-1)  # (H, W)
    tall = is_lane[:-2] & is_lane[1:-1] & is_lane[2:]  # runs of 3+ pixels only
    runs = tall[0].astype(int) + (tall[1:] & ~tall[:-1]).sum(axis=0)  # (W,)
    left = np.flatnonzero(runs > 0)[0]
    return int(np.bincount(runs[left + 1 : left + 7]).argmax())  # past a blended edge column


def _lanes_only(img):
    """The pixel columns the lane bands span: the timeline's axes without the colorbar (which
    holds every score colour)."""
    lane = np.round(np.array(to_rgb(plots.LANE_COLOR)) * 255)
    cols = np.flatnonzero((np.abs(img - lane) <= 1).all(axis=-1).any(axis=0))
    return img[:, cols.min() : cols.max() + 1]


def _has_colour(img, rgb01, tol=2):
    c = np.round(np.asarray(rgb01[:3]) * 255)
    return bool((np.abs(img - c) <= tol).all(axis=-1).any())


def _loop_summary(preds, ann, subset, match_iou):
    """Reference: plain Python floats, one detection and one ground truth at a time."""
    C = ann.num_classes
    conf = np.zeros((C + 1, C + 1), np.int64)
    ious, same = [], []
    for vid in sorted(v for v, a in ann.videos.items() if a.subset == subset):
        g = ann.videos[vid]
        d = preds.get(vid, Detections.empty())
        used = set()
        for i in range(len(d)):
            s, e, c = float(d.start[i]), float(d.end[i]), int(d.label[i])
            best = None  # (same class, tIoU, -index)
            for k in range(len(g)):
                gs, ge = float(g.segments[k, 0]), float(g.segments[k, 1])
                inter = max(0.0, min(e, ge) - max(s, gs))
                union = (e - s) + (ge - gs) - inter
                iou = inter / union if union > 0 else 0.0
                if iou > match_iou:
                    cand = (int(g.labels[k]) == c, iou, -k)
                    if best is None or cand > best:
                        best = cand
            if best is None:
                conf[C, c] += 1
            else:
                k = -best[2]
                used.add(k)
                conf[int(g.labels[k]), c] += 1
                ious.append(best[1])
                same.append(best[0])
        for k in range(len(g)):
            if k not in used:
                conf[int(g.labels[k]), C] += 1
    return conf, np.array(ious), np.array(same, bool)


# ---------------------------------------------------------------------------- matching


def _video(subset, segs, labels):
    return VideoAnnotations(subset, 200.0, 30.0, np.array(segs, float).reshape(-1, 2),
                            np.array(labels, np.int64))


def test_confusion_on_a_hand_computed_case():
    ann = Annotations(["a", "b", "c"], {
        "v1": _video("test", [[0, 10], [20, 30], [40, 50], [60, 70]], [0, 1, 2, 0]),
        "v2": _video("test", [[100, 110], [100, 104]], [1, 2]),
        "v3": _video("test", [[0, 5]], [1]),
        "tr": _video("train", [[0, 10]], [0]),
    })
    preds = {
        "v1": Detections(
            [0, 1, 20, 80, 62, 40],
            [10, 10, 28, 90, 72, 43],
            [0, 1, 1, 2, 1, 2],
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        ),
        # tIoU 0.5 with its own class, 0.8 with the other: its own class wins.
        "v2": Detections([100], [105], [1], [0.3]),
        "tr": Detections([0], [10], [2], [0.9]),  # another subset: ignored
    }
    j, iou = match_any_class(preds["v1"], ann.videos["v1"].segments, ann.videos["v1"].labels, 0.3)
    # [40, 43] vs [40, 50] is tIoU 0.3 exactly: not > 0.3, so background.
    np.testing.assert_array_equal(j, [0, 0, 1, -1, 3, -1])
    np.testing.assert_allclose(iou, [1.0, 0.9, 0.8, 0.0, 8 / 12, 0.0])

    s = match_summary(preds, ann, "test", 0.3)
    np.testing.assert_array_equal(s.confusion, [
        [1, 2, 0, 0],  # a: d0 right, d1 and d4 called b
        [0, 2, 0, 1],  # b: d2 and v2's detection right; v3's ground truth missed
        [0, 0, 0, 2],  # c: both missed
        [0, 0, 2, 0],  # background: d3 and the tIoU-0.3 d5
    ])
    np.testing.assert_allclose(s.tiou, [1.0, 0.9, 0.8, 8 / 12, 0.5])
    np.testing.assert_array_equal(s.same_class, [True, False, True, False, True])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_summary_agrees_with_a_loop(seed):
    rng = np.random.default_rng(seed)
    C = 4
    videos, preds = {}, {}
    for v in range(5):
        n_gt, n_pred = int(rng.integers(0, 9)), int(rng.integers(0, 15))
        # Integer times make exact tIoU ties and zero-length segments common.
        gs = rng.integers(0, 40, n_gt)
        videos[f"v{v}"] = _video("test", np.stack([gs, gs + rng.integers(0, 8, n_gt)], 1),
                                 rng.integers(0, C, n_gt))
        ps = rng.integers(0, 40, n_pred)
        preds[f"v{v}"] = Detections(ps, ps + rng.integers(1, 8, n_pred),
                                    rng.integers(0, C, n_pred), rng.random(n_pred))
    ann = Annotations([f"c{i}" for i in range(C)], videos)
    s = match_summary(preds, ann, "test", 0.3)
    conf, ious, same = _loop_summary(preds, ann, "test", 0.3)
    np.testing.assert_array_equal(s.confusion, conf)
    np.testing.assert_allclose(s.tiou, ious, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(s.same_class, same)
    # Every detection lands in exactly one cell of its predicted-class column.
    per_class = np.bincount(np.concatenate([d.label for d in preds.values()]), minlength=C)
    np.testing.assert_array_equal(s.confusion[:, :C].sum(axis=0), per_class)


# ---------------------------------------------------------------------------- PNGs


@pytest.mark.parametrize(("num_classes", "duration"), [(1, 40.0), (5, 40.0), (3, 700.0)])
def test_timeline_lanes_and_score_colours_from_pixels(tmp_path, num_classes, duration):
    classes = [f"class{i}" for i in range(num_classes)]
    gt = np.array([[2.0, 6.0], [10.0, 10.0], [20.0, 28.0]])  # a zero-length one too
    gt_labels = np.array([0, num_classes - 1, 0])
    # The low-score detection ends the video: on the last row when the video wraps.
    dets = Detections([3.0, duration - 9], [7.0, duration - 1], [0, num_classes - 1], [0.9, 0.2])
    norm = plots.score_norm(0.0, 1.0)
    path = plots.plot_timeline(gt, gt_labels, dets, classes, duration, tmp_path / "t.png",
                               title="v", norm=norm, row_seconds=300.0)
    full = _rgb(path)
    img = _lanes_only(full)
    rows = int(np.ceil(duration / 300.0))
    assert _count_lanes(img) == num_classes * rows
    cmap = mpl.colormaps[plots.SCORE_CMAP]
    assert _has_colour(img, cmap(norm(0.9))) and _has_colour(img, cmap(norm(0.2)))
    assert _has_colour(img, to_rgb(plots.GT_FACE))
    empty = plots.plot_timeline(gt[:0], gt_labels[:0], Detections.empty(), classes, duration,
                                tmp_path / "e.png", norm=norm, row_seconds=300.0)
    assert _rgb(empty).shape == full.shape  # the size depends on lanes and rows only
    e = _lanes_only(_rgb(empty))
    assert _count_lanes(e) == num_classes * rows
    assert not _has_colour(e, to_rgb(plots.GT_FACE))
    assert not _has_colour(e, cmap(norm(0.9))) and not _has_colour(e, cmap(norm(0.2)))


# ---------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two evaluated runs of one tiny model: every detection kept (many), none kept (zero)."""
    root = tmp_path_factory.mktemp("report")
    fs, ann = synth_feature_set(root / "data", videos=12, classes=3, seed=1, noise=0.0, dim=16,
                                min_duration_s=30, max_duration_s=40)
    many = root / "many"
    train(load_config(None, [*TINY, "eval.score_threshold=0.0"]), fs.path, ann, many,
          progress=False)
    evaluate_run(many, "test", progress=False)
    zero = root / "zero"
    shutil.copytree(many, zero, ignore=shutil.ignore_patterns("report"))
    cfg = load_config(zero / "config.toml", ["eval.score_threshold=2.0"])
    (zero / "config.toml").write_text(to_toml(config_to_dict(cfg)))
    evaluate_run(zero, "test", progress=False)
    return {"many": many, "zero": zero, "annotations": ann}


def _num_test_videos(ann_path):
    db = json.loads(ann_path.read_text())["database"]
    return sum(v["subset"] == "test" for v in db.values())


@pytest.mark.parametrize("which", ["many", "zero"])
def test_report_of_a_real_run(runs, which):
    run = runs[which]
    n_pred = json.loads((run / "metrics.json").read_text())["num_predictions"]
    assert (n_pred > 20) if which == "many" else (n_pred == 0)
    index = write_report(run, "test", progress=False)
    assert index == run / "report" / "index.html"
    page = index.read_text()
    n_videos = _num_test_videos(runs["annotations"])
    timelines = sorted(index.parent.glob("timeline-*.png"))
    assert len(timelines) == n_videos >= 1
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(["curves.png", "confusion.png", "tiou.png",
                                   *(t.name for t in timelines)])
    for name in srcs:
        img = _rgb(index.parent / name)
        assert img.shape[0] > 200 and img.shape[1] > 400, name
        assert img.reshape(-1, 3).std(axis=0).max() > 10, f"{name} is blank"
    for t in timelines:
        assert _count_lanes(_rgb(t)) == 3
    for name in ("gesture00", "gesture01", "gesture02"):
        assert f"<td>{name}</td>" in page
    assert f"{n_pred} detection{'' if n_pred == 1 else 's'} at score" in page
    # Works offline: nothing is fetched from anywhere.
    assert not re.search(r"(src|href)=\"(https?:)?//|<link|@import|url\(", page)


def _run_chromium(index, profile):
    cmd = [
        shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--dump-dom", index.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (apt-get install -y chromium)")
def test_page_loads_in_a_headless_browser(runs, tmp_path):
    index = write_report(runs["many"], "test", out=tmp_path / "ok", progress=False)
    dom, console = _run_chromium(index, tmp_path / "profile")
    assert console == []
    assert 'data-images="ok"' in dom
    assert dom.count("<img ") == 3 + _num_test_videos(runs["annotations"])
    # The same check notices a missing image.
    (index.parent / "tiou.png").unlink()
    dom, console = _run_chromium(index, tmp_path / "profile")
    assert console == []
    assert 'data-images="broken 1"' in dom and "image not found: tiou.png" in dom


def test_page_escapes_every_text():
    evil = '<b>&"x'
    metrics = {"subset": "test", "match_iou": 0.3, "threshold": 0.5, "num_predictions": 0,
               "per_class": {evil: {"ap": None, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                    "support": 1, "predictions": 0}}}
    summary = MatchSummary(np.zeros((2, 2), np.int64), np.zeros(0), np.zeros(0, bool))
    page = render_page("<script>alert(1)</script>", metrics, [evil], summary,
                       [{"id": "</figcaption><script>x()</script>", "image": 'a b".png',
                         "num_gt": 1, "num_pred": 0, "matched": 0}])
    assert "<b>&" not in page and "alert(1)</script>" not in page and "<script>x()" not in page
    assert "&lt;b&gt;&amp;&quot;x" in page
    assert 'src="a%20b%22.png"' in page


# ---------------------------------------------------------------------------- errors


def _copy(run, dst, *names):
    dst.mkdir()
    for name in ("config.toml", "run.json", "metrics.csv", *names):
        shutil.copy(run / name, dst / name)
    return dst


def test_clear_errors_for_runs_that_cannot_be_reported(runs, tmp_path):
    many = runs["many"]
    bare = _copy(many, tmp_path / "bare")
    with pytest.raises(ReportError, match=r"metrics\.json not found.*python -m detect eval"):
        write_report(bare, "test", progress=False)
    with pytest.raises(ReportError, match=r"for subset 'test', not 'val'.*--subset val"):
        write_report(many, "val", progress=False)
    with pytest.raises(ReportError, match="unknown subset"):
        write_report(many, "dev", progress=False)
    with pytest.raises(RunError, match="not a run directory"):
        write_report(tmp_path, "test", progress=False)
    stale = _copy(many, tmp_path / "stale", "metrics.json", "predictions.json")
    data = json.loads((stale / "predictions.json").read_text())
    vid = next(v for v, items in data["results"].items() if items)
    data["results"][vid].pop()
    (stale / "predictions.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="different evaluations"):
        write_report(stale, "test", progress=False)
    assert not (bare / "report").exists() and not (stale / "report").exists()


def test_missing_matplotlib_says_how_to_install(runs, tmp_path, monkeypatch):
    run = _copy(runs["many"], tmp_path / "r", "metrics.json", "predictions.json")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=re.escape("pip install -e '.[report]'")):
        write_report(run, "test", progress=False)
    assert not (run / "report").exists()
