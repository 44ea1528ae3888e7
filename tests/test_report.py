"""The HTML report of a run: class-agnostic matching, the PNGs by their pixels, the page in a
headless browser, and the errors for runs that cannot be reported on."""

import base64
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
    match_one_to_one,
    match_summary,
    render_page,
    write_report,
)
from detect.config import load_config
from detect.data.annotations import Annotations, VideoAnnotations
from detect.evaluation.evaluate import evaluate_run
from detect.evaluation.metrics import f1_strict
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


def _loop_iou(s, e, gs, ge):
    inter = max(0.0, min(e, ge) - max(s, gs))
    union = (e - s) + (ge - gs) - inter
    return inter / union if union > 0 else 0.0


def _loop_matches(d, g, match_iou):
    """detection -> (ground truth, tIoU): the strict pass (same class), then the class-blind
    pass over what is left, detections by descending score."""
    order = sorted(range(len(d)), key=lambda i: (-float(d.score[i]), i))
    took = {}
    for same_only in (True, False):
        for i in (i for i in order if i not in took):
            best = None  # (tIoU, -index)
            used = {t[0] for t in took.values()}
            for k in range(len(g)):
                if k in used or (same_only and int(g.labels[k]) != int(d.label[i])):
                    continue
                iou = _loop_iou(float(d.start[i]), float(d.end[i]),
                                float(g.segments[k, 0]), float(g.segments[k, 1]))
                if iou > match_iou and (best is None or (iou, -k) > best):
                    best = (iou, -k)
            if best is not None:
                took[i] = (-best[1], best[0])
    return took


def _loop_summary(preds, ann, subset, match_iou):
    """Reference: plain Python floats, one detection and one ground truth at a time."""
    C = ann.num_classes
    conf = np.zeros((C + 1, C + 1), np.int64)
    ious, same = [], []
    for vid in sorted(v for v, a in ann.videos.items() if a.subset == subset):
        g = ann.videos[vid]
        d = preds.get(vid, Detections.empty())
        took = _loop_matches(d, g, match_iou)
        for i in range(len(d)):
            c = int(d.label[i])
            if i not in took:
                conf[C, c] += 1
                continue
            k, iou = took[i]
            conf[int(g.labels[k]), c] += 1
            ious.append(iou)
            same.append(int(g.labels[k]) == c)
        used = {t[0] for t in took.values()}
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
    j, iou = match_one_to_one(preds["v1"], ann.videos["v1"].segments, ann.videos["v1"].labels,
                              0.3)
    # d1 overlaps only g0, which d0 took: background. [40, 43] vs [40, 50] is tIoU 0.3 exactly:
    # not > 0.3, so background too. d4 (b) takes the a-instance g3 in the class-blind pass.
    np.testing.assert_array_equal(j, [0, -1, 1, -1, 3, -1])
    np.testing.assert_allclose(iou, [1.0, 0.0, 0.8, 0.0, 8 / 12, 0.0])

    s = match_summary(preds, ann, "test", 0.3)
    np.testing.assert_array_equal(s.confusion, [
        [1, 1, 0, 0],  # a: d0 right, d4 called it b
        [0, 2, 0, 1],  # b: d2 and v2's detection right; v3's ground truth missed
        [0, 0, 0, 2],  # c: both missed
        [0, 1, 2, 0],  # background: d1 (a duplicate of g0), d3 and the tIoU-0.3 d5
    ])
    np.testing.assert_allclose(s.tiou, [1.0, 0.8, 8 / 12, 0.5])
    np.testing.assert_array_equal(s.same_class, [True, True, False, True])
    # Each row sums to its class support.
    support = np.bincount(np.concatenate([ann.videos[v].labels for v in ("v1", "v2", "v3")]),
                          minlength=3)
    np.testing.assert_array_equal(s.confusion[:3].sum(axis=1), support)


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
    # Every ground truth lands in exactly one cell of its row; the diagonal is the strict hits.
    support = np.bincount(np.concatenate([a.labels for a in videos.values()]), minlength=C)
    np.testing.assert_array_equal(s.confusion[:C].sum(axis=1), support)
    strict = f1_strict(preds, ann, "test", 0.3)
    assert np.trace(s.confusion[:C, :C]) == strict["matched"]


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


def test_stack_rows_never_overlaps_and_uses_the_fewest_rows():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 12))
        s = rng.integers(0, 20, n).astype(float)
        e = s + rng.integers(1, 6, n)
        row, rows = plots.stack_rows(s, e)
        for i in range(n):
            for j in range(i):
                if row[i] == row[j]:
                    assert e[i] <= s[j] or e[j] <= s[i]
        # The fewest rows: the most intervals that share one instant.
        depth = max([int(((s <= t) & (e > t)).sum()) for t in np.unique(s)], default=0)
        assert rows == max(1, depth)


def test_overlapping_and_zero_length_detections_all_show(tmp_path):
    norm = plots.score_norm(0.0, 1.0)
    cmap = mpl.colormaps[plots.SCORE_CMAP]
    # One class: a long high-score detection over a short low-score one, and a zero-length one.
    dets = Detections([10.0, 12.0, 30.0], [20.0, 14.0, 30.0], [0, 0, 0], [0.95, 0.1, 0.5])
    img = _lanes_only(_rgb(plots.plot_timeline(np.zeros((0, 2)), [], dets, ["a"], 40.0,
                                               tmp_path / "t.png", norm=norm,
                                               ground_truth=False)))
    for score in (0.95, 0.1, 0.5):
        assert _has_colour(img, cmap(norm(score))), score


def test_equal_f1_curves_both_show(tmp_path):
    rows = [{"epoch": str(e), "train_loss": str(1.0 / e), "val_f1_miga": str(0.1 * e),
             "val_f1_strict": str(0.1 * e), "val_map": str(0.05 * e)} for e in range(1, 6)]
    img = _rgb(plots.plot_training_curves(rows, tmp_path / "c.png"))
    styles = {col: st for col, _, st in plots.VAL_CURVES}
    wide = np.asarray(to_rgb(styles["val_f1_miga"]["color"]))
    alpha = styles["val_f1_miga"]["alpha"]
    assert _has_colour(img, wide * alpha + (1 - alpha), tol=3)  # the pale line beneath
    assert _has_colour(img, to_rgb(styles["val_f1_strict"]["color"]))  # the dashed one on top


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
    names = re.findall(r'data-name="([^"]+)"', page)
    assert sorted(names) == sorted(["curves.png", "confusion.png", "tiou.png",
                                    *(t.name for t in timelines)])
    # One file is the whole report: every figure is embedded, byte for byte the PNG beside it.
    srcs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(srcs) == len(names)
    for name, src in zip(names, srcs, strict=True):
        assert base64.b64decode(src) == (index.parent / name).read_bytes(), name
        img = _rgb(index.parent / name)
        assert img.shape[0] > 200 and img.shape[1] > 400, name
        assert img.reshape(-1, 3).std(axis=0).max() > 10, f"{name} is blank"
    for t in timelines:
        assert _count_lanes(_rgb(t)) == 3
    for name in ("gesture00", "gesture01", "gesture02"):
        assert f"<td>{name}</td>" in page
    assert f"{n_pred} detection{'' if n_pred == 1 else 's'} at score" in page
    # What made the features, the config and the code version are on the page.
    assert "<td>backbone</td><td>synthetic</td>" in page
    assert "<td>feature stride</td><td>4 frames</td>" in page
    assert re.search(r"<td>code version</td><td>mgdet [^<]+</td>", page)
    assert "RANDOM WEIGHTS" not in page
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
def test_page_loads_in_a_headless_browser_with_every_image_file_deleted(runs, tmp_path):
    n_images = 3 + _num_test_videos(runs["annotations"])
    index = write_report(runs["many"], "test", out=tmp_path / "embedded", progress=False)
    pngs = list(index.parent.glob("*.png"))
    assert len(pngs) == n_images
    for f in pngs:  # the page alone is the report
        f.unlink()
    dom, console = _run_chromium(index, tmp_path / "profile")
    assert console == []
    assert 'data-images="ok"' in dom
    assert dom.count("<img ") == n_images

    # Linked images: the page marks every missing one (the collection it walks is live).
    index = write_report(runs["many"], "test", out=tmp_path / "linked", progress=False,
                         linked=True)
    dom, console = _run_chromium(index, tmp_path / "profile")
    assert console == [] and 'data-images="ok"' in dom
    names = sorted(f.name for f in index.parent.glob("*.png"))
    (index.parent / "tiou.png").unlink()
    dom, _ = _run_chromium(index, tmp_path / "profile")
    assert 'data-images="broken 1"' in dom and "image not found: tiou.png" in dom
    for name in names:
        (index.parent / name).unlink(missing_ok=True)
    dom, _ = _run_chromium(index, tmp_path / "profile")
    assert f'data-images="broken {n_images}"' in dom
    assert dom.count("<img ") == 0
    for name in names:
        assert f"image not found: {name}" in dom


def test_random_weights_are_said_loudly_on_the_page_and_by_the_command(runs, tmp_path):
    run = tmp_path / "random"
    shutil.copytree(runs["many"], run, ignore=shutil.ignore_patterns("report"))
    info = json.loads((run / "run.json").read_text())
    info["feature_set"]["weights"] = {"label": "random", "seed": 3}
    (run / "run.json").write_text(json.dumps(info))
    page = write_report(run, "test", progress=False).read_text()
    assert re.search(r'<p class="warning">!! RANDOM WEIGHTS: [^<]+</p>', page)
    assert "<td>weights</td><td>random (seed 3)</td>" in page
    from typer.testing import CliRunner

    from detect.__main__ import app

    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "!! RANDOM WEIGHTS" in res.output
    res = CliRunner().invoke(app, ["report", str(runs["many"]), "--linked-images"])
    assert res.exit_code == 0 and "RANDOM" not in res.output, res.output
    assert "data:image/png" not in (runs["many"] / "report" / "index.html").read_text()


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
