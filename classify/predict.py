"""Label a new video's clips with a trained classification run (`python -m classify predict`).

The run directory (`classify train --out`) gives the resolved config (`config.toml`), `run.json` and
the checkpoint of every part it trained; the clips are scored exactly as its test split was:

    skeleton streams (every run)  the video's OpenPose keypoints (`--keypoints`) -> each 2s-AGCN
                                  stream's softmax, summed: the final scores of a skeleton-only run
    rgb.enabled                   MViTv2-S tokens of the clips from the video itself, with the
                                  run's RGB settings -> the fusion heads; the final is "token"
    emotion.enabled               face tokens too -> p(win) of the video from every emotion head

The clips come from a CLIPS file (`classify.data.clips.read_clips_csv`: the release's
`class,start,end` label file, or `start,end` rows). Written under OUT (default
`RUN/predict/<video stem>/`), with the columns the run's own files have:

    OUT/predictions.csv          per clip: video, row, frames, class (empty when not given), top-5
    OUT/miga_track1.csv          videoID_clipIndex,label (0-based)
    OUT/confusion.csv            when every clip has a class
    OUT/emotion_predictions.csv  with emotion: p(win) of every head (outcome empty)
    OUT/predict.json             the resolved inputs, the run, its models, versions (and, with
                                 classes, top-1 / top-5)
    OUT/cache/rgb/, cache/face/  this video's tokens (a re-run reuses them)

The video id is the video's file stem. Bad input (a folder that is not a classify run, an
unfinished one, a missing input the run needs, a malformed CLIPS row) raises ValueError / RunError
naming the file; a video whose tokens cannot be made raises PredictFailed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classify.config import ClassifyConfig, FusionConfig, load_classify_config
from classify.data.clips import UNLABELLED, Clip, ClipIndex, read_clips_csv
from classify.data.openpose import read_keypoints
from classify.emotion import HEADS as EMOTION_HEADS
from classify.emotion import emotion_tokens, extract_face_tokens, write_emotion_predictions
from classify.metrics import classification_report
from classify.model.agcn import AGCN
from classify.model.fusion import FusionClassifier
from classify.report import write_confusion, write_miga_csv, write_predictions
from classify.run import FUSION_HEADS, fusion_tokens
from classify.tokens.cache import load_clip_tokens
from classify.tokens.rgb import extract_rgb_tokens
from classify.train.fusion import score_heads
from classify.train.skeleton import SkeletonClips, clip_scores
from detect.data.converters.common import DatasetError
from detect.data.converters.imigue import IMIGUE_CLASSES
from extract.cache import FeatureSet
from extract.config import ConfigError
from extract.io import RunError, atomic_write_json, load_checkpoint, read_json
from extract.provenance import versions
from extract.runtime import resolve_device
from extract.threads import apply_threads


class PredictFailed(RuntimeError):
    """The inputs were fine but the work failed (e.g. the video could not be decoded)."""


@dataclass
class PredictRequest:
    video: Path
    run: Path
    clips: Path  # the CLIPS file
    keypoints: Path | None = None
    out: Path | None = None  # default RUN/predict/<video stem>/
    device: str = "auto"

    @property
    def video_id(self) -> str:
        return Path(self.video).stem

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run) / "predict" / self.video_id


@dataclass
class TrainedRun:
    path: Path
    cfg: ClassifyConfig
    info: dict[str, Any]  # run.json


def open_run(path: Path) -> TrainedRun:
    """A classify run directory: its config.toml and run.json, or a RunError saying why not."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    missing = [n for n in ("config.toml", "run.json") if not (path / n).is_file()]
    if missing:
        raise RunError(f"{path}: not a classify run (no {' or '.join(missing)}; `python -m "
                       "classify train --out DIR` makes one)")
    try:
        cfg = load_classify_config(path / "config.toml")
    except ConfigError as e:
        raise RunError(f"{path}: not a classify run (its config.toml: {e})") from e
    info = read_json(path / "run.json", "run record")
    if not isinstance(info, dict):
        raise RunError(f"{path / 'run.json'}: not a classify run record (not an object)")
    return TrainedRun(path, cfg, info)


def modalities(cfg: ClassifyConfig) -> list[str]:
    return ["skeleton", *(["rgb"] if cfg.rgb.enabled else []),
            *(["face"] if cfg.emotion.enabled else [])]


def check_request(run: TrainedRun, req: PredictRequest) -> None:
    """The inputs the run needs are there (cheap checks, before any model is loaded)."""
    if req.keypoints is None:
        streams = ", ".join(run.cfg.skeleton.streams)
        raise RunError(f"run {run.path} has skeleton streams ({streams}): pass --keypoints, the "
                       "video's OpenPose keypoints (a folder of *_keypoints.json, or a .csv / "
                       ".xlsx table)")
    if not Path(req.video).is_file():
        raise DatasetError(f"{req.video}: no such video file")


def load_trained(model: nn.Module, path: Path, epochs: int, device: torch.device) -> nn.Module:
    """`model` with the weights of a finished training's `last.pt`, in eval mode on `device`."""
    if not path.is_file():
        raise RunError(f"{path}: not found; the run has not trained this part (train it to the "
                       "end with `python -m classify train` first)")
    ck = load_checkpoint(path)
    done = int(ck.get("epoch", -1)) + 1
    if done < epochs:
        raise RunError(f"{path}: trained {done} of {epochs} epochs; finish the run first "
                       "(`python -m classify train` again with the same --out resumes it)")
    try:
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as e:
        raise RunError(f"{path}: does not fit the run's config.toml ({e})") from e
    return model.to(device).eval()


def _heads(cfg: FusionConfig, folder: Path, heads: dict[str, tuple[str, ...]],
           inputs: dict[str, np.ndarray], num_classes: int,
           device: torch.device) -> dict[str, FusionClassifier]:
    """The trained heads `folder/<head>/last.pt`, built for `inputs`' token shapes."""
    return {name: load_trained(
        FusionClassifier(cfg, uses, num_classes, {m: inputs[m].shape[1:] for m in uses}),
        folder / name / "last.pt", cfg.epochs, device) for name, uses in heads.items()}


def _tokens(fs: FeatureSet, clips: list[Clip], video: Path, what: str) -> dict[str, np.ndarray]:
    """Every clip's tokens from `fs`, or PredictFailed with the reason the video failed."""
    tokens = load_clip_tokens(fs, clips)
    if len(tokens) < len({c.key for c in clips}):
        why = fs.failures().get(clips[0].video, "no tokens were written")
        raise PredictFailed(f"{video}: no {what} tokens for its clips ({why})")
    return tokens


def _check_frames(req: PredictRequest, clips: list[Clip], kp: np.ndarray) -> None:
    for c in clips:
        if c.end >= len(kp):
            raise DatasetError(f"{req.clips}, line {c.row}: the clip ends at frame {c.end}, but "
                               f"the keypoints ({req.keypoints}) have {len(kp)} frames")


def predict_video(req: PredictRequest, progress: bool = True) -> dict[str, Any]:
    """Score the clips (see the module docstring), write the outputs; returns predict.json."""
    run = open_run(req.run)
    cfg = run.cfg
    check_request(run, req)
    clips = read_clips_csv(req.clips, req.video_id)
    kp = read_keypoints(Path(req.keypoints))
    _check_frames(req, clips, kp)
    device = resolve_device(req.device)
    apply_threads(cfg.train.threads)
    out = req.out_dir
    out.mkdir(parents=True, exist_ok=True)
    keypoints = {req.video_id: kp}
    index = ClipIndex(Path(req.video).parent, IMIGUE_CLASSES, clips, {},
                      {req.video_id: Path(req.keypoints)}, {req.video_id: Path(req.video)})
    n = len(IMIGUE_CLASSES)
    streams = {s: load_trained(AGCN(cfg.skeleton.agcn, n), run.path / s / "last.pt",
                               cfg.train.epochs, device) for s in cfg.skeleton.streams}
    final = sum((clip_scores(m, SkeletonClips(clips, keypoints, s, cfg.data.frames, False),
                             device) for s, m in streams.items()), np.zeros((len(clips), n)))
    record = _record(req, run, clips, device)
    if cfg.rgb.enabled:
        fs = extract_rgb_tokens(index, out / "cache" / "rgb", cfg.rgb, progress)
        rgb = _tokens(fs, clips, req.video, "RGB")
        record["rgb_featureset"] = str(fs.path)
        inputs = fusion_tokens(rgb, streams, clips, keypoints, cfg.data.frames, device)
        heads = _heads(cfg.fusion, run.path / "fusion", FUSION_HEADS, inputs, n, device)
        final = score_heads(heads, inputs, device)["token"]
        if cfg.emotion.enabled:
            record["emotion"] = _emotion(run, req, index, keypoints, rgb, device, progress)
    write_predictions(out / "predictions.csv", clips, final, IMIGUE_CLASSES)
    write_miga_csv(out / "miga_track1.csv", clips, final, index)
    if all(c.label != UNLABELLED for c in clips):
        report = classification_report(final, np.array([c.label for c in clips]),
                                       IMIGUE_CLASSES)
        write_confusion(out / "confusion.csv", np.asarray(report["confusion"]))
        record["report"] = {k: report[k] for k in ("clips", "top1", "top5",
                                                   "mean_class_accuracy")}
    atomic_write_json(out / "predict.json", record)
    return record


def _emotion(run: TrainedRun, req: PredictRequest, index: ClipIndex,
             keypoints: dict[str, np.ndarray], rgb: dict[str, np.ndarray],
             device: torch.device, progress: bool) -> dict[str, Any]:
    """p(win) of the video from every emotion head; writes emotion_predictions.csv."""
    out = req.out_dir
    fs = extract_face_tokens(index, keypoints, out / "cache" / "face", run.cfg.emotion, progress)
    face = _tokens(fs, index.clips, req.video, "face")
    inputs = emotion_tokens(face, rgb, index.clips)
    heads = _heads(run.cfg.emotion.fusion, run.path / "emotion", EMOTION_HEADS, inputs, 2,
                   device)
    scores = score_heads(heads, inputs, device)
    per_video = write_emotion_predictions(out / "emotion_predictions.csv", index.clips, scores,
                                          {})
    return {"face_featureset": str(fs.path),
            "p_win": {h: v[req.video_id] for h, v in per_video.items()}}


def _record(req: PredictRequest, run: TrainedRun, clips: list[Clip],
            device: torch.device) -> dict[str, Any]:
    cfg = run.cfg
    return {
        "command": sys.argv, "video": str(Path(req.video).resolve()), "video_id": req.video_id,
        "clips_file": str(Path(req.clips).resolve()), "clips": len(clips),
        "labelled": all(c.label != UNLABELLED for c in clips),
        "keypoints": str(Path(req.keypoints).resolve()) if req.keypoints else None,
        "run": str(Path(run.path).resolve()), "run_name": cfg.name,
        "run_versions": run.info.get("versions"), "modalities": modalities(cfg),
        "models": {"streams": list(cfg.skeleton.streams),
                   "fusion": list(FUSION_HEADS) if cfg.rgb.enabled else [],
                   "emotion": list(EMOTION_HEADS) if cfg.emotion.enabled else [],
                   "final": "fusion.token" if cfg.rgb.enabled else "fused"},
        "device": str(device), "versions": versions()}
