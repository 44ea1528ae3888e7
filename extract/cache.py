"""The feature cache: the contract between stage one (extract) and stage two (detect).

Layout::

    ROOT/<key>/featureset.json     settings that produced the numbers, and the key
    ROOT/<key>/<video_id>.h5       one file per video (see `write_video`)
    ROOT/<key>/failures.json       videos that could not be extracted, with reasons

`<key>` is readable and ends in a short hash of every setting that changes the numbers, so
different settings never mix and any number of training runs reuse one feature set.

Feature i of a video covers the 10 fps frames [i*stride, (i+1)*stride); its timestamp is the
centre of that interval in seconds, (i + 0.5) * stride / fps. Stage two maps window positions to
seconds with the same convention (`feature_timestamps`).

Stored frames (`--save-frames`, for end-to-end training): a per-video file may also hold
`frames` (N, H, W, 3) uint8, every decoded 10 fps frame resized to a short side (attribute
`short_side` on the dataset; 0 = source size) and NOT cropped, in HDF5 chunks of
`FRAME_CHUNK` frames, uncompressed (measured on 128x170 frames: lzf saved 1.06-1.5x of the space
but made a 548-frame window read 8-11x slower, 330-540 ms instead of 40-50 ms on one core; gzip-1
saved 1.3-2.4x at 17x slower reads). About 3 GB per hour of 16:9 video at short side 128.
Frames change no number, so they are not part of the key:
a set with frames is a superset of the same set without. `featureset.json` records the short side
last asked for under "frames"; each file's own attribute is what counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from extract.io import atomic_write_json, read_json, temp_file_beside

FEATURESET_FILE = "featureset.json"
FAILURES_FILE = "failures.json"
H5_SUFFIX = ".h5"
FRAMES = "frames"
# Frames per HDF5 chunk: a training window (hundreds of frames) reads a few whole chunks
# (32 and 64 read equally fast); no compression, see the module docstring.
FRAME_CHUNK = 32
FRAME_COMPRESSION: str | None = None


class CacheError(ValueError):
    """A feature file or feature set is missing, malformed or inconsistent."""


@dataclass
class FeatureMeta:
    """Attributes stored on every per-video HDF5 file."""

    video_id: str
    fps: float
    stride: int
    source_path: str
    source_fps: float
    duration: float
    num_frames: int
    model: str
    weights: str
    weights_sha256: str
    layers: list[str]
    mgdet_version: str
    # Extra attributes (source size and mtime for resume, decoder versions, ...).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class VideoFeatures:
    """One video's cached features.

    features: (T, C) float32; res4: (T, 1024) float32 or None; timestamps: (T,) float64 seconds.
    """

    meta: FeatureMeta
    features: np.ndarray
    timestamps: np.ndarray
    res4: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        return int(self.features.shape[0])


def feature_timestamps(num_steps: int, stride: int, fps: float) -> np.ndarray:
    """Centre time in seconds of each of `num_steps` features, (T,) float64."""
    return (np.arange(num_steps, dtype=np.float64) + 0.5) * (stride / fps)


def settings_key(name: str, settings: dict[str, Any], digits: int = 10) -> str:
    """A readable key ending in a short hash of `settings` (any JSON-serialisable dict)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(blob).hexdigest()[:digits]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"{safe}-{digest}"


def _check_arrays(path: Path, features: np.ndarray, timestamps: np.ndarray,
                  res4: np.ndarray | None) -> None:
    if features.ndim != 2 or timestamps.shape != (features.shape[0],):
        raise CacheError(
            f"{path}: features must be (T, C) with (T,) timestamps, got {features.shape} "
            f"and {timestamps.shape}"
        )
    if res4 is not None and (res4.ndim != 2 or res4.shape[0] != features.shape[0]):
        raise CacheError(f"{path}: res4 features {res4.shape} do not match {features.shape}")


class VideoWriter:
    """Write one per-video file atomically, frames first as they are decoded, then the features.

    Everything goes to a temporary file in the same folder; `finish` flushes, fsyncs and renames
    it to `path`, so a `kill -9` at any moment leaves either no file or the complete one. Used as
    a context manager, an exception (or leaving without `finish`) deletes the temporary file.
    """

    def __init__(self, path: Path, frames_short_side: int | None = None) -> None:
        self.path = Path(path)
        fd, tmp = temp_file_beside(self.path, ".h5.tmp", prefix=f".{self.path.stem}.")
        os.close(fd)
        self.tmp = Path(tmp)
        self.frames_short_side = frames_short_side
        self.num_frames = 0
        self._f: h5py.File | None = h5py.File(self.tmp, "w")

    def append_frames(self, frames: Any) -> None:
        """Append (n, H, W, 3) uint8 frames (numpy or torch) to the `frames` dataset."""
        assert self._f is not None, "writer already finished"
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise CacheError(f"{self.path}: frames must be (n, H, W, 3) uint8, got "
                             f"{frames.shape} {frames.dtype}")
        if FRAMES not in self._f:
            if self.frames_short_side is None:
                raise CacheError(f"{self.path}: frames given but no frames_short_side")
            h, w = frames.shape[1:3]
            ds = self._f.create_dataset(
                FRAMES, shape=(0, h, w, 3), maxshape=(None, h, w, 3), dtype=np.uint8,
                chunks=(FRAME_CHUNK, h, w, 3), compression=FRAME_COMPRESSION, fletcher32=True,
            )
            ds.attrs["short_side"] = int(self.frames_short_side)
        ds = self._f[FRAMES]
        if frames.shape[1:] != ds.shape[1:]:
            raise CacheError(f"{self.path}: frame size changed from {ds.shape[1:3]} to "
                             f"{frames.shape[1:3]} at frame {ds.shape[0]}")
        n0 = ds.shape[0]
        ds.resize(n0 + frames.shape[0], axis=0)
        ds[n0:] = frames
        self.num_frames = n0 + frames.shape[0]

    def finish(
        self,
        features: np.ndarray,
        timestamps: np.ndarray,
        meta: FeatureMeta,
        res4: np.ndarray | None = None,
        dtype: str = "float16",
        source_pts: np.ndarray | None = None,
    ) -> None:
        """Write the features and attributes and move the file into place (see `write_video`)."""
        assert self._f is not None, "writer already finished"
        features = np.asarray(features)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        _check_arrays(self.path, features, timestamps, res4)
        if FRAMES in self._f and self.num_frames != meta.num_frames:
            raise CacheError(f"{self.path}: {self.num_frames} frames stored but the video has "
                             f"{meta.num_frames}")
        f = self._f
        # fletcher32: a checksum per chunk, verified by HDF5 on every read, so bytes changed on
        # disk fail loudly (read_video, `extract info`) instead of feeding wrong features.
        f.create_dataset("features", data=features.astype(dtype), fletcher32=True)
        if res4 is not None:
            f.create_dataset("features_res4", data=res4.astype(dtype), fletcher32=True)
        f.create_dataset("timestamps", data=timestamps, fletcher32=True)
        if source_pts is not None:
            f.create_dataset("source_pts", data=np.asarray(source_pts, np.float64),
                             fletcher32=True)
        attrs = asdict(meta)
        extra = attrs.pop("extra")
        attrs["layers"] = json.dumps(list(meta.layers))
        attrs["extra"] = json.dumps(extra, sort_keys=True)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.flush()
        f.close()
        self._f = None
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file (nothing at `path` changes)."""
        if self._f is not None:
            self._f.close()
            self._f = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def write_video(
    path: Path,
    features: np.ndarray,
    timestamps: np.ndarray,
    meta: FeatureMeta,
    res4: np.ndarray | None = None,
    dtype: str = "float16",
    source_pts: np.ndarray | None = None,
) -> None:
    """Write one video's features atomically (temporary file, flush, fsync, rename).

    features: (T, C); timestamps: (T,); res4: (T, C4) or None; source_pts: (N,) seconds of the
    source frame shown at each 10 fps output frame, or None. A `kill -9` at any moment leaves
    either no file or the complete file at `path`.
    """
    with VideoWriter(path) as w:  # finish() checks the arrays; a failure removes the temp file
        w.finish(features, timestamps, meta, res4=res4, dtype=dtype, source_pts=source_pts)


@dataclass
class FramesInfo:
    """The stored frames of one per-video file: count, size, and the short side they were
    resized to (0: the source size)."""

    num_frames: int
    height: int
    width: int
    short_side: int


def read_frames_info(path: Path) -> FramesInfo | None:
    """The `frames` dataset's shape and short side, or None when the file holds no frames."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if FRAMES not in f:
                return None
            ds = f[FRAMES]
            if ds.ndim != 4 or ds.shape[3] != 3 or ds.dtype != np.uint8:
                raise CacheError(f"{path}: dataset 'frames' is {ds.shape} {ds.dtype}, not "
                                 "(N, H, W, 3) uint8")
            n, h, w, _ = ds.shape
            return FramesInfo(int(n), int(h), int(w), int(ds.attrs.get("short_side", -1)))
    except OSError as e:
        raise CacheError(f"{path}: not a readable HDF5 feature file ({e})") from e


def read_frames(path: Path, start: int, stop: int) -> np.ndarray:
    """Stored frames [start, stop) of one video: (stop - start, H, W, 3) uint8."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if FRAMES not in f:
                raise CacheError(f"{path}: no stored frames (extract with --save-frames)")
            ds = f[FRAMES]
            if not 0 <= start < stop <= ds.shape[0]:
                raise CacheError(f"{path}: frames [{start}, {stop}) are outside the "
                                 f"{ds.shape[0]} stored frames")
            return ds[start:stop]
    except OSError as e:
        raise CacheError(f"{path}: not a readable HDF5 feature file ({e})") from e


def read_meta(path: Path) -> FeatureMeta:
    """Read only the attributes of a per-video file (cheap: no feature data)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            return _meta_from_attrs(path, f.attrs)
    except OSError as e:
        raise CacheError(f"{path}: not a readable HDF5 feature file ({e})") from e


def _meta_from_attrs(path: Path, attrs: Any) -> FeatureMeta:
    values: dict[str, Any] = {}
    for fld in fields(FeatureMeta):
        if fld.name not in attrs:
            if fld.name == "extra":
                values["extra"] = {}
                continue
            raise CacheError(f"{path}: attribute {fld.name!r} is missing")
        v = attrs[fld.name]
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, np.generic):
            v = v.item()
        values[fld.name] = v
    values["layers"] = json.loads(values["layers"])
    values["extra"] = json.loads(values["extra"]) if isinstance(values["extra"], str) else {}
    values["stride"] = int(values["stride"])
    values["num_frames"] = int(values["num_frames"])
    for k in ("fps", "source_fps", "duration"):
        values[k] = float(values[k])
    return FeatureMeta(**values)


def _read_dataset(path: Path, f: h5py.File, name: str) -> np.ndarray:
    try:
        return f[name][()]
    except OSError as e:  # HDF5 says so when a chunk fails its fletcher32 checksum
        raise CacheError(f"{path}: dataset {name!r} is corrupt (checksum or read error: {e})"
                         ) from e


def read_video(path: Path, with_res4: bool = False) -> VideoFeatures:
    """Read one per-video file and check it is consistent. Features come back as float32."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CacheError(f"{path}: not a readable HDF5 feature file ({e})") from e
    with f:
        meta = _meta_from_attrs(path, f.attrs)
        for name in ("features", "timestamps"):
            if name not in f:
                raise CacheError(f"{path}: dataset {name!r} is missing")
        feats = _read_dataset(path, f, "features").astype(np.float32)
        ts = _read_dataset(path, f, "timestamps").astype(np.float64)
        res4 = None
        if with_res4:
            if "features_res4" not in f:
                raise CacheError(f"{path}: dataset 'features_res4' is missing (extract with res4)")
            res4 = _read_dataset(path, f, "features_res4").astype(np.float32)
    if feats.ndim != 2 or ts.shape != (feats.shape[0],):
        raise CacheError(f"{path}: features {feats.shape} and timestamps {ts.shape} disagree")
    if not np.all(np.isfinite(feats)):
        raise CacheError(f"{path}: features hold NaN or inf")
    return VideoFeatures(meta=meta, features=feats, timestamps=ts, res4=res4)


@dataclass
class FeatureSet:
    """A folder `ROOT/<key>/` of per-video files made with one set of settings."""

    path: Path
    key: str
    settings: dict[str, Any]
    # {"short_side": S} once a run stored frames (`--save-frames`); not part of the key.
    frames: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: Path) -> FeatureSet:
        path = Path(path)
        info = path / FEATURESET_FILE
        if not info.is_file():
            raise CacheError(f"{path}: not a feature set ({FEATURESET_FILE} is missing)")
        try:
            data = json.loads(info.read_text())
            frames = data.get("frames")
            return cls(path=path, key=str(data["key"]), settings=dict(data["settings"]),
                       frames=dict(frames) if frames is not None else None)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CacheError(f"{info}: malformed feature-set description ({e})") from e

    def record_frames(self, short_side: int) -> None:
        """Note in featureset.json that frames are stored at `short_side` (the key stays)."""
        self.frames = {"short_side": int(short_side)}
        atomic_write_json(self.path / FEATURESET_FILE,
                          {"key": self.key, "settings": self.settings, "frames": self.frames})

    @classmethod
    def find(cls, path: Path) -> FeatureSet:
        """`path` itself when it is a feature set, else the single feature set directly under it."""
        path = Path(path)
        if (path / FEATURESET_FILE).is_file():
            return cls.open(path)
        found = sorted(p.parent for p in path.glob(f"*/{FEATURESET_FILE}"))
        if len(found) == 1:
            return cls.open(found[0])
        if not found:
            raise CacheError(f"{path}: no feature set here (no */{FEATURESET_FILE})")
        names = ", ".join(p.name for p in found)
        raise CacheError(f"{path}: holds several feature sets ({names}); name one of them")

    @classmethod
    def create(cls, root: Path, name: str, settings: dict[str, Any]) -> FeatureSet:
        """Open or create the feature set for `settings` under `root` (key from `settings_key`)."""
        key = settings_key(name, settings)
        path = Path(root) / key
        info = path / FEATURESET_FILE
        if info.is_file():
            fs = cls.open(path)
            if fs.settings != json.loads(json.dumps(settings)):
                raise CacheError(f"{info}: settings differ from this run's with the same key")
            return fs
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(info, {"key": key, "settings": settings})
        return cls(path=path, key=key, settings=settings)

    @property
    def fps(self) -> float:
        return float(self.settings["fps"])

    @property
    def stride(self) -> int:
        return int(self.settings["stride"])

    def video_path(self, video_id: str) -> Path:
        return self.path / f"{video_id}{H5_SUFFIX}"

    def video_ids(self) -> list[str]:
        """Ids of the finished videos, sorted (temporary files are not listed)."""
        return sorted(p.stem for p in self.path.glob(f"*{H5_SUFFIX}") if not p.name.startswith("."))

    def has(self, video_id: str) -> bool:
        return self.video_path(video_id).is_file()

    def load(self, video_id: str, with_res4: bool = False) -> VideoFeatures:
        p = self.video_path(video_id)
        if not p.is_file():
            raise CacheError(f"{self.path}: no features for video {video_id!r}")
        return read_video(p, with_res4=with_res4)

    def failures(self) -> dict[str, str]:
        """video id -> why it could not be extracted (failures.json; {} without one)."""
        p = self.path / FAILURES_FILE
        if not p.exists():
            return {}
        data = read_json(p, "failures file", CacheError)
        if not isinstance(data, dict):
            raise CacheError(f"{p}: expected an object of video id -> reason")
        return data
