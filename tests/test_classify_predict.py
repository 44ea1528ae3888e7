"""`python -m classify predict`: a new video's clips are scored as the run scored its test split
(same CSV rows, same predictions, same p(win)), from whatever the run was trained on; bad input is
a one-line error with exit 2, a video that cannot be decoded exit 1."""

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from classify.__main__ import app
from classify.config import load_classify_config
from classify.run import run_classify
from classify.synthetic import render_imigue

# Four videos, subjects 2 and 4 (two each): subject 2 trains, subject 4's videos 0003 and 0004
# are the test split. Every part tiny, RGB and emotion on (random MViT and SwinFace weights).
TINY = ["data.frames=16", "data.split=train=2;test=rest",
        "skeleton.agcn.channels=[16, 16, 16, 16]", "train.epochs=3", "train.batch_size=16",
        "train.warmup_epochs=1", "train.threads=2", "rgb.frames=4", "rgb.size=32",
        "rgb.short_side=36", "fusion.dim=32", "fusion.heads=2", "fusion.layers=1",
        "fusion.epochs=3", "emotion.fusion.dim=32", "emotion.fusion.heads=2",
        "emotion.fusion.layers=1", "emotion.fusion.epochs=2"]
VIDEO = "0003"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, the RGB + emotion run, a skeleton-only run from the same streams)."""
    tmp = tmp_path_factory.mktemp("predict")
    root = tmp / "set"
    render_imigue(root, videos=4, minutes=0.3, seed=5, progress=False)
    cfg = load_classify_config("configs/classify/fusion-small.toml", [
        *TINY, f"rgb.cache={tmp / 'rgb'}", f"emotion.cache={tmp / 'face'}"])
    run = tmp / "run"
    run_classify(cfg, root, tmp / "cache", run, progress=False)
    # The same streams without RGB: their summed softmax is the final (nothing is retrained).
    skel = tmp / "skel"
    skel.mkdir()
    for stream in ("joint", "bone"):
        shutil.copytree(run / stream, skel / stream)
    cfg = load_classify_config("configs/classify/skeleton-small.toml", TINY)
    run_classify(cfg, root, tmp / "cache", skel, progress=False)
    return root, run, skel


def _rows(path, video=None):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if video is None or r["video"] == video]


def _same_predictions(got, want, labelled=True):
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        keys = ["video", "row", "start_frame", "end_frame", "pred", "pred_class", "top5"]
        assert {k: g[k] for k in keys} == {k: w[k] for k in keys}
        assert float(g["score"]) == pytest.approx(float(w["score"]), abs=2e-4)
        if labelled:
            assert (g["label"], g["class"]) == (w["label"], w["class"])
        else:
            assert (g["label"], g["class"]) == ("", "")


def _predict(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def _inputs(root, vid=VIDEO):
    return (root / vid / f"{vid}.mp4", root / vid / f"{vid}_label.csv",
            root / "Data" / "skeleton" / "raw" / str(int(vid)))


def test_rgb_and_emotion_run_predicts_its_test_video_as_in_training(trained):
    root, run, _ = trained
    video, labels, keypoints = _inputs(root)
    r = _predict(video, "--run", run, "--clips", labels, "--keypoints", keypoints)
    assert r.exit_code == 0, r.stderr
    out = run / "predict" / VIDEO  # the default
    _same_predictions(_rows(out / "predictions.csv"), _rows(run / "predictions.csv", VIDEO))
    miga = [x for x in (run / "miga_track1.csv").read_text().splitlines()
            if x.startswith(VIDEO + "_")]
    assert (out / "miga_track1.csv").read_text().splitlines() == miga
    got, want = _rows(out / "emotion_predictions.csv"), _rows(run / "emotion_predictions.csv",
                                                                VIDEO)
    assert len(got) == len(want) == 1 and got[0]["outcome"] == ""
    heads = [k for k in want[0] if k.startswith("p_win_")]
    assert heads == ["p_win_face", "p_win_context", "p_win_interfusion", "p_win_late"]
    assert list(got[0]) == ["video", "outcome", *heads]
    for h in heads:
        assert float(got[0][h]) == pytest.approx(float(want[0][h]), abs=2e-4), h
    record = json.loads((out / "predict.json").read_text())
    assert record["video_id"] == VIDEO and record["clips"] == len(miga)
    assert record["video"] == str(video.resolve()) and record["run"] == str(run.resolve())
    assert record["keypoints"] == str(keypoints.resolve())
    assert record["modalities"] == ["skeleton", "rgb", "face"]
    assert record["models"]["final"] == "fusion.token"
    assert "torch" in record["versions"]["packages"] and record["run_versions"]
    hits = [p["label"] == p["pred"] for p in _rows(out / "predictions.csv")]
    assert record["report"]["top1"] == pytest.approx(sum(hits) / len(hits))
    assert (out / "confusion.csv").is_file()
    assert f"{len(miga)} clips of {VIDEO}" in r.stdout


def test_skeleton_run_and_unlabelled_clips(trained, tmp_path):
    root, _, skel = trained
    video, labels, keypoints = _inputs(root)
    want = _rows(skel / "predictions.csv", VIDEO)
    clips = tmp_path / "clips.csv"  # the same clips without classes, a header line first
    clips.write_text("start_frame,end_frame\n" + "".join(
        f"{w['start_frame']},{w['end_frame']}\n" for w in want))
    assert [int(w["row"]) for w in want] == list(range(1, len(want) + 1))
    out = tmp_path / "out"
    r = _predict(video, "--run", skel, "--clips", clips, "--keypoints", keypoints, "--out", out)
    assert r.exit_code == 0, r.stderr
    got = _rows(out / "predictions.csv")
    _same_predictions(got, [dict(w, row=str(int(w["row"]) + 1)) for w in want], labelled=False)
    record = json.loads((out / "predict.json").read_text())
    assert record["modalities"] == ["skeleton"] and record["models"]["final"] == "fused"
    assert record["labelled"] is False and "report" not in record
    assert not (out / "confusion.csv").exists() and not (out / "emotion_predictions.csv").exists()
    assert not (out / "cache").exists()  # a skeleton run never reads the video


def _error(r, code=2):
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == code, r.stderr
    assert lines[-1].startswith("error: ")
    return lines[-1]


def test_bad_input_is_a_one_line_error_with_exit_2(trained, tmp_path):
    root, run, skel = trained
    video, labels, keypoints = _inputs(root)
    msg = _error(_predict(video, "--run", skel, "--clips", labels))
    assert "--keypoints" in msg and "joint, bone" in msg
    bad = tmp_path / "clips.csv"
    for text, want in [
        ("class,start,end\n7,10,40\n7,50,abc\n", "line 3: end frame 'abc' is not a number"),
        ("10,40\n60,50\n", "line 2: frames 60..50 are not a clip"),
        ("10,40,1,2\n", "line 1: 4 columns"),
        ("10,40\n100,99999\n", "line 2: the clip ends at frame 99999"),
    ]:
        bad.write_text(text)
        msg = _error(_predict(video, "--run", skel, "--clips", bad, "--keypoints", keypoints))
        assert f"{bad}, {want}" in msg, (text, msg)
    for not_run in (root, tmp_path / "nothing"):
        msg = _error(_predict(video, "--run", not_run, "--clips", labels, "--keypoints",
                              keypoints))
        assert str(not_run) in msg and ("not a classify run" in msg or "no such" in msg)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(skel, unfinished, ignore=shutil.ignore_patterns("predict"))
    (unfinished / "bone" / "last.pt").unlink()
    msg = _error(_predict(video, "--run", unfinished, "--clips", labels, "--keypoints",
                          keypoints))
    assert str(unfinished / "bone" / "last.pt") in msg and "not found" in msg


def test_an_undecodable_video_fails_with_exit_1(trained, tmp_path):
    root, run, _ = trained
    _, labels, keypoints = _inputs(root)
    video = tmp_path / f"{VIDEO}.mp4"
    video.write_bytes(b"not a video" * 100)
    msg = _error(_predict(video, "--run", run, "--clips", labels, "--keypoints", keypoints,
                          "--out", tmp_path / "out"), code=1)
    assert str(video) in msg and "no RGB tokens" in msg
