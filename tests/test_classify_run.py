"""`classify` on a rendered iMiGUE: the layout is read back exactly (clips, subjects, win/lose,
skeletons, cross-subject split), bad files are errors naming file and line, one unreadable
skeleton is skipped, a finished run is not retrained (learning: tests/test_classify_fusion.py)."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from classify.__main__ import app
from classify.config import load_classify_config
from classify.data.clips import index_imigue
from classify.data.skeleton_cache import load_skeletons
from classify.run import run_classify
from classify.synthetic import CLASS_MAP, render_imigue
from detect.data.converters.common import DatasetError, probe_video
from detect.data.converters.imigue import DEFAULT_TRAIN_SUBJECTS, IMIGUE_CLASSES
from detect.synthetic.videos import GESTURES

TINY = ["data.frames=16", "skeleton.agcn.channels=[16, 16, 16, 16]",
        "train.epochs=3", "train.batch_size=16", "train.warmup_epochs=1", "train.threads=2"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("imigue")
    made = render_imigue(root, videos=8, minutes=0.4, seed=3, progress=False)
    return root, made


def test_rendered_set_reads_back_as_released(rendered):
    root, made = rendered
    index = index_imigue(root)
    assert sorted(index.skeletons) == [v.vid for v in made]
    assert len(index.clips) == sum(len(v.plan) for v in made) > 20
    by_video = {v.vid: v for v in made}
    for c in index.clips:
        v = by_video[c.video]
        p = v.plan[c.row - 1]  # label rows are in plan order, line numbers from 1
        assert (c.start, c.end) == (p.start, p.end)
        file_class = CLASS_MAP[GESTURES[p.label].name]
        assert c.label == (31 if file_class == 99 else file_class - 1)
        assert IMIGUE_CLASSES[c.label]
        assert c.subject == v.subject
        assert c.subset == ("train" if v.subject in DEFAULT_TRAIN_SUBJECTS else "test")
    assert index.outcomes == {v.vid: v.outcome for v in made}
    assert {c.subset for c in index.clips} == {"train", "test"}
    assert index.skeletons["0003"] == root / "Data" / "skeleton" / "raw" / "3"
    # Skeleton frames = video frames, and the right wrist follows the drawn right hand.
    kp = load_skeletons(index, root / "cache", progress=False).keypoints["0001"]
    assert probe_video(index.videos["0001"]).num_frames == len(kp) == 600
    assert (kp[..., 2] > 0).mean() > 0.95


def _copy(root, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("*.mp4", "cache"))
    return dst


def test_bad_files_are_errors_naming_file_and_line(rendered, tmp_path):
    root, _ = rendered
    d = _copy(root, tmp_path)
    lab = d / "0002" / "0002_label.csv"
    lines = lab.read_text().splitlines()
    lines[1] = "7,120,abc"
    lab.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"0002_label.csv, line 2: end frame 'abc'"):
        index_imigue(d)
    lines[1] = "7,120,100"
    lab.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"0002_label.csv, line 2: frames 120..100"):
        index_imigue(d)
    lines[1] = "77,120,130"
    lab.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"0002_label.csv, line 2: unknown class 77"):
        index_imigue(d)
    d = _copy(root, tmp_path / "b")
    orig = d / "Label" / "labels_20200831.csv"
    rows = orig.read_text().splitlines()
    rows[3] = rows[3].rsplit(",", 1)[0] + ",maybe"
    orig.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"labels_20200831.csv, line 4: win_or_lose 'maybe'"):
        index_imigue(d)
    d = _copy(root, tmp_path / "c")
    shutil.rmtree(d / "Data" / "skeleton" / "raw" / "5")
    with pytest.raises(DatasetError, match="no skeleton for video 0005"):
        index_imigue(d)


def test_train_evaluate_resume_and_skip_a_bad_skeleton(rendered, tmp_path):
    root, _ = rendered
    d = _copy(root, tmp_path)
    bad = sorted((d / "Data" / "skeleton" / "raw" / "2").glob("*.json"))[10]
    bad.write_text("{truncated")
    cfg = load_classify_config("configs/classify/skeleton-small.toml", TINY)
    out = tmp_path / "run"
    metrics = run_classify(cfg, d, tmp_path / "cache", out, progress=False)
    info = json.loads((out / "run.json").read_text())
    assert list(info["skipped_videos"]) == ["0002"]
    assert bad.name in info["skipped_videos"]["0002"]
    index = index_imigue(d)
    test = [c for c in index.subset("test")]
    assert metrics["fused"]["clips"] == len(test) == info["clips"]["test"]
    for rep in [*metrics["streams"].values(), metrics["fused"]]:
        assert 0 <= rep["top1"] <= rep["top5"] <= 1
        assert np.asarray(rep["confusion"]).sum() == len(test)
    assert set(metrics["streams"]) == {"joint", "bone"}
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == len(test) + 1 and rows[0].startswith("video,row,start_frame")
    top1 = np.mean([r.split(",")[4] == r.split(",")[6] for r in rows[1:]])
    assert top1 == pytest.approx(metrics["fused"]["top1"])
    assert (out / "config.toml").is_file() and "torch" in info["versions"]["packages"]
    # Run again: every epoch is done, nothing is retrained, same figures.
    stamp = (out / "joint" / "last.pt").stat().st_mtime_ns
    epochs = (out / "joint" / "metrics.csv").read_text()
    again = run_classify(cfg, d, tmp_path / "cache", out, progress=False)
    assert (out / "joint" / "last.pt").stat().st_mtime_ns == stamp
    assert (out / "joint" / "metrics.csv").read_text() == epochs
    assert again["fused"]["top1"] == metrics["fused"]["top1"]
    # Longer training resumes from the last epoch instead of starting over.
    more = load_classify_config("configs/classify/skeleton-small.toml",
                                [*TINY, "train.epochs=4"])
    run_classify(more, d, tmp_path / "cache", out, progress=False)
    lines = (out / "joint" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 5 and "\n".join(lines[:4]) + "\n" == epochs


def test_cli_errors_are_one_line(rendered, tmp_path):
    root, _ = rendered
    r = CliRunner().invoke(app, ["train", "--data", str(root), "--out", str(tmp_path / "r"),
                                 "--set", "train.epoch=3"])
    assert r.exit_code != 0 and "unknown key(s) epoch" in str(r.exception)
