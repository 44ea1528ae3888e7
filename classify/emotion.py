"""Emotion (win / lose per interview video) from the face and its context: SwinFace face tokens
and MViTv2-S context tokens joined by InterFusion; accuracy, F1 and AUROC over test videos.

Per clip: `face_frames` face crops (bin centres of the clip, boxes from the OpenPose keypoints,
`classify.faces`) through SwinFace's Swin-T at 112 give the face tokens (face_frames, 768), cached
as `cache/face/<key>/` under the token-cache contract; the clip's MViT tokens
(`classify.rgb_tokens`) are its context. Every clip of a training video is a sample labelled with
its video's outcome;
a test video's p(win) is the mean over its clips. Heads: face only, context only, late (mean of
the two) and InterFusion (cross-attention between face and context tokens; the published module's
details were not available to us, so this is our reading of "interactive fusion").

Split: the official emotion protocol lists 102 training and 100 test videos in a PDF we do not
have; we use the cross-subject split of the clips (train subjects' videos train).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from classify.config import EmotionConfig
from classify.data.clips import Clip, ClipIndex
from classify.data.faces import crop_faces, face_boxes
from classify.metrics import binary_report
from classify.model.swin import build_swinface, face_input
from classify.tokens.cache import cache_clip_tokens, load_clip_tokens
from classify.tokens.rgb import clip_frame_indices
from classify.train.fusion import run_heads
from extract.cache import FeatureSet
from extract.io import atomic_write_bytes
from extract.progress import ProgressBar

HEADS = {"face": ("face",), "context": ("context",), "interfusion": ("face", "context")}


def extract_face_tokens(index: ClipIndex, keypoints: dict[str, np.ndarray], root: Path,
                        cfg: EmotionConfig, progress: bool = True) -> FeatureSet:
    """Face tokens (N, face_frames, 768) of every clip of every video with an mp4, under `root`."""
    model, weights = build_swinface(cfg.face_weights, cfg.seed)
    settings = {"model": "swinface_swin_t_112", "weights": weights.label,
                "sha256": weights.sha256, "frames": cfg.face_frames, "sampling": "bin-centre",
                "crop": "openpose-face-box-1.4", "format": 1}
    fs = FeatureSet.create(Path(root), "swinface", settings)

    @torch.inference_mode()
    def embed(vid: str, clips: list[Clip], idx: list[np.ndarray], frames: dict[int, np.ndarray],
              bar: ProgressBar) -> np.ndarray:
        kp = keypoints.get(vid)
        if kp is None:
            raise ValueError(f"video {vid}: no skeleton, so no face boxes")
        try:
            boxes = face_boxes(kp)
        except ValueError as e:
            raise ValueError(f"video {vid}: {e}") from e
        flat = np.concatenate(idx)
        crops = crop_faces(np.stack([frames[int(i)] for i in flat]),
                           boxes[np.minimum(flat, len(boxes) - 1)])
        out = [model(face_input(crops[b:b + cfg.batch_size])).float().numpy()
               for b in range(0, len(crops), cfg.batch_size)]
        bar.update(len(clips))
        return np.concatenate(out).reshape(len(clips), cfg.face_frames, -1)

    return cache_clip_tokens(index, fs, lambda c: clip_frame_indices(c, cfg.face_frames), embed,
                             "face tokens", progress)


def video_scores(clips: list[Clip], p_win: np.ndarray) -> dict[str, float]:
    """{video: mean p(win) of its clips}."""
    sums: dict[str, list[float]] = {}
    for c, p in zip(clips, p_win, strict=True):
        sums.setdefault(c.video, []).append(float(p))
    return {v: float(np.mean(ps)) for v, ps in sorted(sums.items())}


def run_emotion(cfg: EmotionConfig, index: ClipIndex, train_clips: list[Clip],
                test_clips: list[Clip], keypoints: dict[str, np.ndarray],
                rgb: dict[str, np.ndarray], out: Path, device: torch.device,
                progress: bool = True) -> dict:
    """Train the emotion heads; returns {head: video-level report} (see the module docstring),
    and writes `out/emotion_predictions.csv` (video, outcome, p(win) of every head)."""
    fs = extract_face_tokens(index, keypoints, Path(cfg.cache), cfg, progress)
    face = load_clip_tokens(fs, train_clips + test_clips)
    tr = [c for c in train_clips if c.key in face and c.key in rgb and c.video in index.outcomes]
    te = [c for c in test_clips if c.key in face and c.key in rgb and c.video in index.outcomes]
    if not tr or not te:
        raise ValueError(f"{len(tr)} training and {len(te)} test clips have face and context "
                         "tokens and a win/lose label; both are needed for emotion")

    win = np.array([int(index.outcomes[c.video] == "win") for c in tr])
    scores = run_heads(cfg.fusion, HEADS, emotion_tokens(face, rgb, tr), win,
                       emotion_tokens(face, rgb, te), 2, Path(out) / "emotion", device, cfg.seed,
                       progress)
    per_video = write_emotion_predictions(Path(out) / "emotion_predictions.csv", te, scores,
                                          index.outcomes)
    videos = list(per_video["interfusion"])
    truth = np.array([int(index.outcomes[v] == "win") for v in videos])
    report: dict = {}
    for h, pv in per_video.items():
        report[h] = binary_report(np.array([pv[v] for v in videos]), truth)
        clip_truth = np.array([int(index.outcomes[c.video] == "win") for c in te])
        report[h]["clip_accuracy"] = float(((scores[h][:, 1] >= 0.5) == clip_truth).mean())
    report["face_featureset"] = str(fs.path)
    return report


def emotion_tokens(face: dict[str, np.ndarray], rgb: dict[str, np.ndarray],
                   clips: list[Clip]) -> dict[str, np.ndarray]:
    """The emotion heads' inputs of `clips`: face and context (MViT) tokens, by clip key."""
    return {"face": np.stack([face[c.key] for c in clips]),
            "context": np.stack([rgb[c.key] for c in clips])}


def write_emotion_predictions(path: Path, clips: list[Clip], scores: dict[str, np.ndarray],
                              outcomes: dict[str, str]) -> dict[str, dict[str, float]]:
    """`emotion_predictions.csv`: per video of `clips`, its outcome ("" when not known) and the
    mean p(win) over its clips of every head; returns {head: {video: p(win)}}."""
    per_video = {h: video_scores(clips, s[:, 1]) for h, s in scores.items()}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video", "outcome", *[f"p_win_{h}" for h in per_video]])
    for v in sorted({c.video for c in clips}):
        w.writerow([v, outcomes.get(v, ""), *[f"{per_video[h][v]:.4f}" for h in per_video]])
    atomic_write_bytes(Path(path), buf.getvalue().encode())
    return per_video
