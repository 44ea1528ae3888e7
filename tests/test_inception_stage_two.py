"""Stage two on `inception_i3d` feature sets (issue 31): a features-mode run trains, evaluates,
predicts (== extract + eval) and streams with the feature set's backbone; end-to-end mode
trains the inception backbone itself, freezes its stages, evaluates and re-extracts with it.
Tiny: random weights, 32 x 32 crops, four 18 s videos."""

import json

import pytest
import torch
from typer.testing import CliRunner

from detect.__main__ import app
from detect.apps.predict import predict_videos
from detect.config import ConfigError, load_config
from detect.data.annotations import load_annotations
from detect.data.windows import collate_windows, window_dataset
from detect.evaluation.evaluate import evaluate_run
from detect.model.e2e import STAGE_BLOCKS, build_e2e_model, feature_mismatch
from detect.runs import BEST
from detect.synthetic.videos import render_dataset
from detect.train.loop import train
from extract.cache import FeatureSet
from extract.config import ExtractConfig
from extract.i3d import I3DBackbone, _build, build_backbone
from extract.inception_i3d import ENDPOINTS
from extract.io import load_checkpoint
from extract.pipeline import run_extraction, video_id_from_path

# predict extracts with the default chunk (256 frames on a CPU): the same chunks give the same
# float rounding, so its features, and detections, are bit for bit the cache's.
SETTINGS = dict(model="inception_i3d", weights="random", short_side=32, crop=32, device="cpu")
TINY = ["data.window=16", "model.hidden_dim=16", "model.num_queries=6", "model.num_points=6",
        "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=32", "model.mix_dim=4",
        "train.epochs=2", "train.device=cpu", "eval.score_threshold=0.0"]
E2E = [*TINY[:-3], "mode=e2e", "backbone.weights=random", "backbone.lr_mult=1.0",
       "data.train_overlap=0", "model.mamba.backend=torch", "train.batch_size=2",
       "train.lr=1e-3", "train.epochs=1", "train.device=cpu", "eval.score_threshold=0.0"]


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """Rendered videos and their inception_i3d feature set, frames stored for e2e mode."""
    tmp = tmp_path_factory.mktemp("inception")
    data = tmp / "data"
    render_dataset(data, videos=4, minutes=0.3, classes=3, size=(64, 48), progress=False)
    s = run_extraction([data], tmp / "cache", ExtractConfig(**SETTINGS, save_frames=True),
                       id_fn=video_id_from_path, progress=False)
    fs = FeatureSet.open(s.featureset)
    assert fs.settings["model"] == "inception_i3d" and fs.settings["layers"] == ["mixed_5c"]
    return tmp, data, fs


def test_stages_cover_every_block_once():
    counts = {"i3d_r50": len(I3DBackbone(_build(0)).blocks), "inception_i3d": len(ENDPOINTS)}
    for model, stages in STAGE_BLOCKS.items():
        blocks = [b for s in range(1, 6) for b in stages[s]]
        assert sorted(blocks) == list(range(counts[model])), model
    assert [ENDPOINTS[b] for b in STAGE_BLOCKS["inception_i3d"][5]] == ["Mixed_5b", "Mixed_5c"]


def test_predict_and_stream_extract_with_the_runs_backbone(inception):
    tmp, data, fs = inception
    run = tmp / "run"
    train(load_config(None, TINY), fs.path, data / "annotations.json", run, progress=False)
    assert load_checkpoint(run / BEST)["in_dim"] == 1024  # Mixed_5c
    evaluate_run(run, "test", progress=False)
    expected = json.loads((run / "predictions.json").read_text())["results"]
    videos = [data / v / f"{v}_color.mp4" for v in sorted(expected)]
    preds, _ = predict_videos(videos, run, tmp / "pred", progress=False,
                              id_fn=video_id_from_path)
    got = json.loads((tmp / "pred" / "predictions.json").read_text())["results"]
    assert got == expected and sum(len(v) for v in got.values()) > 0
    # predict re-extracted with inception_i3d: its feature set has the run's key.
    (made,) = [p for p in (tmp / "pred" / "features").iterdir() if p.is_dir()]
    assert made.name == fs.key
    # stream: the same stage one, frames as they arrive; detections as offline's windows give.
    out = tmp / "s.jsonl"
    r = CliRunner().invoke(app, ["stream", str(videos[0]), "--run", str(run), "--out", str(out),
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    streamed = {(d["label"], round(d["start"], 2), round(d["end"], 2))
                for d in map(json.loads, out.read_text().splitlines())}
    vid = preds[video_id_from_path(videos[0])]
    offline = {(int(c), round(float(s), 2), round(float(e), 2))
               for s, e, c in zip(vid.start, vid.end, vid.label, strict=True)}
    record = json.loads(out.with_suffix(".json").read_text())
    tail = (record["frames"] // 4 - 16) * 0.4  # offline's last window ends at the video's end
    early = {d for d in offline if d[2] <= tail}
    assert early and early == {d for d in streamed if d[2] <= tail}


def test_end_to_end_mode_trains_the_inception_backbone(inception, tmp_path):
    tmp, data, fs = inception
    ann_path = data / "annotations.json"
    with pytest.raises(ConfigError, match=rf"backbone.model: 'i3d_r50', but the feature set "
                                          rf"{fs.path} was made by inception_i3d"):
        train(load_config(None, [*E2E, "backbone.model=i3d_r50"]), fs.path, ann_path,
              tmp_path / "wrong", progress=False)
    assert not (tmp_path / "wrong").exists()
    run = tmp_path / "e2e"
    train(load_config(None, E2E), fs.path, ann_path, run, progress=False)
    cfg = load_config(run / "config.toml")
    assert cfg.backbone.model == "inception_i3d"  # resolved from the feature set
    ck = load_checkpoint(run / BEST)
    assert ck["in_dim"] == 1024 and ck["res4_dim"] == 0
    # frozen_stages = 2: up to MaxPool3d_3a untouched; Mixed_5c trained.
    start, _ = build_backbone("random", 0, model="inception_i3d")
    s0 = start.state_dict()
    trained = {k.removeprefix("backbone."): v for k, v in ck["model"].items()
               if k.startswith("backbone.")}
    assert set(trained) == set(s0)
    for k, v in s0.items():
        if k.startswith(("Conv3d_", "MaxPool3d_")) or ".bn." in k:  # BatchNorm frozen too
            assert torch.equal(trained[k], v), k
    assert not torch.equal(trained["Mixed_5c.b0.conv3d.weight"], s0["Mixed_5c.b0.conv3d.weight"])
    assert {"f1_miga", "map"} <= set(evaluate_run(run, "test", progress=False))

    # The untouched starting backbone reproduces the cache; the finetuned one re-extracts a
    # feature set whose features are the end-to-end model's own.
    ann = load_annotations(ann_path, feature_set=fs)
    fresh = build_e2e_model(cfg, len(ann.classes))
    ds = window_dataset(cfg, fs, ann, "test", train=False, halo=fresh.halo)
    assert fresh.halo == 40 and feature_mismatch(fresh, ds, fs) < 1e-2
    model = build_e2e_model(cfg, len(ann.classes), pretrained=False)
    model.load_state_dict(ck["model"])
    model.eval()
    vid = ds.video_ids[0]
    s = run_extraction([data / vid / f"{vid}_color.mp4"], tmp_path / "re",
                       ExtractConfig(**{**SETTINGS, "weights": str(run / BEST)}),
                       id_fn=video_id_from_path, progress=False)
    new = FeatureSet.open(s.featureset)
    assert new.key.startswith("inception_i3d-e2e-best-s4-c32-")
    batch = collate_windows([ds[0]])
    with torch.no_grad():
        feats, _ = model.features(batch["frames"], batch["offsets"],
                                  [m[2] for m in batch["meta"]], 16)
    _, start_step, valid = batch["meta"][0]
    want = torch.from_numpy(new.load(vid).features[start_step:start_step + valid])
    scale = float(want.abs().max())
    torch.testing.assert_close(feats[0, :valid], want, rtol=2e-3, atol=2e-3 * scale)
