"""`detect predict` on new videos equals extract + eval on them; missing weights are refused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detect.__main__ import app
from detect.apps.predict import predict_videos
from detect.config import load_config
from detect.evaluation.evaluate import evaluate_run
from detect.runs import write_run_files
from detect.synthetic.features import synth_feature_set
from detect.synthetic.videos import render_dataset
from detect.train.loop import train
from extract.config import ExtractConfig
from extract.i3d import _build
from extract.io import RunError
from extract.pipeline import run_extraction, video_id_from_path

TINY = ["data.window=16", "model.hidden_dim=16", "model.num_queries=6", "model.num_points=6",
        "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=32", "model.mix_dim=4",
        "train.epochs=2", "train.device=cpu", "eval.score_threshold=0.0"]


def e2e_run_dir(tmp_path):
    """A run directory of an end-to-end run (config and run.json, as `train` writes them first)."""
    fs, ann = synth_feature_set(tmp_path / "feats", videos=2, classes=2, dim=8,
                                min_duration_s=10, max_duration_s=12)
    run = tmp_path / "e2e-run"
    write_run_files(run, load_config(None, [*TINY, "mode=e2e"]), fs, ann)
    return run


def test_end_to_end_run_is_refused_before_any_video_is_read(tmp_path):
    run = e2e_run_dir(tmp_path)
    video = tmp_path / "any.mp4"  # never opened: the run is refused first
    with pytest.raises(RunError, match=r"e2e-run: an end-to-end run .*--weights .*best\.pt"):
        predict_videos([video], run, tmp_path / "pred", progress=False)
    assert not (tmp_path / "pred").exists()
    r = subprocess.run([sys.executable, "-m", "detect", "predict", str(video), "--run", str(run)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "an end-to-end run" in r.stderr, r.stderr


def test_a_run_killed_before_its_threshold_is_refused_clearly(tmp_path, monkeypatch):
    """best.pt gets its tuned threshold after the last epoch; eval, predict and stream on a run
    stopped before that say so (they raised KeyError: 'threshold')."""
    import detect.train.loop as loop

    fs, ann = synth_feature_set(tmp_path / "feats", videos=6, classes=2, dim=8,
                                min_duration_s=20, max_duration_s=30)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C between the last epoch and the threshold

    monkeypatch.setattr(loop, "finalize_threshold", killed)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, TINY[:-1]), fs.path, ann, run, progress=False)
    assert (run / "checkpoints" / "best.pt").is_file()
    why = r"run: checkpoints/best.pt has no tuned score threshold yet.*--resume"
    with pytest.raises(RunError, match=why):
        evaluate_run(run, "test", progress=False)
    with pytest.raises(RunError, match=why):
        predict_videos([tmp_path / "any.mp4"], run, tmp_path / "pred", progress=False)
    assert not (tmp_path / "pred").exists()
    r = CliRunner().invoke(app, ["stream", str(tmp_path / "any.mp4"), "--run", str(run)])
    assert r.exit_code == 2 and "no tuned score threshold" in r.stderr, r.output


def _trained_run(tmp_path, weights):
    data = tmp_path / "data"
    render_dataset(data, videos=4, minutes=0.3, classes=3, size=(64, 48), progress=False)
    ecfg = ExtractConfig(weights=weights, short_side=32, crop=32, device="cpu", chunk_frames=64)
    s = run_extraction([data], tmp_path / "cache", ecfg, id_fn=video_id_from_path,
                       progress=False)
    run = tmp_path / "run"
    train(load_config(None, TINY), s.featureset, data / "annotations.json", run, progress=False)
    return data, run


@pytest.mark.slow
def test_predict_equals_extract_plus_eval(tmp_path):
    data, run = _trained_run(tmp_path, "random")
    evaluate_run(run, "test", progress=False)
    expected = json.loads((run / "predictions.json").read_text())["results"]
    test_ids = sorted(expected)
    videos = [data / v / f"{v}_color.mp4" for v in test_ids]
    preds, classes = predict_videos(videos, run, tmp_path / "pred", progress=False,
                                    id_fn=video_id_from_path)
    got = json.loads((tmp_path / "pred" / "predictions.json").read_text())["results"]
    assert sorted(got) == test_ids and got == expected
    assert sum(len(v) for v in got.values()) > 0  # threshold 0: every query's detection
    assert sorted(p.name for p in (tmp_path / "pred" / "submission").glob("*.csv")) == [
        f"{v}_prediction.csv" for v in test_ids]
    record = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert record["videos"] == test_ids and record["threshold"] == 0.0
    pngs = sorted((tmp_path / "pred" / "timelines").glob("*.png"))
    assert [p.stem for p in pngs] == test_ids and all(p.stat().st_size > 5000 for p in pngs)
    result = CliRunner().invoke(app, ["predict", str(videos[0]), "--run", str(run), "--out",
                                      str(tmp_path / "cli"), "--dataset", "smg"])
    assert result.exit_code == 0, result.output
    assert "score" in result.stdout and test_ids[0] in result.stdout
    # Nothing partial stays behind: a non-video fails with a message, a missing path is a usage
    # error before anything is made.
    (tmp_path / "notes.mp4").write_text("not a video\n")
    with pytest.raises(RunError, match="no video could be read"):
        predict_videos([tmp_path / "notes.mp4"], run, tmp_path / "p1", progress=False)
    with pytest.raises(ValueError, match="missing.mp4: no such file"):
        predict_videos([tmp_path / "missing.mp4"], run, tmp_path / "p2", progress=False)
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()
    # The feature set moved away: the run alone (run.json) is enough to predict the same.
    info = json.loads((run / "run.json").read_text())
    assert info["feature_set"]["weights"] == {"label": "random", "seed": 0}
    moved = tmp_path / "moved"
    Path(info["feature_set"]["path"]).rename(moved)
    predict_videos(videos, run, tmp_path / "pred2", progress=False, id_fn=video_id_from_path)
    assert json.loads((tmp_path / "pred2" / "predictions.json").read_text())["results"] == got


@pytest.mark.slow
def test_run_whose_weights_are_missing_is_refused(tmp_path):
    ckpt = tmp_path / "weights.pyth"
    torch.manual_seed(3)
    torch.save({"model_state": _build(3).state_dict()}, ckpt)
    data, run = _trained_run(tmp_path, str(ckpt))
    video = sorted(data.rglob("*_color.mp4"))[0]
    ckpt.unlink()
    with pytest.raises(RunError, match="not usable here"):
        predict_videos([video], run, tmp_path / "pred", progress=False)
    # Other weights at the same path give another digest: refused too.
    torch.save({"model_state": _build(4).state_dict()}, ckpt)
    with pytest.raises(RunError, match="refusing"):
        predict_videos([video], run, tmp_path / "pred", progress=False)
    assert not (tmp_path / "pred" / "predictions.json").exists()


def test_a_settings_mismatch_names_the_settings_not_the_weights(tmp_path):
    from detect.apps.predict import _mismatch

    theirs = {"model": "i3d_r50", "weights_sha256": "ab" * 32, "crop": 224, "fps": 10.0}
    msg = _mismatch("kinetics", {**theirs, "crop": 112}, theirs, "set")
    assert "crop: here 112, the run's 224" in msg and "digest" not in msg
    msg = _mismatch("kinetics", {**theirs, "weights_sha256": "cd" * 32}, theirs, "set")
    assert "digest cdcdcdcdcdcd..." in msg and "made with abababababab..." in msg
