"""Token fusion on cached clip tokens: each ablation sees only what it names, the MiGA submission
file is in the challenge's format, and a run with RGB and emotion writes the ablation table and
learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from classify.config import FusionConfig, load_classify_config
from classify.data.clips import Clip, ClipIndex, index_imigue
from classify.model.fusion import FusionClassifier
from classify.report import write_miga_csv
from classify.run import run_classify
from classify.synthetic import render_imigue

RGB_SHAPE, SKEL_SHAPE = (5, 12), (8, 6)


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, *RGB_SHAPE, generator=g), torch.randn(3, *SKEL_SHAPE, generator=g)


@pytest.mark.parametrize("uses", [("rgb", "skeleton"), ("rgb",), ("skeleton",)])
def test_each_head_depends_on_exactly_its_modalities(uses) -> None:
    torch.manual_seed(0)
    model = FusionClassifier(FusionConfig(dim=16, heads=2, layers=2, dropout=0.0), uses, 7,
                             {"rgb": RGB_SHAPE, "skeleton": SKEL_SHAPE}).eval()
    rgb, skel = _inputs(0)
    other_rgb, other_skel = _inputs(1)
    with torch.no_grad():
        base = model({"rgb": rgb, "skeleton": skel})
        assert base.shape == (3, 7)
        moved = {"rgb": model({"rgb": other_rgb, "skeleton": skel}),
                 "skeleton": model({"rgb": rgb, "skeleton": other_skel})}
    for m, out in moved.items():
        assert (not torch.allclose(out, base, atol=1e-6)) == (m in uses), m
    # A clip's logits do not depend on the other clips of its batch.
    with torch.no_grad():
        torch.testing.assert_close(model({"rgb": rgb[1:2], "skeleton": skel[1:2]}), base[1:2],
                                   rtol=1e-5, atol=1e-5)


def test_miga_submission_lines_by_hand(tmp_path) -> None:
    def clip(video: str, row: int, label: int) -> Clip:
        return Clip(video, row, label, 10 * row, 10 * row + 5, 1, "test")

    # Label-file rows 2, 3, 5 of video 0004 and 1, 2 of 0012: clip index = position in the file.
    clips = [clip("0004", 2, 0), clip("0004", 3, 1), clip("0004", 5, 2), clip("0012", 1, 0),
             clip("0012", 2, 3)]
    index = ClipIndex(root=tmp_path, classes=("a", "b", "c", "d"), clips=clips, outcomes={},
                      skeletons={}, videos={})
    scores = np.array([[0.1, 0.7, 0.1, 0.1], [0.9, 0.1, 0, 0], [0, 0, 0, 1.0]])
    write_miga_csv(tmp_path / "miga.csv", [clips[2], clips[0], clips[4]], scores, index)
    assert (tmp_path / "miga.csv").read_text() == "0004_2,1\n0004_0,0\n0012_1,3\n"


@pytest.mark.slow
def test_skeleton_rgb_and_fusion_learn_and_every_ablation_is_written(tmp_path) -> None:
    root = tmp_path / "set"
    render_imigue(root, videos=24, minutes=0.75, seed=0, progress=False)
    cfg = load_classify_config("configs/classify/fusion-small.toml", [
        f"rgb.cache={tmp_path / 'rgb'}", f"emotion.cache={tmp_path / 'face'}",
        "train.epochs=20"])
    out = tmp_path / "run"
    metrics = run_classify(cfg, root, tmp_path / "cache", out, progress=False)
    # The skeleton streams learn the synthetic clips, and fusing them does not lose.
    assert metrics["fused"]["clips"] > 60
    assert metrics["fused"]["top1"] >= 0.9
    assert metrics["fused"]["top1"] >= max(r["top1"] for r in metrics["streams"].values()) - 0.05
    fusion = metrics["fusion"]
    index = index_imigue(root)
    test = index.subset("test")
    for m in ("rgb", "skeleton", "late", "token"):
        assert fusion[m]["clips"] == len(test), m
        assert np.asarray(fusion[m]["confusion"]).sum() == len(test)
    assert metrics["final"]["source"] == "fusion.token"
    assert fusion["token"]["top1"] >= 0.9
    assert fusion["token"]["top1"] >= max(fusion["rgb"]["top1"], fusion["skeleton"]["top1"]) - 0.05
    table = (out / "ablations.md").read_text().split("\n\n")[0].splitlines()
    assert len(table) == 2 + 3 + 4 and "cross-modal token fusion" in table[-1]
    lines = (out / "miga_track1.csv").read_text().splitlines()
    assert len(lines) == len(test)
    for line, c in zip(lines, test, strict=True):
        key, label = line.split(",")
        assert key.startswith(c.video + "_") and 0 <= int(label) < 32
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["fusion"]["token"]["top1"] == fusion["token"]["top1"]
    for m in ("rgb", "skeleton", "token"):
        assert (out / "fusion" / m / "last.pt").is_file()
    # Emotion: every head scored on every test video; InterFusion beats chance on the clips.
    emotion = metrics["emotion"]
    videos = sorted({c.video for c in test})
    for h in ("face", "context", "late", "interfusion"):
        assert emotion[h]["videos"] == len(videos), h
        assert 0 <= emotion[h]["accuracy"] <= 1 and 0 <= emotion[h]["auroc"] <= 1
    assert emotion["interfusion"]["clip_accuracy"] >= 0.6
    rows = (out / "emotion_predictions.csv").read_text().splitlines()
    assert rows[0].startswith("video,outcome,p_win_face")
    assert [r.split(",")[:2] for r in rows[1:]] == [[v, index.outcomes[v]] for v in videos]
    assert "InterFusion" in (out / "ablations.md").read_text()
