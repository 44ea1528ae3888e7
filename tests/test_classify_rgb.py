"""RGB clip tokens: the cached numbers are the model's on the clip's sampled frames; a broken
video is recorded and skipped; a second run reuses the files."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from classify.config import RGBConfig
from classify.data.clips import index_imigue
from classify.model.mvit import build_mvit, mvit_input
from classify.synthetic import render_imigue
from classify.tokens.rgb import clip_frame_indices, extract_rgb_tokens, load_rgb_tokens
from extract.decode import resize_crop


@pytest.fixture(scope="module")
def imigue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imigue")
    render_imigue(root, 3, 0.25, seed=2, progress=False)
    return root


def test_cached_tokens_are_the_models_on_the_sampled_frames(imigue, tmp_path) -> None:
    index = index_imigue(imigue, "train=rest")
    cfg = RGBConfig(weights="random", frames=8, size=64, short_side=72, seed=4)
    fs = extract_rgb_tokens(index, tmp_path, cfg, progress=False)
    tokens = load_rgb_tokens(fs, index.clips)
    assert set(tokens) == {c.key for c in index.clips}
    model, _ = build_mvit("random", 8, 64, seed=4)
    clip = index.clips[len(index.clips) // 2]
    with av.open(str(index.videos[clip.video])) as f:  # the slow way: every frame, in order
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    idx = clip_frame_indices(clip, 8)
    assert idx[0] >= clip.start and idx[-1] <= clip.end and (np.diff(idx) >= 0).all()
    x = resize_crop(torch.from_numpy(np.stack([frames[i] for i in idx])), 72, 64)
    with torch.no_grad():
        want = model(mvit_input(x[None])).numpy()[0]
    np.testing.assert_allclose(tokens[clip.key], want, rtol=2e-2, atol=2e-2)  # float16 storage
    before = {p.name: p.stat().st_mtime_ns for p in fs.path.glob("*.h5")}
    extract_rgb_tokens(index, tmp_path, cfg, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in fs.path.glob("*.h5")} == before


def test_a_broken_video_is_recorded_and_the_rest_go_on(imigue, tmp_path) -> None:
    index = index_imigue(imigue, "train=rest")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    index.videos["0002"] = broken
    fs = extract_rgb_tokens(index, tmp_path / "cache",
                            RGBConfig(weights="random", frames=8, size=64), progress=False)
    assert fs.video_ids() == ["0001", "0003"]
    failures = json.loads((fs.path / "failures.json").read_text())
    assert list(failures) == ["0002"] and "broken.mp4" in failures["0002"]
