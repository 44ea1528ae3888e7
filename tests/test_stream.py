"""`detect stream`: streamed stage one equals the cache, the CLI emits final detections as JSON
lines equal to offline prediction over the same windows (window-final) or to the causal replay
(causal), and a bad, failing, URL or interrupted source behaves as documented (exit codes, what
is kept, messages)."""

import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detect.__main__ import app
from detect.apps.predict import predict_videos
from detect.apps.stream import EXIT_INTERRUPTED, EXIT_SOURCE_FAILED, EXIT_UNREADABLE, paced
from detect.config import load_config
from detect.inference.online import OnlineDetector, WindowSettings
from detect.inference.postprocess import DecodeOptions
from detect.inference.predictor import load_run_model
from detect.runs import write_run_files
from detect.synthetic.features import synth_feature_set
from extract.cache import FeatureSet
from extract.config import ExtractConfig, config_to_dict, to_toml
from extract.decode import DecodeSettings, FrameStream, decode_all
from extract.i3d import ChunkedExtractor, I3DBackbone, RunOptions, _build
from extract.pipeline import run_extraction, video_id_from_path

sys.path.insert(0, str(Path(__file__).parent))
from test_predict import TINY, _trained_run, e2e_run_dir  # noqa: E402
from videos import write_noise_video, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_streamed_features_equal_the_cache_with_bounded_memory(tmp_path):
    video = write_noise_video(tmp_path / "v.mp4", seconds=12.0, width=64, height=48)
    ecfg = ExtractConfig(weights="random", short_side=32, crop=32, device="cpu",
                         chunk_frames=64, dtype="float32")
    s = run_extraction([video], tmp_path / "cache", ecfg, progress=False)
    cached = FeatureSet.open(s.featureset).load("v").features
    backbone = I3DBackbone(_build(0)).eval()
    ex = ChunkedExtractor(backbone, 4, "cpu", RunOptions(chunk_frames=16))
    blocks = []
    with FrameStream(video, DecodeSettings(10.0, 32, 32), chunk=4, track_pts=False) as frames:
        for r5, _ in ex.iter_steps(frames):
            blocks.append(r5)
    streamed = np.concatenate(blocks)
    assert streamed.shape == cached.shape == (30, 2048)
    assert np.abs(streamed - cached).max() <= 1e-4 * max(1.0, np.abs(cached).max())
    assert len(blocks) > 5  # it came out chunk by chunk, not at the end
    assert frames.result.chosen_pts == []  # nothing grows with the stream

    # Memory: the frames held at once do not grow with the stream's length.
    def synthetic(n):
        g = torch.Generator().manual_seed(0)
        for _ in range(n // 4):
            yield torch.randint(0, 255, (4, 16, 16, 3), dtype=torch.uint8, generator=g)

    held = []
    for n in (200, 800):
        ex2 = ChunkedExtractor(backbone, 4, "cpu", RunOptions(chunk_frames=16))
        steps = sum(len(r5) for r5, _ in ex2.iter_steps(synthetic(n)))
        assert steps == n // 4
        held.append(ex2.max_buffered)
    assert held[0] == held[1] <= 16 + 2 * ex2.halo + 4


def test_paced_holds_each_chunk_until_its_time():
    chunks = [torch.zeros(4, 1, 1, 3, dtype=torch.uint8)] * 3
    t0 = time.monotonic()
    arrivals = [time.monotonic() - t0 for _ in paced(chunks, fps=40.0)]
    # Chunk i's last frame is frame 4i + 3, due (4i + 3) / 40 s after the first frame.
    for i, t in enumerate(arrivals):
        assert t >= (4 * i + 3) / 40 - 0.01


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    data, run = _trained_run(tmp, "random")
    videos = sorted(data.glob("*/*_color.mp4"))
    return tmp, data, run, videos[0]


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def as_set(dets) -> set[tuple]:
    """Detections at the precision the stream writes them (times 4 decimals, score 5): rounding
    offline's values coarser than that would put the two sides of a rounding boundary apart."""
    return {(d["label"], round(d["start"], 4), round(d["end"], 4), round(d["score"], 5))
            for d in dets}


@pytest.mark.slow
@pytest.mark.parametrize("hop", [None, 4])
def test_stream_a_file_equals_offline_predict(trained, tmp_path, hop):
    tmp, data, run, video = trained
    # By default, offline's windows: TINY's back-to-back windows of 16 (eval_overlap 0), and
    # predict's defaults. hop W/4 is eval_overlap 0.75. Threshold 0 (TINY): every query's
    # detection.
    preds, classes = predict_videos([video], run, tmp_path / "pred", progress=False,
                                    id_fn=video_id_from_path,
                                    eval_overlap=None if hop is None else 1 - hop / 16)
    off = preds[video_id_from_path(video)]
    out = tmp_path / "s.jsonl"
    r = CliRunner().invoke(app, ["stream", str(video), "--run", str(run), "--out", str(out),
                                 *([] if hop is None else ["--hop", str(hop)]), "--quiet"])
    assert r.exit_code == 0, r.output
    if hop is None:
        assert "windows of 16 steps every 16, as offline evaluation" in r.stderr
    else:
        assert "offline evaluation (predict, eval) hops 16" in r.stderr and "--hop 16" in r.stderr
    got = lines_of(out)
    assert got and [json.loads(x) for x in r.stdout.splitlines()] == got
    assert set(got[0]) == {"class", "label", "start", "end", "score", "emitted_at",
                           "source_time"}
    assert all(classes[d["label"]] == d["class"] for d in got)
    # Emitted once final: never before its end was received, never twice.
    assert all(d["source_time"] >= d["end"] - 1e-3 for d in got)
    assert len(as_set(got)) == len(got)
    want = {(int(c), round(s, 4), round(e, 4), round(p, 5))
            for s, e, c, p in zip(off.start, off.end, off.label, off.score, strict=True)}
    # Identical up to the tail window (offline ends a window at the video's end; there, what
    # the stream had already emitted wins).
    record = json.loads(out.with_suffix(".json").read_text())
    tail_start = (record["frames"] // 4 - 16) * 0.4
    early = {d for d in want if d[2] <= tail_start}
    assert early and early <= as_set(got)
    assert {d for d in as_set(got) if d[2] <= tail_start} == early
    overlap = len(as_set(got) & want)
    assert 2 * overlap / (len(got) + len(want)) >= 0.95
    assert record["status"] == "ended" and record["exit_code"] == 0
    assert record["detections"] == len(got) and record["window"] == 16
    assert record["hop"] == (hop or 16)
    assert record["source_latency_s"]["median"] >= 0 and "torch" in record["versions"]["packages"]
    assert record["real_time_factor"] > 0


@pytest.mark.slow
def test_stream_from_a_url_equals_the_file(trained, tmp_path):
    tmp, data, run, video = trained
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(video.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{video.name}"
        r1 = CliRunner().invoke(app, ["stream", url, "--run", str(run), "--out",
                                      str(tmp_path / "u.jsonl"), "--quiet"])
    finally:
        server.shutdown()
    r2 = CliRunner().invoke(app, ["stream", str(video), "--run", str(run), "--out",
                                  str(tmp_path / "f.jsonl"), "--quiet"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    strip = [{k: v for k, v in d.items() if k != "emitted_at"}
             for d in lines_of(tmp_path / "u.jsonl")]
    assert strip == [{k: v for k, v in d.items() if k != "emitted_at"}
                     for d in lines_of(tmp_path / "f.jsonl")]
    assert json.loads((tmp_path / "u.json").read_text())["live"] is True


@pytest.mark.slow
def test_unreadable_and_failing_sources(trained, tmp_path):
    tmp, data, run, video = trained
    runner = CliRunner()
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    for source, why in [(str(bad), "notes.mp4: not a video"),
                        (str(tmp_path / "missing.mp4"), "missing.mp4: file does not exist"),
                        ("/dev/video97", "/dev/video97: no such camera device")]:
        r = runner.invoke(app, ["stream", source, "--run", str(run), "--out",
                                str(tmp_path / "x.jsonl"), "--quiet"])
        assert r.exit_code == EXIT_UNREADABLE, r.output
        assert "cannot read the source" in r.stderr and why in r.stderr
        rec = json.loads((tmp_path / "x.json").read_text())
        assert rec["status"] == "unreadable" and rec["exit_code"] == EXIT_UNREADABLE
    # Damaged in the middle: decoding ends early and says so; what came before is final.
    frames, _ = decode_all(video, DecodeSettings(10.0, 0, 0))
    from videos import cfr_times
    mkv = write_video(tmp_path / "cut.mkv", cfr_times(10, len(frames)), 64, 48, codec="ffv1",
                      images=list(frames.numpy()))
    raw = bytearray(mkv.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 4000] = np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()
    mkv.write_bytes(bytes(raw))
    out = tmp_path / "cut.jsonl"
    r = runner.invoke(app, ["stream", str(mkv), "--run", str(run), "--out", str(out), "--quiet"])
    assert r.exit_code == EXIT_SOURCE_FAILED, r.output
    assert "the source failed after" in r.stderr
    assert re.search(r"cut\.mkv: (decoding failed at source frame|truncated or corrupt)", r.stderr)
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["status"] == "source failed" and 0 < rec["frames"] < len(frames)
    assert rec["detections"] == len(lines_of(out)) > 0
    # Not a run: usage error before any source is touched.
    r = runner.invoke(app, ["stream", str(video), "--run", str(tmp_path), "--quiet"])
    assert r.exit_code == 2 and "not a run directory" in r.stderr


def test_end_to_end_run_is_refused_before_the_source_is_opened(tmp_path):
    run = e2e_run_dir(tmp_path)
    r = CliRunner().invoke(app, ["stream", str(tmp_path / "missing.mp4"), "--run", str(run),
                                 "--quiet"])
    assert r.exit_code == 2 and "an end-to-end run" in r.stderr, r.output
    assert not (run / "stream").exists()


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_final(trained, tmp_path):
    tmp, data, run, video = trained
    out = tmp_path / "live.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "detect", "stream", str(video), "--run", str(run), "--out",
         str(out), "--realtime", "--quiet", "--hop", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    first = proc.stdout.readline()  # blocks until the first final detection
    assert first, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted after" in err
    printed = [json.loads(x) for x in (first + rest).splitlines()]
    assert printed == lines_of(out) and printed
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["status"] == "interrupted" and rec["detections"] == len(printed)
    # Paced: nothing was emitted before its end had played (emitted_at is wall time).
    assert all(d["emitted_at"] >= d["end"] - 0.5 for d in printed)
    assert rec["video_seconds"] < 17  # stopped before the 18 s video ended


FIELDS = {"class", "label", "start", "end", "score", "emitted_at", "source_time"}


@pytest.fixture(scope="module")
def causal_run(trained):
    """The trained run with online.causal set: the same model, streamed in the causal mode (its
    threshold, TINY's eval.score_threshold 0, is not a tuned emission threshold, which the
    stream's mechanics do not depend on). Also its `predict` on the video, which for a causal
    run is the causal replay of the video's features."""
    tmp, data, run, video = trained
    crun = tmp / "causal-run"
    shutil.copytree(run, crun, ignore=shutil.ignore_patterns("stream", "predict"))
    cfg = load_config(run / "config.toml", ["online.causal=true"])
    (crun / "config.toml").write_text(to_toml(config_to_dict(cfg)))
    preds, classes = predict_videos([video], crun, tmp / "causal-pred", progress=False,
                                    id_fn=video_id_from_path)
    return crun, video, preds[video_id_from_path(video)], tmp / "causal-pred"


@pytest.mark.slow
def test_causal_stream_equals_the_causal_replay_and_never_reports_the_future(causal_run,
                                                                             tmp_path):
    crun, video, off, _ = causal_run
    out = tmp_path / "c.jsonl"
    # No --mode: a run trained for the causal mode streams causally.
    r = CliRunner().invoke(app, ["stream", str(video), "--run", str(crun), "--out", str(out),
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    assert ("causal decisions every 1 step over windows of 16 steps, reporting gestures that "
            "ended within the last 2 s") in r.stderr
    got = lines_of(out)
    assert got and [json.loads(x) for x in r.stdout.splitlines()] == got
    assert all(set(d) == FIELDS for d in got)
    # Never the future: written once its end had been received; and within about D (2 s, 5
    # steps of 0.4 s) plus stage one's chunk, halo and a step (32 + 18 + 4 frames at 10 fps).
    assert all(d["source_time"] >= d["end"] - 1e-3 and d["emitted_at"] >= 0 for d in got)
    assert all(d["source_time"] - d["end"] <= 2.0 + 5.4 + 1e-3 for d in got)
    # The detections of the causal replay (`predict` on a causal run), exactly: the stream's
    # last decision is the replay's last one, at the video's end.
    want = {(int(c), round(s, 4), round(e, 4), round(p, 5))
            for s, e, c, p in zip(off.start, off.end, off.label, off.score, strict=True)}
    assert len(as_set(got)) == len(got) and as_set(got) == want
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["status"] == "ended" and record["exit_code"] == 0
    assert record["mode"] == "causal" and "hop" not in record
    assert (record["window"], record["every"], record["horizon_steps"]) == (16, 1, 5)
    assert record["horizon_s"] == pytest.approx(2.0) and record["threshold"] == 0.0
    assert record["detections"] == len(got)
    assert record["emissions"] == [{k: d[k] for k in ("end", "emitted_at", "source_time")}
                                   for d in got]
    for key in ("latency_s", "source_latency_s"):
        assert set(record[key]) == {"median", "p95", "max"}
    assert record["source_latency_s"]["median"] >= 0 and record["real_time_factor"] > 0
    assert record["stage_two_s_per_window"]["median"] > 0


@pytest.mark.slow
def test_window_final_mode_on_a_causal_run(causal_run, tmp_path):
    crun, video, _, pred_dir = causal_run
    out = tmp_path / "w.jsonl"
    r = CliRunner().invoke(app, ["stream", str(video), "--run", str(crun), "--out", str(out),
                                 "--mode", "window-final", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "window-final: windows of 16 steps every 16, on a run trained for the causal" in (
        r.stderr)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["mode"] == "window-final" and record["hop"] == 16 and "every" not in record
    got = lines_of(out)
    assert len(record["emissions"]) == len(got) == record["detections"] > 0
    # The sliding windows' final detections over the same features (the ones predict cached).
    feats = FeatureSet.open(next((pred_dir / "features").iterdir())).load(
        video_id_from_path(video)).features
    model, _ = load_run_model(crun, torch.device("cpu"))
    cfg = load_config(crun / "config.toml")
    ws = WindowSettings(16, 16, 4, 10.0)
    det = OnlineDetector(model, ws, cfg.eval.nms_iou, 0.0, DecodeOptions.of(cfg, 4, 10.0, 16))
    parts = [det.push(np.asarray(feats[i : i + 8], np.float32)) for i in range(0, len(feats), 8)]
    parts.append(det.finish())
    want = {(int(d.label[i]), round(float(d.start[i]), 4), round(float(d.end[i]), 4),
             round(float(d.score[i]), 5)) for d in parts for i in range(len(d))}
    assert as_set(got) == want


def test_options_of_the_other_mode_are_refused_before_the_source_is_opened(tmp_path):
    fs, ann = synth_feature_set(tmp_path / "feats", videos=2, classes=2, dim=8,
                                min_duration_s=10, max_duration_s=12)
    run = tmp_path / "causal-run"
    write_run_files(run, load_config(None, [*TINY, "online.causal=true"]), fs, ann)
    missing = str(tmp_path / "missing.mp4")
    runner = CliRunner()
    for args, why in [([], "--hop sets the window-final mode's windows"),
                      (["--mode", "causal"], "--hop sets the window-final mode's windows")]:
        r = runner.invoke(app, ["stream", missing, "--run", str(run), "--hop", "4", *args,
                                "--quiet"])
        assert r.exit_code == 2 and why in r.stderr and "--every" in r.stderr, r.output
    r = runner.invoke(app, ["stream", missing, "--run", str(run), "--mode", "window-final",
                            "--every", "2", "--quiet"])
    assert r.exit_code == 2 and "--every sets the causal mode's decisions" in r.stderr, r.output
    assert not (run / "stream").exists()
