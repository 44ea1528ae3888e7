import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from extract.__main__ import app
from extract.cache import CacheError, FeatureMeta, FeatureSet, feature_timestamps, read_video
from extract.config import ExtractConfig
from extract.decode import DecodeSettings, decode_all
from extract.i3d import ChunkedExtractor, RunOptions, build_backbone
from extract.pipeline import run_extraction, strip_suffix_id
from tests.videos import cfr_times, write_audio_only, write_noise_video, write_video

REPO = Path(__file__).resolve().parents[1]
TINY = dict(weights="random", short_side=32, crop=32, device="cpu", chunk_frames=16)
TINY_ARGS = ["--weights", "random", "--short-side", "32", "--crop", "32", "--device", "cpu",
             "--chunk-frames", "16", "--no-progress"]


def cfg(**kw) -> ExtractConfig:
    return ExtractConfig(**{**TINY, **kw})


def sub_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    write_noise_video(d / "Sample0001_color.mp4", 4.2, fps=25, seed=1)
    (d / "sub").mkdir()
    write_noise_video(d / "sub" / "Sample0002_color.mp4", 3.0, fps=10, seed=2)
    return d


def test_features_attributes_and_numbers(tmp_path, videos):
    s = run_extraction([videos], tmp_path / "out", cfg(stride=4, res4=True, dtype="float32"),
                       id_fn=strip_suffix_id("_color"), progress=False)
    assert s.ok and s.done == ["Sample0001", "Sample0002"] and not s.skipped
    fs = FeatureSet.open(s.featureset)
    assert fs.video_ids() == ["Sample0001", "Sample0002"]
    assert fs.settings["stride"] == 4 and fs.settings["crop"] == 32
    assert s.featureset.name.startswith("i3d_r50-random-s4-c32-")
    v = fs.load("Sample0001", with_res4=True)
    m = v.meta
    assert {f.name for f in fields(FeatureMeta)} <= set(vars(m))
    assert (m.video_id, m.fps, m.stride, m.model, m.weights) == (
        "Sample0001", 10.0, 4, "i3d_r50", "random")
    assert m.source_path == str((videos / "Sample0001_color.mp4").resolve())
    assert m.source_fps == pytest.approx(25.0)
    assert m.num_frames == 42 and m.duration == pytest.approx(4.2)
    assert m.layers == ["res5", "res4"] and len(m.weights_sha256) == 64
    st = (videos / "Sample0001_color.mp4").stat()
    assert m.extra["source_size"] == st.st_size and m.extra["source_mtime_ns"] == st.st_mtime_ns
    assert "pyav" in m.extra["decoder"] and m.extra["chosen_lag_max"] < 0.04
    assert v.features.shape == (42 // 4, 2048) and v.res4.shape == (10, 1024)
    np.testing.assert_allclose(v.timestamps, feature_timestamps(10, 4, 10.0))
    # The source frame shown at each 10 fps frame k of a 25 fps source: the last with pts <= k/10.
    with h5py.File(fs.video_path("Sample0001")) as f:
        pts = f["source_pts"][()]
    np.testing.assert_allclose(pts, np.floor(np.arange(42) * 2.5) / 25.0, atol=1e-6)
    # The pipeline's numbers are those of the model run directly on the decoded frames.
    frames, _ = decode_all(videos / "Sample0001_color.mp4", DecodeSettings(10.0, 32, 32))
    bb, _ = build_backbone("random", 0, res4=True)
    direct = ChunkedExtractor(bb, 4, "cpu", RunOptions(chunk_frames=1024)).run([frames])
    np.testing.assert_allclose(v.features, direct.res5, rtol=1e-4, atol=1e-5)
    assert json.loads((next((s.featureset / "runs").glob("*.json"))).read_text())["done"] == [
        "Sample0001", "Sample0002"]


@pytest.mark.parametrize("stride", [2, 8])
def test_stride_options(tmp_path, videos, stride):
    s = run_extraction([videos / "sub"], tmp_path, cfg(stride=stride), progress=False)
    v = FeatureSet.open(s.featureset).load("Sample0002_color")
    assert v.features.shape == (30 // stride, 2048) and v.meta.stride == stride
    np.testing.assert_allclose(v.timestamps, feature_timestamps(30 // stride, stride, 10.0))


def test_resume_skips_without_decoding_and_redoes_changed(tmp_path, videos, monkeypatch):
    out = tmp_path / "out"
    first = run_extraction([videos], out, cfg(), progress=False)
    decoded: list[Path] = []
    import extract.pipeline as pipeline

    real = pipeline.Extractor.stream

    def spy(self, path):
        decoded.append(Path(path))
        return real(self, path)

    monkeypatch.setattr(pipeline.Extractor, "stream", spy)
    again = run_extraction([videos], out, cfg(), progress=False)
    assert again.skipped == first.done and not again.done and decoded == []
    target = videos / "Sample0001_color.mp4"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        third = run_extraction([videos], out, cfg(), progress=False)
    finally:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert third.done == ["Sample0001_color"] and decoded == [target]
    meta = FeatureSet.open(third.featureset).load("Sample0001_color").meta
    assert meta.extra["source_mtime_ns"] == st.st_mtime_ns + 10**9


def make_bad_inputs(d: Path) -> dict[str, str]:
    """Write one file per bad-input case; returns id -> expected words of the reason."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video\n" * 50)
    write_audio_only(d / "audio.wav")
    cut = write_video(d / "cut.mp4", cfr_times(10, 40))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    write_video(d / "short.mp4", cfr_times(10, 3))
    return {
        "empty": "empty (0 bytes)",
        "text": "not a video FFmpeg can read",
        "audio": "no video stream",
        "cut": "cut.mp4",
        "short": "too short for one feature",
    }


def test_bad_inputs_are_reported_and_the_rest_is_done(tmp_path, videos):
    bad = tmp_path / "bad"
    expect = make_bad_inputs(bad)
    good = videos / "sub" / "Sample0002_color.mp4"
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["features", str(bad), str(bad / "audio.wav"), str(good), "--out", str(out),
            *TINY_ARGS]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    fs = FeatureSet.open(Path(result.stdout.strip().splitlines()[-1]))
    assert fs.video_ids() == ["Sample0002_color"]
    failures = fs.failures()
    assert set(failures) == set(expect)
    for vid, words in expect.items():
        assert words in failures[vid] and str(Path(failures[vid].split(":")[0]).name) in (
            failures[vid]), failures[vid]
        assert vid in result.stderr
    assert not [p for p in fs.path.iterdir() if p.name.endswith(".tmp")]
    # Fix one input: the next run extracts it and drops it from failures.json.
    write_noise_video(bad / "short.mp4", 2.0)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "short" not in fs.failures() and fs.has("short") and len(fs.failures()) == 4


@pytest.mark.parametrize("case", ["missing file", "missing folder", "folder without videos"])
def test_a_missing_input_is_a_usage_error_that_creates_nothing(tmp_path, videos, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no video here\n")
    bad = {"missing file": tmp_path / "missing.mp4", "missing folder": tmp_path / "nope",
           "folder without videos": empty}[case]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["features", str(videos), str(bad), "--out", str(out),
                                      *TINY_ARGS])
    assert result.exit_code == 2, result.output
    assert str(bad) in result.stderr and result.stdout == ""  # no feature-set path printed
    assert not out.exists()


def test_duplicate_ids_fail_before_any_work(tmp_path, videos):
    other = tmp_path / "other"
    other.mkdir()
    write_video(other / "Sample0001_color.mkv", cfr_times(10, 8), codec="ffv1")
    runner = CliRunner()
    result = runner.invoke(app, ["features", str(videos), str(other), "--out",
                                 str(tmp_path / "out"), *TINY_ARGS])
    assert result.exit_code == 2
    assert "share an id" in result.stderr and "Sample0001_color.mkv" in result.stderr
    assert not (tmp_path / "out").exists()


def test_dataset_option_names_videos_as_the_labels_do(tmp_path, videos):
    runner = CliRunner()
    result = runner.invoke(app, ["features", str(videos), "--out", str(tmp_path / "out"),
                                 "--dataset", "smg", *TINY_ARGS])
    assert result.exit_code == 0, result.output
    assert FeatureSet.find(tmp_path / "out").video_ids() == ["Sample0001", "Sample0002"]
    bad = runner.invoke(app, ["features", str(videos), "--out", str(tmp_path / "o2"),
                              "--dataset", "kinetics", *TINY_ARGS])
    assert bad.exit_code == 2 and "--dataset must be smg or imigue" in bad.stderr


def test_info_verifies_every_file(tmp_path, videos):
    s = run_extraction([videos], tmp_path, cfg(), progress=False)
    runner = CliRunner()
    ok = runner.invoke(app, ["info", str(s.featureset)])
    assert ok.exit_code == 0, ok.output
    assert "videos 2, 7.2 s" in ok.stdout and "broken files: 0" in ok.stdout
    (s.featureset / "Sample0001_color.h5").write_bytes(b"garbage")
    bad = runner.invoke(app, ["info", str(s.featureset)])
    assert bad.exit_code == 1 and "Sample0001_color.h5: not a readable HDF5" in bad.stdout


def _cli(videos: list[Path], out: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "extract", "features", *map(str, videos), "--out", str(out),
           *TINY_ARGS]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_kill_9_leaves_no_partial_file_and_rerun_completes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_noise_video(src / f"v{i}.mp4", 4.0, seed=i)
    out = tmp_path / "out"
    proc = _cli([src], out, sub_env())
    deadline = time.time() + 120
    # Kill as soon as the first video is written, while the next one is in flight.
    while time.time() < deadline and proc.poll() is None:
        if list(out.glob("*/*.h5")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (fs_dir,) = list(out.iterdir())
    for h5 in fs_dir.glob("*.h5"):
        read_video(h5)  # every visible file is complete
    s = run_extraction([src], out, cfg(), progress=False)
    assert s.ok and sorted(s.done + s.skipped) == ["v0", "v1", "v2"]
    assert s.skipped  # the video finished before the kill is not redone
    assert not list(fs_dir.glob(".*.tmp"))


def test_two_ranks_give_the_same_feature_set_as_one_process(tmp_path, videos):
    """The README's `torchrun --nproc_per_node N -m extract features ...`, run as written."""
    (tmp_path / "broken_video.mp4").write_text("not a video\n")
    # Long, so the rank with the broken video ends first (torchrun used to kill the other one).
    write_noise_video(tmp_path / "extra.mp4", 60.0, seed=9)
    inputs = [videos, tmp_path / "broken_video.mp4", tmp_path / "extra.mp4"]
    # The ranks run at the same time, racing each other on failures.json.
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node",
           "2", "-m", "extract", "features", *map(str, inputs), "--out", str(tmp_path / "two"),
           *(a for a in TINY_ARGS if a != "--no-progress")]  # progress on: checked as a log
    proc = subprocess.Popen(cmd, cwd=REPO, env=sub_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1), so the float sums match
    try:
        single = run_extraction(inputs, tmp_path / "one", cfg(), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert list(single.failed) == ["broken_video"]
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err  # the broken video failed on one rank; the rest is done
    assert "broken_video.mp4" in err
    # A log, not a terminal: one plain line per video, no redraws.
    assert "\r" not in err and "\x1b[" not in err
    assert re.search(r"^videos \(rank [01]\): 1/\d+ video \(\d+ s\)$", err, re.M), err
    (one,) = list((tmp_path / "one").iterdir())
    (two,) = list((tmp_path / "two").iterdir())
    assert one.name == two.name
    names = sorted(p.name for p in one.iterdir() if p.is_file() and not p.name.startswith("."))
    assert names == sorted(p.name for p in two.iterdir()
                           if p.is_file() and not p.name.startswith("."))
    assert "failures.json" in names and len([n for n in names if n.endswith(".h5")]) == 3
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert len(list((two / "runs").glob("*rank*of2.json"))) == 2


PAUSED_RUN = """
import os, sys, time
from pathlib import Path
import extract.cache as cache

marker, go = Path(os.environ["PAUSE_MARKER"]), Path(os.environ["PAUSE_GO"])
finish = cache.VideoWriter.finish

def paused_finish(self, *args, **kwargs):
    # The temp file of this video exists now: say so, and wait to be let go.
    marker.write_text(str(self.tmp))
    while not go.exists():
        time.sleep(0.01)
    return finish(self, *args, **kwargs)

cache.VideoWriter.finish = paused_finish
from extract.__main__ import app
sys.argv = ["extract", *sys.argv[1:]]
app()
"""


def _wait_for(cond, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_two_extractions_into_one_cache_lose_nothing(tmp_path):
    """Run A pauses while its temp file exists; run B of the same command waits for that video
    instead of deleting A's temp file; both exit 0 and every file is whole."""
    d = tmp_path / "v"
    d.mkdir()
    write_noise_video(d / "short1.mp4", 2.0, fps=10, seed=4)
    marker, go = tmp_path / "paused", tmp_path / "go"
    env = dict(sub_env(), PAUSE_MARKER=str(marker), PAUSE_GO=str(go))
    args = ["features", str(d), "--out", str(tmp_path / "out"), *TINY_ARGS]
    a = subprocess.Popen([sys.executable, "-c", PAUSED_RUN, *args], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = None
    try:
        _wait_for(marker.exists, "run A to hold its temp file")
        temp = Path(marker.read_text())
        assert temp.exists()
        b = subprocess.Popen([sys.executable, "-m", "extract", *args], cwd=REPO, env=sub_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err_b: list[str] = []
        # B says it waits for A's video (read line by line: it is still running).
        _wait_for(lambda: err_b.append(b.stderr.readline()) or "waiting: another run" in
                  err_b[-1] or b.poll() is not None, "run B to wait for the video A holds")
        assert b.poll() is None, f"B ended while A was writing: {''.join(err_b)}"
        assert temp.exists()  # B did not remove the file A is writing
        go.write_text("")
        out_a, err_a = a.communicate(timeout=300)
        out_b, rest_b = b.communicate(timeout=300)
    finally:
        go.write_text("")  # never leave run A waiting, whatever failed
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert a.returncode == 0, err_a
    assert b.returncode == 0, "".join(err_b) + rest_b
    fs = FeatureSet.open(Path(out_a.strip().splitlines()[-1]))
    assert fs.video_ids() == ["short1"] and not fs.failures()
    assert read_video(fs.video_path("short1")).features.shape[0] == 5
    assert not list(fs.path.glob(".*.h5.tmp"))


def test_features_changed_on_disk_fail_their_checksum(tmp_path, videos):
    """Zeroing half of a file's feature bytes in place used to pass `extract info` and reads."""
    s = run_extraction([videos], tmp_path, cfg(), progress=False)
    path = s.featureset / "Sample0001_color.h5"
    with h5py.File(path, "r") as f:
        ds = f["features"]
        assert ds.fletcher32
        chunk = ds.id.get_chunk_info(0)
        offset, size = chunk.byte_offset, chunk.size
    raw = bytearray(path.read_bytes())
    raw[offset + 8 : offset + size // 2] = bytes(size // 2 - 8)
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=r"Sample0001_color\.h5: dataset 'features' is corrupt"):
        read_video(path)
    bad = CliRunner().invoke(app, ["info", str(s.featureset)])
    assert bad.exit_code == 1 and "broken files: 1" in bad.stdout
    assert "Sample0001_color.h5: dataset 'features' is corrupt" in bad.stdout
