"""Extract I3D features for many videos into one feature set (`ROOT/<key>/`), resumably.

- Every video that fails (missing, empty, corrupt, not a video, audio only, too short) is reported
  with its path and reason in the summary and in `failures.json`; the others are still done.
- A re-run skips finished videos by their stored source size and mtime, without decoding them.
- Under torchrun (RANK / WORLD_SIZE set) the sorted video list is split round-robin between ranks;
  `failures.json` is updated under a file lock, so ranks never clobber each other's entries.
- Decoding of the next `workers - 1` videos overlaps the model run of the current one.
- `save_frames` also stores the decoded 10 fps frames, uncropped, at `frames_short_side` (for
  end-to-end training). The key does not change; a finished video without frames (or with frames
  of another short side) counts as not done and is extracted again.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from extract.cache import (
    FAILURES_FILE,
    CacheError,
    FeatureMeta,
    FeatureSet,
    VideoWriter,
    feature_timestamps,
    read_frames_info,
    read_meta,
    read_video,
)
from extract.config import ExtractConfig
from extract.decode import VIDEO_EXTENSIONS, DecodeError, DecodeSettings, FrameStream
from extract.i3d import (
    INCEPTION,
    MODEL_NAME,
    MODELS,
    ChunkedExtractor,
    RunOptions,
    backbone_spec,
    build_backbone,
    default_chunk_frames,
    layer_names,
)
from extract.io import atomic_write_json, file_lock, try_lock
from extract.progress import ProgressBar
from extract.progress import progress as progress_bar
from extract.provenance import mgdet_version, versions
from extract.runtime import dist_rank, resolve_device
from extract.threads import ThreadGovernor
from extract.weights import Weights

IdFn = Callable[[Path], str]


@dataclass
class RunSummary:
    """Outcome of one run (of this rank). failed: video_id -> "path: reason"."""

    featureset: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    video_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def find_videos(inputs: Sequence[Path]) -> list[Path]:
    """Files as given (whatever their extension: a bad one is a failure of that video), folders
    searched recursively for video extensions. Sorted, without duplicates.

    Raises ValueError, before anything is created, for a path that does not exist, a folder
    without videos, or no input at all: those are usage errors, not failed videos."""
    found: set[Path] = set()
    if not inputs:
        raise ValueError("no videos given")
    for item in map(Path, inputs):
        if item.is_dir():
            inside = [p for p in item.rglob("*") if p.is_file()
                      and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")]
            if not inside:
                raise ValueError(f"{item}: no video files in this folder (looked for "
                                 f"{', '.join(VIDEO_EXTENSIONS[:4])}, ...)")
            found.update(inside)
        elif item.exists():
            found.add(item)
        else:
            raise ValueError(f"{item}: no such file or folder")
    return sorted(found)


_SMG_VIDEO_RE = re.compile(r"^(Sample\d+)_color\.mp4$")


def video_id_from_path(path: Path | str) -> str:
    """`.../Sample0001_color.mp4` -> `Sample0001` (SMG's names; any other name: the stem)."""
    name = Path(path).name
    m = _SMG_VIDEO_RE.match(name)
    return m.group(1) if m else Path(name).stem


def strip_suffix_id(suffix: str) -> IdFn:
    """An id function: the file stem without `suffix` (e.g. "_color": Sample0001_color.mp4 ->
    Sample0001)."""

    def video_id(path: Path) -> str:
        stem = path.stem
        return stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem

    return video_id


def assign_ids(paths: Sequence[Path], id_fn: IdFn | None = None) -> dict[str, Path]:
    """video_id -> path, sorted by id. Two paths with the same id are an error."""
    id_fn = id_fn or (lambda p: p.stem)
    ids: dict[str, Path] = {}
    clashes = []
    for p in paths:
        vid = id_fn(p)
        if not vid or "/" in vid or vid.startswith("."):
            raise ValueError(f"{p}: unusable video id {vid!r}")
        if vid in ids:
            clashes.append(f"{vid!r}: {ids[vid]} and {p}")
        ids[vid] = p
    if clashes:
        raise ValueError("several videos share an id: " + "; ".join(clashes))
    return dict(sorted(ids.items()))


def featureset_settings(cfg: ExtractConfig, weights: Weights) -> tuple[str, dict[str, Any]]:
    """(readable name, settings that change the numbers) for `FeatureSet.create`.

    The key includes the model, its layers and input range; i3d_r50's settings are the ones
    every earlier feature set has, so their keys stay."""
    layers = layer_names(cfg.model, cfg.res4)
    kind = weights.label if weights.label in ("kinetics", "random") else Path(weights.label).stem
    label = Path(weights.label)
    if label.parent.name == "checkpoints" and label.parent.parent.name:
        kind = f"{label.parent.parent.name}-{kind}"  # runs/NAME/checkpoints/best.pt -> NAME-best
    settings = {
        "model": cfg.model,
        "weights": kind,
        "weights_sha256": weights.sha256,
        "fps": cfg.fps,
        "stride": cfg.stride,
        "short_side": cfg.short_side,
        "crop": cfg.crop,
        "layers": layers,
        "dtype": cfg.dtype,
        "sampling": "last-frame-with-pts<=k/fps",
        "resize": "torch-bilinear-no-antialias-uint8",
        "normalize": {"mean": 0.45, "std": 0.225},
    }
    if cfg.model == INCEPTION:
        # uint8 / 127.5 - 1; AFSD's MaxPool3d_5a (extract.inception_i3d).
        settings["normalize"] = {"range": [-1.0, 1.0]}
        settings["temporal_stride"] = 4
    name = f"{cfg.model}-{kind}-s{cfg.stride}-c{cfg.crop or cfg.short_side or 'full'}"
    return name, settings


def source_stamp(path: Path) -> dict[str, int]:
    """What `is_done` compares to tell an unchanged source: a file's size and mtime; for a
    folder (per-frame keypoint files), the summed size, newest mtime and count of its files."""
    if not path.is_dir():
        st = path.stat()
        return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return {"source_size": sum(st.st_size for st in stats),
            "source_mtime_ns": max((st.st_mtime_ns for st in stats), default=0),
            "source_files": len(stats)}


def frames_short_side(cfg: ExtractConfig) -> int | None:
    """The short side stored frames get in this run, None when frames are not saved."""
    if not cfg.save_frames:
        return None
    return cfg.frames_short_side or cfg.short_side


def is_done(fs: FeatureSet, video_id: str, path: Path, frames: int | None = None) -> bool:
    """True when the feature file exists and was made from this exact source (size, mtime) and,
    when `frames` is a short side, also holds the frames at that short side. `path` may be a
    folder (see `source_stamp`)."""
    if not fs.has(video_id) or not path.exists():
        return False
    try:
        meta = read_meta(fs.video_path(video_id))
        if frames is not None:
            info = read_frames_info(fs.video_path(video_id))
            if info is None or info.short_side != frames:
                return False
    except CacheError:
        return False
    stamp = source_stamp(path)
    return all(meta.extra.get(k) == v for k, v in stamp.items())


def remove_stale_temps(fs: FeatureSet, video_ids: Sequence[str]) -> int:
    """Delete temporary files a killed run left for these videos (only ours: ranks may share)."""
    wanted = set(video_ids)
    pattern = re.compile(r"^\.(?P<vid>.+)\.[^.]+\.h5\.tmp$")
    removed = 0
    for p in fs.path.glob(".*.h5.tmp"):
        m = pattern.match(p.name)
        if m and m.group("vid") in wanted:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def weights_source(fs: FeatureSet) -> tuple[str, int] | None:
    """(weights argument, seed) that reproduce the feature set's weights digest, from its run
    records (or, for a copied set, its files); None when nothing says."""
    digest = fs.settings.get("weights_sha256")
    for rec in sorted((fs.path / "runs").glob("*.json"), reverse=True):
        data = json.loads(rec.read_text())
        w = data.get("weights", {})
        if w.get("sha256") == digest:
            return w["label"], int(w.get("seed") or data.get("config", {}).get("seed", 0))
    for vid in fs.video_ids()[:1]:  # no run record: the per-video files name the weights too
        return read_meta(fs.video_path(vid)).weights, 0
    return None


def video_lock_path(fs: FeatureSet, video_id: str) -> Path:
    """The lock a process holds while it writes `video_id`'s features into `fs`."""
    return fs.path / f".{video_id}.lock"


def remove_stale_temps_if_free(fs: FeatureSet, video_id: str) -> None:
    """A killed run's temp files of `video_id`, unless a live run holds the video."""
    lock = try_lock(video_lock_path(fs, video_id))
    if lock is not None:
        try:
            remove_stale_temps(fs, [video_id])
        finally:
            lock.release()


def _extract_locked(extractor: Extractor, fs: FeatureSet, vid: str, path: Path,
                    stream: FrameStream, bar_frames: ProgressBar, summary: RunSummary) -> None:
    """Extract one video while holding its lock: a temp file left now is a killed run's, and a
    video another run finished while this one waited is skipped."""
    remove_stale_temps(fs, [vid])
    if is_done(fs, vid, path, extractor.frames):
        stream.close()
        summary.skipped.append(vid)
        return
    try:
        meta = extractor.extract(fs, vid, path, stream, bar_frames)
        summary.done.append(vid)
        summary.video_seconds += meta.duration
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        record_failure(fs, summary, vid, path, e)


def record_failure(fs: FeatureSet, summary: RunSummary, vid: str, path: Path,
                   error: Exception) -> None:
    """Note why `vid` failed (naming `path`), print it, and drop an older file of the video:
    features of a source that no longer extracts must not stay in the set."""
    reason = str(error) if str(path) in str(error) else f"{path}: {error}"
    summary.failed[vid] = reason
    if path.exists() and fs.has(vid):
        fs.video_path(vid).unlink()
    tqdm.write(f"FAILED {reason}", file=sys.stderr)


def update_failures(fs: FeatureSet, resolved: Sequence[str], failed: dict[str, str]) -> None:
    """Drop `resolved` ids from failures.json and add `failed`, under an exclusive lock."""
    with file_lock(fs.path / ".lock"):
        for p in fs.path.glob(f".{FAILURES_FILE}.*.tmp"):
            p.unlink(missing_ok=True)  # left by a killed writer; we hold the lock
        current = fs.failures()
        for vid in resolved:
            current.pop(vid, None)
        current.update(failed)
        path = fs.path / FAILURES_FILE
        if current:
            atomic_write_json(path, dict(sorted(current.items())))
        else:
            path.unlink(missing_ok=True)


def _decoder_versions() -> dict[str, Any]:
    return {"pyav": av.__version__, "ffmpeg": {k: list(v) if isinstance(v, tuple) else v
                                                for k, v in av.library_versions.items()}}


class Extractor:
    """Builds the model once and extracts videos one at a time (used by `run_extraction`)."""

    def __init__(self, cfg: ExtractConfig) -> None:
        self.cfg = cfg
        local = os.environ.get("LOCAL_RANK")
        self.device = resolve_device(cfg.device, int(local) if local is not None else None)
        self.backbone, self.weights = build_backbone(cfg.weights, cfg.seed, res4=cfg.res4,
                                                     model=cfg.model)
        chunk = cfg.chunk_frames or default_chunk_frames(self.device)
        self.runner = ChunkedExtractor(
            self.backbone, cfg.stride, self.device,
            RunOptions(chunk_frames=chunk, batch_chunks=cfg.batch_chunks),
        )
        self.decode = DecodeSettings(cfg.fps, cfg.short_side, cfg.crop)

        self.frames = frames_short_side(cfg)

    def stream(self, path: Path) -> FrameStream:
        """A decoding stream for `path`; with frames saved, `extract` attaches the writer."""
        return FrameStream(path, self.decode, chunk=16, max_chunks=max(8, 2 * 16),
                           keep_short_side=self.frames, on_kept=self._no_writer
                           if self.frames is not None else None)

    @staticmethod
    def _no_writer(frames: object) -> None:
        raise RuntimeError("frames decoded before a writer was attached")

    def extract(self, fs: FeatureSet, video_id: str, path: Path, stream: FrameStream,
                bar: ProgressBar | None = None) -> FeatureMeta:
        """Run one video and write its file atomically; raises DecodeError on bad input."""
        with VideoWriter(fs.video_path(video_id), frames_short_side=self.frames) as writer:
            if self.frames is not None:
                stream.on_kept = writer.append_frames  # runs in this thread, before the model
            return self._extract(writer, video_id, path, stream, bar)

    def _extract(self, writer: VideoWriter, video_id: str, path: Path, stream: FrameStream,
                 bar: ProgressBar | None) -> FeatureMeta:
        stamp = source_stamp(path) if path.is_file() else {}
        step = (lambda n: bar.update(n)) if bar is not None else None
        try:
            feats = self.runner.run(stream, progress=step)
        finally:
            stream.close()
        res = stream.result
        if feats.res5.shape[0] == 0:
            raise DecodeError(
                f"{path}: too short for one feature ({res.num_frames} frames at {self.cfg.fps:g} "
                f"fps, {res.duration:.3f} s; a feature needs {self.cfg.stride} frames)"
            )
        meta = FeatureMeta(
            video_id=video_id,
            fps=self.cfg.fps,
            stride=self.cfg.stride,
            source_path=str(path.resolve()),
            source_fps=res.source_fps,
            duration=res.duration,
            num_frames=res.num_frames,
            model=self.cfg.model,
            weights=self.weights.label,
            weights_sha256=self.weights.sha256,
            layers=layer_names(self.cfg.model, self.cfg.res4),
            mgdet_version=mgdet_version(),
            extra={**stamp, **res.stats(), "decoder": _decoder_versions(),
                   "short_side": self.cfg.short_side, "crop": self.cfg.crop},
        )
        ts = feature_timestamps(feats.res5.shape[0], self.cfg.stride, self.cfg.fps)
        writer.finish(feats.res5, ts, meta, res4=feats.res4, dtype=self.cfg.dtype,
                      source_pts=np.asarray(res.chosen_pts, np.float64))
        return meta


def run_extraction(
    inputs: Sequence[Path],
    out: Path,
    cfg: ExtractConfig,
    id_fn: IdFn | None = None,
    progress: bool = True,
) -> RunSummary:
    """Extract every video under `inputs` into the feature set for `cfg` under `out`.

    Returns this rank's summary; `summary.featureset` is `out/<key>`. Raises ValueError before any
    work for duplicate ids, WeightsError for unusable weights.
    """
    started = time.time()
    rank, world = dist_rank()
    threads = ThreadGovernor(cfg.threads, cap=None, ranks=world)
    ids = assign_ids(find_videos(inputs), id_fn)
    mine = dict(list(ids.items())[rank::world])
    extractor = Extractor(cfg)
    name, settings = featureset_settings(cfg, extractor.weights)
    fs = FeatureSet.create(out, name, settings)
    if extractor.frames is not None and rank == 0:
        fs.record_frames(extractor.frames)
    summary = RunSummary(featureset=fs.path)
    todo = []
    for vid, path in mine.items():
        if is_done(fs, vid, path, extractor.frames):
            summary.skipped.append(vid)
            remove_stale_temps_if_free(fs, vid)
        else:
            todo.append((vid, path))

    bar_videos = progress_bar(total=len(todo), unit="video", enabled=progress, position=0,
                              desc=f"videos (rank {rank})" if world > 1 else "videos",
                              log_every_s=0)
    bar_frames = progress_bar(desc="frames", unit="frame", enabled=progress, position=1,
                              leave=False, log_every_s=None)
    streams: dict[int, FrameStream] = {}
    try:
        for i, (vid, path) in enumerate(todo):
            # Decode ahead: the next `workers - 1` videos start while this one runs the model.
            for j in range(i, min(len(todo), i + cfg.workers)):
                if j not in streams:
                    streams[j] = extractor.stream(todo[j][1]).start()
            with file_lock(video_lock_path(fs, vid), on_wait=lambda vid=vid: tqdm.write(
                    f"waiting: another run is extracting {vid} into {fs.path}", file=sys.stderr)):
                _extract_locked(extractor, fs, vid, path, streams.pop(i), bar_frames, summary)
            bar_videos.update(1)
            threads.update()  # fewer threads while other processes keep our cores busy
    finally:
        for s in streams.values():
            s.close()
        bar_frames.close()
        bar_videos.close()
    update_failures(fs, summary.done + summary.skipped, summary.failed)
    summary.seconds = time.time() - started
    _write_run_record(fs, cfg, extractor, summary, rank, world)
    return summary


def run_record_path(fs: FeatureSet, rank: int, world: int) -> Path:
    """Where this rank's record of a run goes: `runs/<UTC time>-rank<r>of<w>.json`."""
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return fs.path / "runs" / f"{now}-rank{rank}of{world}.json"


def _write_run_record(fs: FeatureSet, cfg: ExtractConfig, extractor: Extractor,
                      summary: RunSummary, rank: int, world: int) -> Path:
    return write_run_record(fs, summary, rank, world, {
        "config": asdict(cfg),
        "device": str(extractor.device),
        "chunk_frames": extractor.runner.chunk,
        "halo": extractor.runner.halo,
        "weights": asdict(extractor.weights),
        "decoder": _decoder_versions(),
    })


def write_run_record(fs: FeatureSet, summary: RunSummary, rank: int, world: int,
                     extra: dict[str, Any]) -> Path:
    """This rank's run record in the feature set: `extra`, then the settings, versions and the
    summary (done, skipped, failed, seconds) every extraction run records."""
    path = run_record_path(fs, rank, world)
    atomic_write_json(path, {
        **extra,
        "settings": fs.settings,
        "versions": versions(),
        "rank": rank,
        "world_size": world,
        "done": summary.done,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "seconds": round(summary.seconds, 3),
        "video_seconds": round(summary.video_seconds, 3),
    })
    return path


def format_summary(summary: RunSummary) -> str:
    lines = [f"done {len(summary.done)}, skipped {len(summary.skipped)} (already extracted), "
             f"failed {len(summary.failed)} in {summary.seconds:.1f} s "
             f"({summary.video_seconds:.1f} s of video)"]
    for vid, reason in summary.failed.items():
        lines.append(f"  FAILED {vid}: {reason}")
    return "\n".join(lines)


@dataclass
class FeatureSetReport:
    """What `inspect_featureset` found: per-video problems and totals."""

    fs: FeatureSet
    videos: int = 0
    duration: float = 0.0
    steps: int = 0
    with_frames: int = 0
    broken: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"feature set {self.fs.path}", f"  key {self.fs.key}"]
        out += [f"  {k}: {json.dumps(v)}" for k, v in sorted(self.fs.settings.items())]
        if self.fs.frames is not None:
            out.append(f"  frames: short side {self.fs.frames.get('short_side')}, stored for "
                       f"{self.with_frames} of {self.videos} videos")
        out.append(f"  videos {self.videos}, {self.duration:.1f} s ({self.duration / 3600:.2f} h), "
                   f"{self.steps} features")
        failures = self.fs.failures()
        out.append(f"  failures.json: {len(failures)}")
        out += [f"    {vid}: {why}" for vid, why in sorted(failures.items())]
        out.append(f"  broken files: {len(self.broken)}")
        out += [f"    {vid}: {why}" for vid, why in sorted(self.broken.items())]
        return out


def inspect_featureset(path: Path, progress: bool = True) -> FeatureSetReport:
    """Read every file of a feature set and check shapes, timestamps and settings agree."""
    fs = FeatureSet.open(path)
    report = FeatureSetReport(fs=fs)
    layers = fs.settings.get("layers", ["res5"])
    model = fs.settings.get("model", MODEL_NAME)
    width = backbone_spec(model).dims[0] if model in MODELS else None  # None: not an I3D's
    for vid in progress_bar(fs.video_ids(), desc="checking", unit="video", enabled=progress):
        p = fs.video_path(vid)
        try:
            v = read_video(p, with_res4=len(layers) > 1)
            m = v.meta
            problems = []
            if m.video_id != vid:
                problems.append(f"video_id attribute {m.video_id!r} != file name")
            if m.stride != fs.stride or m.fps != fs.fps:
                problems.append(f"stride/fps {m.stride}/{m.fps} != set's {fs.stride}/{fs.fps}")
            if m.weights_sha256 != fs.settings.get("weights_sha256"):
                problems.append("weights_sha256 differs from the feature set's")
            if v.num_steps != m.num_frames // m.stride or v.num_steps == 0:
                problems.append(f"{v.num_steps} features for {m.num_frames} frames at stride "
                                f"{m.stride} (expected {m.num_frames // m.stride})")
            if width is not None and v.features.shape[1] != width:
                problems.append(f"feature width {v.features.shape[1]} != {width}")
            expected = feature_timestamps(v.num_steps, m.stride, m.fps)
            if not np.allclose(v.timestamps, expected, rtol=0, atol=1e-9):
                problems.append("timestamps do not follow (i + 0.5) * stride / fps")
            frames = read_frames_info(p)
            if frames is not None:
                report.with_frames += 1
                if frames.num_frames != m.num_frames:
                    problems.append(f"{frames.num_frames} stored frames != num_frames "
                                    f"{m.num_frames}")
            if problems:
                report.broken[vid] = f"{p}: " + "; ".join(problems)
            report.duration += m.duration
            report.steps += v.num_steps
        except CacheError as e:
            report.broken[vid] = str(e)
        report.videos += 1
    return report
