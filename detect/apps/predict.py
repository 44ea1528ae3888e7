"""`python -m detect predict VIDEO... --run runs/NAME`: detections on new videos.

Features are extracted with exactly the settings recorded in the run's feature set (model,
weights digest, fps, stride, resize, crop, layers, dtype); a run whose weights are not available
here is refused before any video is decoded. Outputs per call, under `--out` (default
`runs/NAME/predict/`): `predictions.json`, `submission/<video>_prediction.csv` (MiGA format) and,
with matplotlib, `timelines/<video>.png`.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detect.data.annotations import Annotations, VideoAnnotations
from detect.inference.detections import Detections
from detect.runs import (
    BEST,
    RUN_FILE,
    check_feature_set,
    is_multi_stream,
    read_run,
    recorded_sets,
    score_threshold,
    video_set_index,
)
from extract.cache import FEATURESET_FILE, FeatureSet, read_meta, settings_key
from extract.config import ExtractConfig
from extract.i3d import MODEL_NAME, Backbone, build_backbone
from extract.io import RunError, atomic_write_json
from extract.pipeline import assign_ids, featureset_settings, find_videos, weights_source
from extract.provenance import versions
from extract.streams import FeatureStreams
from extract.weights import WeightsError

SUBSET = "test"  # new, unlabelled videos are scored like the test split


@dataclass
class RunFeatures:
    """What made a run's features: the feature set's settings and key, the weights argument and
    seed that reproduce them, and where they were (for messages)."""

    settings: dict[str, Any]
    key: str
    weights: str
    seed: int
    where: str


def run_features(run: Path, info: dict[str, Any]) -> RunFeatures:
    """From the run's RGB feature set (`video_set_index`) while it is where training found it
    (its key checked), else from run.json alone: predict and stream need only the run. For a run
    on several feature sets the caller extracts the others (`pose_streams`, `pose_feeds`)."""
    recorded = recorded_sets(info)[video_set_index(info)]
    path = Path(recorded["path"])
    if (path / FEATURESET_FILE).is_file():
        fs = FeatureSet.open(path)
        check_feature_set(run, {"feature_set": recorded}, fs)
        source = weights_source(fs)
        if source is None:
            raise RunError(f"{fs.path}: cannot tell which weights made this feature set")
        return RunFeatures(fs.settings, fs.key, *source, str(fs.path))
    settings = recorded["settings"]
    weights = recorded.get("weights") or {}
    if "label" not in weights and settings.get("weights") in ("kinetics", "random"):
        weights = {"label": settings["weights"], "seed": 0}  # runs older than this record
    if "label" not in weights:
        raise RunError(f"{run}: its feature set {path} is gone, and {RUN_FILE} does not record "
                       f"the weights file that made it ({settings.get('weights')!r}); put the "
                       "feature set back or train again")
    return RunFeatures(settings, recorded["key"], weights["label"], int(weights.get("seed", 0)),
                       f"{run}/{RUN_FILE}")


def backbone_for(src: RunFeatures) -> tuple[ExtractConfig, Backbone]:
    """The `ExtractConfig` that reproduces a run's features and its backbone (the feature set's
    model: i3d_r50 or inception_i3d), built once; raises RunError when the weights are missing
    here or give other features."""
    s = src.settings
    model = str(s.get("model", MODEL_NAME))  # feature sets older than the field: i3d_r50
    try:
        cfg = ExtractConfig(weights=src.weights, seed=src.seed, stride=int(s["stride"]),
                            short_side=int(s["short_side"]), crop=int(s["crop"]),
                            res4=len(s["layers"]) > 1, dtype=s["dtype"], fps=float(s["fps"]),
                            model=model)
    except ValueError as e:  # a backbone or setting this version does not know
        raise RunError(f"{src.where}: cannot reproduce the run's features here: {e}") from e
    except KeyError as e:  # e.g. a synthetic feature set: no video settings to reproduce
        raise RunError(f"{src.where}: cannot reproduce the run's features here: its feature set "
                       f"was not made from videos by stage one (no {e} setting)") from e
    try:
        backbone, info = build_backbone(cfg.weights, cfg.seed, res4=cfg.res4, model=cfg.model)
    except WeightsError as e:
        # predict takes the run's own weights: it has no --weights to pass instead.
        why = str(e).replace(", or pass --weights PATH", "")
        raise RunError(
            f"the run's features were made with weights {src.weights!r}, which are not usable "
            f"here: {why}"
        ) from e
    name, settings = featureset_settings(cfg, info)
    if settings_key(name, settings) != src.key:
        raise RunError(_mismatch(src.weights, settings, src.settings, src.where))
    return cfg, backbone


def _mismatch(weights: str, ours: dict[str, Any], theirs: dict[str, Any], where: str) -> str:
    """Which settings here differ from those that made the run's features."""
    differ = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
    if differ == ["weights_sha256"]:
        return (f"weights {weights!r} here have digest {ours['weights_sha256'][:12]}..., but "
                f"the run's feature set was made with {theirs['weights_sha256'][:12]}...; "
                "refusing to predict with other features than the detector was trained on")
    shown = "; ".join(f"{k}: here {ours.get(k)!r}, the run's {theirs.get(k)!r}" for k in differ)
    return (f"{where}: the features here would differ from the run's ({shown}); refusing to "
            "predict with other features than the detector was trained on")


def pose_source(run: Path, rec: dict[str, Any], videos: dict[str, Path]) -> Any:
    """The `PoseSource` that reproduces one recorded pose stream of a run for `videos` (id ->
    file): SMG skeletons (`SampleXXXX_skeleton.csv` beside each video) or BlazePose on the
    videos; RunError when a video has no skeleton, the pose model is one that cannot run here,
    or the settings here would give other features than the recorded ones."""
    from extract.pose.run import KinectFiles, VideoSource, pose_settings

    s = rec["settings"]
    model = s.get("model")
    source: Any
    if model == "kinect-v2-25":
        source = KinectFiles(_skeletons_beside(videos),
                             s.get("source", {}).get("fallback_source_fps"))
    elif model == "blazepose-33-full":
        from extract.pose.mediapipe_pose import BlazePose

        source = VideoSource(list(videos.values()), BlazePose())
    else:
        raise RunError(f"{run}: its stream {rec['key']} comes from {model!r} keypoints; "
                       "predict and stream read SMG skeletons beside the videos or run BlazePose, "
                       "not that: evaluate the run on its feature sets with `detect eval`")
    name, settings = pose_settings(source, float(s["fps"]), int(s["stride"]))
    if settings_key(name, settings) != rec["key"]:
        raise RunError(_mismatch(str(model), settings, s, f"{run}/{RUN_FILE}"))
    return source


def pose_records(info: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(place in the stream order, record) of each pose stream of a run (none for RGB only)."""
    rgb = video_set_index(info)
    return [(i, rec) for i, rec in enumerate(recorded_sets(info)) if i != rgb]


def pose_streams(run: Path, info: dict[str, Any], rgb: FeatureSet, videos: dict[str, Path],
                 out: Path, progress: bool = True) -> FeatureStreams:
    """The run's streams for `videos` (id -> file), in its order: `rgb` (extracted by the caller)
    and each pose stream extracted with the settings recorded in run.json (`pose_source`)."""
    from extract.pose.run import run_pose_extraction

    sets = [rgb] * len(recorded_sets(info))
    for i, rec in pose_records(info):
        s = rec["settings"]
        summary = run_pose_extraction(pose_source(run, rec, videos), out, float(s["fps"]),
                                      int(s["stride"]), progress=progress)
        if summary.failed:
            raise RunError(f"pose extraction failed: {summary.failed}")
        sets[i] = FeatureSet.open(summary.featureset)
    return FeatureStreams(sets)


def _skeletons_beside(videos: dict[str, Path]) -> dict[str, Path]:
    """SMG's skeleton file of each video: `<id>_skeleton.csv` in the video's folder."""
    out = {}
    for vid, path in videos.items():
        csv = path.parent / f"{vid}_skeleton.csv"
        if not csv.is_file():
            raise RunError(f"{path}: the run also reads SMG skeletons, and there is no {csv.name} "
                           "beside this video")
        out[vid] = csv
    return out


def predict_videos(
    videos: list[Path], run: Path, out: Path | None = None, progress: bool = True,
    id_fn: Any = None, eval_overlap: float | None = None,
) -> tuple[dict[str, Detections], list[str]]:
    """Extract, detect and write outputs for `videos`; returns the thresholded detections and
    the class names. `predict.json` records the run, threshold, windows, videos and versions.

    eval_overlap: overlap of consecutive windows instead of the run's `data.eval_overlap`
    (1 - hop / window gives `detect stream --hop`'s windows)."""
    import torch

    from detect.data.windows import WindowDataset
    from detect.evaluation.submission import write_miga_csvs
    from detect.inference.detections import save_predictions
    from detect.inference.predictor import final_detections, load_run_model
    from extract.pipeline import format_summary, run_extraction
    from extract.runtime import resolve_device
    from extract.threads import apply_threads

    run = Path(run)
    cfg, info = read_run(run)
    if cfg.mode != "features":
        raise RunError(
            f"{run}: an end-to-end run (mode = \"e2e\"); predict needs a run trained on cached "
            "features. To use its finetuned I3D, extract features with --weights "
            f"{run / BEST} and train a features-mode run on them")
    if eval_overlap is not None:
        if not 0 <= eval_overlap < 1:
            raise RunError(f"eval_overlap must be in [0, 1), got {eval_overlap}")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                                eval_overlap=eval_overlap))
    out = Path(out) if out is not None else run / "predict"
    apply_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    model, ck = load_run_model(run, device)
    threshold = score_threshold(cfg, ck, run)  # a run that cannot predict is refused first
    ecfg, _ = backbone_for(run_features(run, info))
    created = [d for d in (out, out / "features") if not d.exists()]
    summary = run_extraction(videos, out / "features", ecfg, id_fn=id_fn, progress=progress)
    if summary.failed:
        print(format_summary(summary))
    fs: Any = FeatureSet.open(summary.featureset)
    done = [v for v in [*summary.done, *summary.skipped] if fs.has(v)]
    if done and is_multi_stream(info):
        ids = assign_ids(find_videos(videos), id_fn)
        fs = pose_streams(run, info, fs, {v: ids[v] for v in done}, out / "features", progress)
    if not done:
        if not fs.video_ids():  # a set this call made for nothing: leave no trace of it
            shutil.rmtree(fs.path)
        for d in reversed(created):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise RunError("no video could be read; see the messages above")
    classes = list(ck["classes"])
    ann = Annotations(classes=classes, videos={})
    for vid in done:
        meta = read_meta(fs.video_path(vid))
        ann.videos[vid] = VideoAnnotations(SUBSET, meta.duration, meta.source_fps,
                                           np.zeros((0, 2)), np.zeros(0, np.int64))
    dataset = WindowDataset(fs, ann, SUBSET, cfg.data, train=False)
    with torch.inference_mode():
        preds = final_detections(model, dataset, cfg, device, threshold, progress)
    save_predictions(out / "predictions.json", preds, classes)
    write_miga_csvs(preds, ann, out / "submission")
    atomic_write_json(out / "predict.json", {
        "run": str(run.resolve()), "checkpoint_epoch": ck["best_epoch"], "threshold": threshold,
        "window": cfg.data.window, "eval_overlap": cfg.data.eval_overlap, "videos": done,
        "feature_set": str(fs.path), "failed": summary.failed, "versions": versions()})
    _timelines(preds, ann, out / "timelines", threshold)
    return preds, classes


def _timelines(preds: dict[str, Detections], ann: Annotations, folder: Path,
               threshold: float) -> None:
    from detect.apps.plots import MissingMatplotlib, plot_timeline, score_norm

    try:
        norm = score_norm(threshold)
    except MissingMatplotlib:  # the timelines need the optional `report` extra
        print("no timeline PNGs: pip install -e '.[report]' for them")
        return
    folder.mkdir(parents=True, exist_ok=True)
    for vid, dets in preds.items():
        v = ann.videos[vid]
        plot_timeline(v.segments, v.labels, dets, ann.classes, v.duration,
                      folder / f"{vid}.png", title=vid, norm=norm, ground_truth=False)


def format_detections(preds: dict[str, Detections], classes: list[str], limit: int = 50) -> str:
    """A table of detections (video, class, start, end, score), at most `limit` rows."""
    rows = [(vid, classes[int(d.label[i])], d.start[i], d.end[i], d.score[i])
            for vid, d in sorted(preds.items()) for i in np.argsort(d.start)]
    lines = [f"{'video':<16} {'class':<32} {'start':>8} {'end':>8} {'score':>6}"]
    for vid, name, s, e, sc in rows[:limit]:
        lines.append(f"{vid:<16} {name[:32]:<32} {s:8.2f} {e:8.2f} {sc:6.3f}")
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in predictions.json")
    if not rows:
        lines.append("(no detections above the threshold)")
    return "\n".join(lines)
