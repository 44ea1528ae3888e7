"""`python -m extract kinetics`: whole-video Kinetics-400 labels. The labels ship with the package,
the head runs fully convolutionally and equals DeepMind's network on a real clip, the top-5 of
that clip is the recorded one, and bad input is a clear error."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from typer.testing import CliRunner

from extract.__main__ import app
from extract.i3d import ChunkedExtractor, RunOptions
from extract.inception_i3d import InceptionBackbone
from extract.inception_weights import converted_path
from extract.kinetics import (
    LABELS_FILE,
    KineticsHead,
    build_classifier,
    kinetics_labels,
    top_labels,
)
from tests.videos import write_noise_video

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "tests" / "fixtures" / "inception_clip.mp4"
FLAX = REPO / "tests" / "fixtures" / "inception_i3d_flax.npz"
# The clip (tests/fixtures/README.md) is 16 frames of Big Buck Bunny: the big white rabbit on
# a grassy slope in a forest, arms raised, stretching and yawning. Recorded from this command
# with DeepMind's weights (1 and 2 threads agree within 2e-6). Animals, handling them and a
# stretching pose, from a cartoon Kinetics never saw: sensible guesses. The whole 5.3 s
# bigbuckbunny.mp4 it was cut from gives "feeding birds" 0.88.
EXPECTED_TOP5 = [("holding snake", 0.286511), ("feeding birds", 0.155311),
                 ("playing bagpipes", 0.088046), ("smoking", 0.04568), ("yoga", 0.031543)]
needs_weights = pytest.mark.skipif(
    not converted_path().is_file(),
    reason=f"the converted Kinetics weights are not in the torch hub cache ({converted_path()}); "
           "`python -m extract weights inception_i3d` puts them there")


def test_the_400_labels_ship_with_the_package(tmp_path):
    names = kinetics_labels()
    assert len(names) == len(set(names)) == 400
    assert names == sorted(names)  # Kinetics-400's index order is alphabetical
    assert names[:2] == ["abseiling", "air drumming"] and names[-1] == "zumba"
    assert names[115] == "eating ice cream" and names[290] == "sharpening knives"
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert LABELS_FILE in data["tool"]["setuptools"]["package-data"]["extract"]
    # A built wheel holds it (setuptools and pip are in the venv; no network needed).
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("extract", "detect", "classify"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "wheel"), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import zipfile

    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    assert f"extract/{LABELS_FILE}" in zipfile.ZipFile(wheel).namelist()


def test_the_head_runs_at_every_position_and_chunks_change_nothing():
    """Chunked trunk == one pass, and the head == a plain loop over its pooling positions, for
    both backbones (random weights, small frames: the rules do not depend on them)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (70, 32, 32, 3), dtype=torch.uint8, generator=g)
    for model in ("inception_i3d", "i3d_r50"):
        clf = build_classifier(model, "random", seed=1)
        step = clf.trunk.step
        assert step == {"inception_i3d": 8, "i3d_r50": 2}[model]
        one = ChunkedExtractor(clf.trunk, step, "cpu", RunOptions(chunk_frames=1024))
        parts = ChunkedExtractor(clf.trunk, step, "cpu", RunOptions(chunk_frames=2 * step))
        whole = np.concatenate([s for s, _ in one.iter_steps([frames])])
        chunked = np.concatenate([s for s, _ in parts.iter_steps(
            [frames[i:i + 9] for i in range(0, 70, 9)])])
        assert whole.shape == (70 // step, clf.head.weight.shape[1])
        assert np.abs(whole - chunked).max() <= 1e-4 * np.abs(whole).max()
        steps = torch.from_numpy(whole).double()
        w, b, k = clf.head.weight.double(), clf.head.bias.double(), clf.head.window
        loop = [w @ steps[t:t + k].mean(0) + b for t in range(steps.shape[0] - k + 1)]
        ours = clf.head(torch.from_numpy(whole))
        assert torch.allclose(ours.double(), torch.stack(loop).mean(0), atol=1e-4)
    short = KineticsHead(torch.eye(3), torch.zeros(3), window=4)  # fewer steps than the pool
    assert torch.allclose(short(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])),
                          torch.tensor([0.5, 0.5, 0]))


@needs_weights
def test_logits_are_deepminds_on_the_fixture_frames():
    """The classifier's chunked path on the clip's own frames (no resize) gives the original
    Flax network's logits (bench/inception_parity.py), within 1e-4 of their largest magnitude."""
    sys.path.insert(0, str(REPO))
    from bench.inception_parity import clip_frames

    clf = build_classifier("inception_i3d", "kinetics")
    frames = torch.from_numpy(clip_frames())
    runner = ChunkedExtractor(clf.trunk, 8, "cpu", RunOptions(chunk_frames=8))
    steps = np.concatenate([s for s, _ in runner.iter_steps([frames[:9], frames[9:]])])
    logits = clf.head(torch.from_numpy(steps)).numpy()
    with np.load(FLAX) as data:
        ref = data["clip/Logits/values"].reshape(-1)
    assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()
    assert top_labels(torch.from_numpy(ref), 1, kinetics_labels())[0][0] == "feeding birds"


@needs_weights
def test_top5_of_a_real_clip_is_the_recorded_one():
    r = CliRunner().invoke(app, ["kinetics", str(CLIP), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (got,) = json.loads(r.stdout)
    assert got["video"] == str(CLIP)
    assert [t["label"] for t in got["top"]] == [name for name, _ in EXPECTED_TOP5]
    assert np.allclose([t["prob"] for t in got["top"]], [p for _, p in EXPECTED_TOP5],
                       atol=1e-3)
    text = CliRunner().invoke(app, ["kinetics", str(CLIP), "--top", "2", "--device", "cpu"])
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines() == [f"{CLIP}: 16 frames at 25 fps (0.6 s)",
                                        "   0.287  holding snake", "   0.155  feeding birds"]


def test_i3d_r50_with_random_weights_says_so(tmp_path):
    r = CliRunner().invoke(app, ["kinetics", str(CLIP), "--model", "i3d_r50", "--weights",
                                 "random", "--top", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert "!! RANDOM WEIGHTS" in r.stderr
    (got,) = json.loads(r.stdout)
    probs = [t["prob"] for t in got["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
    assert all(t["label"] in kinetics_labels() for t in got["top"])


def test_bad_input_is_a_clear_error(tmp_path):
    runner = CliRunner()
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n" * 20)
    for bad, why in [(notes, "not a video FFmpeg can read"),
                     (tmp_path / "missing.mp4", "no such file or folder")]:
        r = runner.invoke(app, ["kinetics", str(CLIP), str(bad), "--weights", "random"])
        assert r.exit_code == 2, r.output
        assert f"{bad}: {why}" in r.stderr and r.stdout == ""  # nothing classified first
    r = runner.invoke(app, ["kinetics", str(CLIP), "--top", "0"])
    assert r.exit_code == 2 and "--top must be in 1..400" in r.stderr
    # Backbone-only weights (what an end-to-end run finetunes) have no Kinetics head.
    ckpt = tmp_path / "backbone.pt"
    torch.save(InceptionBackbone().state_dict(), ckpt)
    r = runner.invoke(app, ["kinetics", str(CLIP), "--weights", str(ckpt)])
    assert r.exit_code == 2 and str(ckpt) in r.stderr and "logits" in r.stderr, r.stderr
    # A video too short for one step fails on its own (exit 1); the others are classified.
    short = write_noise_video(tmp_path / "short.mp4", 0.2, fps=25)
    r = runner.invoke(app, ["kinetics", str(short), str(CLIP), "--weights", "random",
                            "--json"])
    assert r.exit_code == 1
    assert f"{short}: too short to classify (5 frames at 25 fps" in r.stderr
    assert [v["video"] for v in json.loads(r.stdout)] == [str(CLIP)]
