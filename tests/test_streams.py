"""Several feature sets as streams of one input (extract/streams.py) and their fusion in the
detector (`model.fusion`): joined in order, checked to describe the same videos on the same time
grid, fused by concatenation or a gated residual, and trained, resumed and evaluated through the
shared code."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detect.__main__ import app
from detect.apps.predict import predict_videos
from detect.config import load_config
from detect.model.build import build_model
from extract.cache import CacheError, FeatureSet, write_video
from extract.pipeline import run_extraction, video_id_from_path
from extract.streams import FeatureStreams, open_features

PYR = ['model.arch="pyramid"', "model.hidden_dim=16", "model.pyramid.levels=3",
       "model.pyramid.stem_blocks=1", "model.pyramid.head_layers=1", "model.dropout=0.0"]


def second_stream(fs: FeatureSet, root, dim: int = 3, seed: int = 0, drop: str | None = None,
                  shorten: str | None = None, stride: int | None = None) -> FeatureSet:
    """A pose-like stream of the same videos: a fixed random projection of the first one plus
    noise (drop: leave a video out; shorten: give a video one step fewer)."""
    rng = np.random.default_rng(seed)
    out = FeatureSet.create(root, "pose", {"fps": fs.fps, "stride": stride or fs.stride,
                                           "dim": dim, "seed": seed})
    proj = None
    for vid in fs.video_ids():
        if vid == drop:
            continue
        v = fs.load(vid)
        if proj is None:
            proj = rng.normal(size=(v.features.shape[1], dim)) / np.sqrt(v.features.shape[1])
        x = v.features @ proj + 0.1 * rng.normal(size=(v.num_steps, dim))
        ts = v.timestamps
        if vid == shorten:
            x, ts = x[:-1], ts[:-1]
        write_video(out.video_path(vid), x.astype(np.float32), ts, v.meta, dtype="float32")
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from detect.synthetic.features import synth_feature_set

    tmp = tmp_path_factory.mktemp("streams")
    fs, ann = synth_feature_set(tmp / "d", videos=12, classes=3, seed=0, noise=0.0, dim=16,
                                min_duration_s=40, max_duration_s=60)
    return tmp, fs, ann, second_stream(fs, tmp / "pose")


def test_streams_join_in_order_and_refuse_what_does_not_line_up(sets, tmp_path):
    tmp, rgb, _, pose = sets
    st = open_features([rgb.path, pose.path])
    assert isinstance(st, FeatureStreams) and st.key == f"{rgb.key}+{pose.key}"
    vid = rgb.video_ids()[0]
    v = st.load(vid)
    np.testing.assert_array_equal(v.features[:, :16], rgb.load(vid).features)
    np.testing.assert_array_equal(v.features[:, 16:], pose.load(vid).features)
    assert st.dims(vid) == [16, 3] and st.video_ids() == rgb.video_ids()
    assert open_features([rgb.path]).key == rgb.key  # one set: no streams
    # A video missing from one set, or with other timestamps, is named.
    other = rgb.video_ids()[1]
    gap = FeatureStreams([rgb, second_stream(rgb, tmp_path / "a", drop=other)])
    assert not gap.has(other) and other not in gap.video_ids()
    short = FeatureStreams([rgb, second_stream(rgb, tmp_path / "b", shorten=other)])
    with pytest.raises(CacheError, match=f"video '{other}'.*same timestamps"):
        short.load(other)
    with pytest.raises(CacheError, match="time grid"):
        FeatureStreams([rgb, second_stream(rgb, tmp_path / "c", stride=2)])


def test_gated_fusion_is_a_gated_residual_from_the_other_streams():
    torch.manual_seed(0)
    cfg = load_config(None, [*PYR, 'model.fusion="gated"'])
    m = build_model(cfg, 7, 3, 0, streams=(4, 3)).eval()
    x = torch.randn(2, 5, 7)
    h0 = m.input_proj(x[..., :4])
    h1 = m.stream_proj(x[..., 4:])
    want = h0 + torch.sigmoid(m.stream_gate(torch.cat([h0, h1], -1))) * h1
    torch.testing.assert_close(m.project(x), want)
    # Concatenation: one projection of the joined channels (the single-set model's layers).
    cat = build_model(load_config(None, PYR), 7, 3, 0, streams=(4, 3)).eval()
    assert not hasattr(cat, "stream_gate") and cat.input_proj.in_features == 7
    with pytest.raises(ValueError, match="sum"):
        build_model(cfg, 8, 3, 0, streams=(4, 3))
    # A closed gate starts (nearly) on the first stream alone, with the same other weights.
    torch.manual_seed(0)
    shut = build_model(load_config(None, [*PYR, 'model.fusion="gated"',
                                          'model.gate_init="closed"']), 7, 3, 0,
                       streams=(4, 3)).eval()
    torch.testing.assert_close(shut.input_proj.weight, m.input_proj.weight)
    gate = torch.sigmoid(shut.stream_gate(torch.cat([h0, h1], -1)))
    assert gate.max() < 0.1 < torch.sigmoid(m.stream_gate(torch.cat([h0, h1], -1))).mean()
    torch.testing.assert_close(shut.project(x), h0 + gate * h1)
    with pytest.raises(ValueError, match="gate_init"):
        load_config(None, ['model.gate_init="open"'])


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_a_two_stream_run_trains_resumes_and_evaluates(sets, tmp_path, fusion):
    from detect.apps.predict import predict_videos
    from detect.evaluation.evaluate import evaluate_run
    from detect.runs import BEST, read_run, run_feature_set
    from detect.train.loop import train
    from extract.io import RunError, load_checkpoint

    _, rgb, ann, pose = sets
    cfg = load_config(None, [*PYR, "data.window=32", "train.epochs=4", "train.lr=3e-3",
                             "train.batch_size=8", "train.device=cpu", f'model.fusion="{fusion}"'])
    run = tmp_path / "run"
    train(cfg, [rgb.path, pose.path], ann, run, progress=False, max_epochs=2)
    train(cfg, [rgb.path, pose.path], ann, run, resume=True, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert [r["key"] for r in info["feature_sets"]] == [rgb.key, pose.key]
    assert info["feature_set"]["key"] == rgb.key
    assert load_checkpoint(run / BEST)["streams"] == [16, 3]
    assert isinstance(run_feature_set(run, read_run(run)[1]), FeatureStreams)
    m = evaluate_run(run, "test", progress=False)
    assert m["f1_strict"] > 0 and m["num_videos"] >= 1
    # The streams in another order are another input: resume refuses them.
    with pytest.raises(RunError, match="trained on feature sets"):
        train(cfg, [pose.path, rgb.path], ann, run, resume=True, progress=False)
    # Synthetic streams were not made from videos: predict says it cannot remake them.
    with pytest.raises(RunError, match="not made from videos"):
        predict_videos([tmp_path / "v.mp4"], run, tmp_path / "p", progress=False)


@pytest.mark.slow
def test_rendered_videos_give_rgb_and_pose_streams_on_one_grid(tmp_path):
    """The renderer's skeletons through `extract pose` line up with the videos' I3D features, and
    a gated two-stream detector trains on them: pose and fusion end to end, no download."""
    from detect.synthetic.videos import render_dataset
    from detect.train.loop import train
    from extract.config import ExtractConfig
    from extract.io import RunError
    from extract.pose.run import KinectSource, run_pose_extraction

    data = tmp_path / "data"
    render_dataset(data, videos=4, minutes=0.3, classes=3, size=(64, 48), progress=False)
    ecfg = ExtractConfig(weights="random", short_side=32, crop=32, device="cpu", chunk_frames=64)
    rgb = run_extraction([data], tmp_path / "cache", ecfg, id_fn=video_id_from_path,
                         progress=False)
    pose = run_pose_extraction(KinectSource(data), tmp_path / "cache", progress=False)
    assert not rgb.failed and not pose.failed
    st = open_features([rgb.featureset, pose.featureset])
    for vid in st.video_ids():
        v = st.load(vid)  # raises unless both give the same steps at the same timestamps
        assert v.features.shape[1] == st.dims(vid)[0] + 85
    assert len(st.video_ids()) == 4
    # Threshold 0: every detection, so the comparisons below cannot pass on empty sets.
    cfg = load_config(None, [*PYR, "data.window=16", "train.epochs=2", "train.batch_size=4",
                             "train.device=cpu", 'model.fusion="gated"',
                             "eval.score_threshold=0.0"])
    # Either stream order (the first is the gated residual's base): RGB + pose, pose + RGB.
    for name, order in (("run", [rgb.featureset, pose.featureset]),
                        ("pose-first", [pose.featureset, rgb.featureset])):
        run = tmp_path / name
        train(cfg, order, data / "annotations.json", run, progress=False)
        info = json.loads((run / "run.json").read_text())
        models = [r["settings"]["model"] for r in info["feature_sets"]]
        pose_at = 1 if name == "run" else 0
        assert models[pose_at] == "kinect-v2-25" and models[1 - pose_at] == "i3d_r50"
        videos = predict_equals_eval(run, data, tmp_path / f"pred-{name}")
        stream_equals_predict(run, videos[0], tmp_path / f"pred-{name}", tmp_path / name)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "Sample0099_color.mp4").write_bytes(videos[0].read_bytes())
    with pytest.raises(RunError, match="no Sample0099_skeleton.csv beside"):
        predict_videos([lone / "Sample0099_color.mp4"], tmp_path / "run", tmp_path / "p2",
                       progress=False, id_fn=video_id_from_path)
    r = CliRunner().invoke(app, ["stream", str(lone / "Sample0099_color.mp4"), "--run",
                                 str(tmp_path / "run"), "--out", str(tmp_path / "l.jsonl"),
                                 "--quiet"])
    assert r.exit_code == 2 and "no Sample0099_skeleton.csv beside" in r.output
    assert not (tmp_path / "l.jsonl").exists()  # refused before the source was opened


def predict_equals_eval(run, data, out):
    """predict extracts every stream of new videos (the skeleton beside each) with the run's
    recorded settings, in the run's order, and gives what eval gives on the cached sets; the
    test videos."""
    from detect.evaluation.evaluate import evaluate_run

    evaluate_run(run, "test", progress=False)
    expected = json.loads((run / "predictions.json").read_text())["results"]
    videos = [data / v / f"{v}_color.mp4" for v in sorted(expected)]
    predict_videos(videos, run, out, progress=False, id_fn=video_id_from_path)
    assert json.loads((out / "predictions.json").read_text())["results"] == expected
    return videos


def stream_equals_predict(run, video, pred, tmp_path, model: str = "kinect-v2-25") -> None:
    """`detect stream` of a video through an RGB + pose run: the pose steps come from the
    skeleton beside it as the frames arrive, and the detections equal predict's (in `pred`) up
    to the last window (where offline ends a window at the video's end)."""
    offline = json.loads((pred / "predictions.json").read_text())["results"][video.parent.name]
    out = tmp_path / "s.jsonl"
    r = CliRunner().invoke(app, ["stream", str(video), "--run", str(run), "--out", str(out),
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    got = {(d["label"], round(d["start"], 4), round(d["end"], 4), round(d["score"], 5))
           for d in map(json.loads, out.read_text().splitlines())}
    want = {(d["label_id"], round(d["segment"][0], 4), round(d["segment"][1], 4),
             round(d["score"], 5)) for d in offline}
    record = json.loads(out.with_suffix(".json").read_text())
    tail_start = (record["frames"] // 4 - 16) * 0.4
    early = {d for d in want if d[2] <= tail_start}
    assert early and {d for d in got if d[2] <= tail_start} == early
    (feed,) = record["pose_streams"]
    assert feed["model"] == model and feed["padded_ticks"] == 0
    assert feed["pose"]["steps"] == record["frames"] // 4


def test_a_blazepose_run_predicts_and_streams(tmp_path):
    """With the `pose` extra: BlazePose on rendered videos as the pose stream; predict runs it on
    new videos and stream on a second decoding of the file, both equal to eval's detections."""
    pytest.importorskip("mediapipe")
    from detect.synthetic.videos import render_dataset
    from detect.train.loop import train
    from extract.config import ExtractConfig
    from extract.pose.mediapipe_pose import BlazePose
    from extract.pose.run import VideoSource, run_pose_extraction

    data = tmp_path / "data"
    render_dataset(data, videos=4, minutes=0.3, classes=3, size=(256, 192), progress=False)
    ecfg = ExtractConfig(weights="random", short_side=32, crop=32, device="cpu", chunk_frames=64)
    rgb = run_extraction([data], tmp_path / "cache", ecfg, id_fn=video_id_from_path,
                         progress=False)
    pose = run_pose_extraction(VideoSource([data], BlazePose()), tmp_path / "cache",
                               progress=False)
    assert not rgb.failed and not pose.failed
    cfg = load_config(None, [*PYR, "data.window=16", "train.epochs=2", "train.batch_size=4",
                             "train.device=cpu", 'model.fusion="gated"',
                             "eval.score_threshold=0.0"])
    run = tmp_path / "run"
    train(cfg, [rgb.featureset, pose.featureset], data / "annotations.json", run, progress=False)
    videos = predict_equals_eval(run, data, tmp_path / "pred")
    stream_equals_predict(run, videos[0], tmp_path / "pred", tmp_path, "blazepose-33-full")


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_moddrop_drops_one_stream_per_window_never_both(fusion):
    torch.manual_seed(1)
    cfg = load_config(None, [*PYR, f'model.fusion="{fusion}"', "model.stream_dropout=0.6"])
    m = build_model(cfg, 7, 3, 0, streams=(4, 3))
    x = torch.randn(400, 2, 7)
    m.eval()
    full = m.project(x)
    only = {}
    for name, cut in (("first", slice(0, 4)), ("other", slice(4, 7))):
        z = x.clone()
        z[..., cut] = 0.0  # inputs are standardised with the identity stats here
        if fusion == "gated":  # the gated model drops the stream's projection, not its input
            h0, h1 = m.input_proj(x[..., :4]), m.stream_proj(x[..., 4:])
            h0, h1 = (h0 * 0, h1) if name == "first" else (h0, h1 * 0)
            only[name] = h0 + torch.sigmoid(m.stream_gate(torch.cat([h0, h1], -1))) * h1
        else:
            only[name] = m.project(z)
    m.train()
    got = m.project(x)
    kind = []
    for b in range(400):
        same = [n for n, ref in (("full", full), *only.items())
                if torch.allclose(got[b], ref[b], atol=1e-6)]
        assert len(same) == 1, same
        kind.append(same[0])
    share = {k: kind.count(k) / 400 for k in ("full", "first", "other")}
    assert abs(share["first"] - 0.3) < 0.08 and abs(share["other"] - 0.3) < 0.08
    torch.testing.assert_close(m.eval().project(x), full)  # never at inference
