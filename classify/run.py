"""One classification run on iMiGUE: index the clips, read the skeletons, train every 2s-AGCN
stream, then (with rgb.enabled) the RGB / skeleton / late / token-fusion heads and (with
emotion.enabled) the emotion heads; evaluate on the test subjects and write the outputs.

    RUN/config.toml   the resolved config        RUN/run.json   command, data, clips, versions
    RUN/<stream>/, RUN/fusion/<head>/, RUN/emotion/   what each part trained (resumable)
    and the outputs of `classify.report`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classify.config import ClassifyConfig
from classify.data.clips import Clip, ClipIndex, index_imigue
from classify.data.skeleton_cache import Skeletons, check_clip_frames, load_skeletons
from classify.emotion import run_emotion
from classify.metrics import classification_report
from classify.model.agcn import AGCN
from classify.report import write_outputs
from classify.tokens.rgb import extract_rgb_tokens, load_rgb_tokens
from classify.train.fusion import run_heads, skeleton_tokens
from classify.train.skeleton import SkeletonClips, clip_scores, train_stream
from extract.config import config_to_dict, to_toml
from extract.io import RunError, atomic_write_bytes, atomic_write_json
from extract.provenance import versions
from extract.runtime import resolve_device
from extract.threads import apply_threads

# The fusion heads of a run with RGB, each trained in RUN/fusion/<head>/; the final is "token".
FUSION_HEADS = {"rgb": ("rgb",), "skeleton": ("skeleton",), "token": ("rgb", "skeleton")}


def run_classify(cfg: ClassifyConfig, data_root: Path, cache: Path, out: Path,
                 progress: bool = True, index: ClipIndex | None = None) -> dict:
    """Index, read skeletons, train every stream, evaluate on the test clips; returns metrics.

    Class ids in predictions.csv are iMiGUE's 1-32 (32 = file class 99)."""
    out = Path(out)
    apply_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    index = index or index_imigue(Path(data_root), cfg.data.split or None)
    out.mkdir(parents=True, exist_ok=True)  # once the data is known to be there
    skel: Skeletons = load_skeletons(index, Path(cache), progress)
    check_clip_frames(index, skel)
    for vid, msg in sorted(skel.failed.items()):
        print(f"skipped video {vid}: {msg}", file=sys.stderr)
    train_clips = [c for c in index.subset("train") if c.video in skel.keypoints]
    test_clips = [c for c in index.subset("test") if c.video in skel.keypoints]
    if not train_clips or not test_clips:
        raise RunError(f"{data_root}: {len(train_clips)} training and {len(test_clips)} test "
                       "clips with a readable skeleton; both are needed")
    _write_run_files(cfg, out, data_root, cache, len(train_clips), len(test_clips), skel, device)

    metrics, fused, models = _skeleton_streams(cfg, index, train_clips, test_clips, skel, out,
                                               device, progress)
    final, final_clips = fused, test_clips
    if cfg.rgb.enabled:
        metrics["fusion"], final_clips, final, rgb = _rgb_fusion(
            cfg, index, train_clips, test_clips, skel, models, out, device, progress)
        metrics["final"] = {**metrics["fusion"]["token"], "source": "fusion.token"}
        if cfg.emotion.enabled:
            t0 = time.perf_counter()
            metrics["emotion"] = run_emotion(cfg.emotion, index, train_clips, test_clips,
                                             skel.keypoints, rgb, out, device, progress)
            metrics["emotion"]["minutes"] = (time.perf_counter() - t0) / 60
    metrics["versions"] = versions()
    write_outputs(out, metrics, final_clips, final, index)
    return metrics


def _write_run_files(cfg: ClassifyConfig, out: Path, data_root: Path, cache: Path,
                     num_train: int, num_test: int, skel: Skeletons,
                     device: torch.device) -> None:
    atomic_write_bytes(out / "config.toml", to_toml(config_to_dict(cfg)).encode())
    atomic_write_json(out / "run.json", {
        "command": sys.argv, "data": str(Path(data_root).resolve()),
        "cache": str(Path(cache).resolve()), "versions": versions(),
        "clips": {"train": num_train, "test": num_test},
        "skipped_videos": skel.failed, "device": str(device)})


def _skeleton_streams(cfg: ClassifyConfig, index: ClipIndex, train_clips: list[Clip],
                      test_clips: list[Clip], skel: Skeletons, out: Path, device: torch.device,
                      progress: bool) -> tuple[dict[str, Any], np.ndarray, dict[str, AGCN]]:
    """Every stream trained and scored on the test clips: the metrics ("streams", "fused",
    "final"), the fused scores (N, C) and the trained models by stream."""
    classes = index.classes
    metrics: dict[str, Any] = {"streams": {}}
    fused = np.zeros((len(test_clips), len(classes)))
    labels = np.array([c.label for c in test_clips])
    models: dict[str, AGCN] = {}
    for stream in cfg.skeleton.streams:
        t0 = time.perf_counter()
        model = train_stream(cfg, stream, train_clips, skel.keypoints, len(classes),
                             out / stream, device, progress)
        scores = clip_scores(model, SkeletonClips(test_clips, skel.keypoints, stream,
                                                  cfg.data.frames, train=False), device)
        fused += scores
        models[stream] = model
        rep = classification_report(scores, labels, classes)
        rep["train_minutes"] = (time.perf_counter() - t0) / 60
        rep["params"] = sum(p.numel() for p in model.parameters())
        metrics["streams"][stream] = rep
    metrics["fused"] = classification_report(fused, labels, classes)
    metrics["fused"]["streams"] = list(cfg.skeleton.streams)
    metrics["final"] = {**metrics["fused"], "source": "fused"}
    return metrics, fused, models


def _rgb_fusion(cfg: ClassifyConfig, index: ClipIndex, train_clips: list[Clip],
                test_clips: list[Clip], skel: Skeletons, models: dict[str, AGCN], out: Path,
                device: torch.device, progress: bool
                ) -> tuple[dict[str, Any], list[Clip], np.ndarray, dict[str, np.ndarray]]:
    """RGB tokens, then the rgb / skeleton / late / token heads on the clips with both
    modalities: their metrics, the test clips, their token-fusion scores and the RGB tokens
    {clip key: (1 + frames/2, 768)}."""
    fs = extract_rgb_tokens(index, Path(cfg.rgb.cache), cfg.rgb, progress)
    for vid, msg in sorted(fs.failures().items()):
        print(f"no RGB tokens for video {vid}: {msg}", file=sys.stderr)
    rgb = load_rgb_tokens(fs, train_clips + test_clips)
    tr = [c for c in train_clips if c.key in rgb]
    te = [c for c in test_clips if c.key in rgb]
    if not tr or not te:
        raise RunError(f"{len(tr)} training and {len(te)} test clips have RGB tokens; both "
                       "are needed for the fusion")

    def tokens(clips: list[Clip]) -> dict[str, np.ndarray]:
        return fusion_tokens(rgb, models, clips, skel.keypoints, cfg.data.frames, device)

    t0 = time.perf_counter()
    scores = run_heads(cfg.fusion, FUSION_HEADS, tokens(tr), np.array([c.label for c in tr]),
                       tokens(te), len(index.classes), out / "fusion", device, cfg.train.seed,
                       progress)
    labels = np.array([c.label for c in te])
    fusion: dict[str, Any] = {m: classification_report(s, labels, index.classes)
                              for m, s in scores.items()}
    fusion["rgb_featureset"] = str(fs.path)
    fusion["minutes"] = (time.perf_counter() - t0) / 60
    return fusion, te, scores["token"], rgb


def fusion_tokens(rgb: dict[str, np.ndarray], models: dict[str, AGCN], clips: list[Clip],
                  keypoints: dict[str, np.ndarray], frames: int,
                  device: torch.device) -> dict[str, np.ndarray]:
    """The fusion heads' inputs of `clips`: their RGB tokens (from `rgb`, by clip key) and the
    trained streams' skeleton tokens."""
    return {"rgb": np.stack([rgb[c.key] for c in clips]),
            "skeleton": skeleton_tokens(models, clips, keypoints, frames, device)}
