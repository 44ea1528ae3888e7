"""Each video's OpenPose keypoints read once (JSON folders are slow) and kept as one `.npy`.

`CACHE/<root name>-<hash of the root's path>/<video id>.npy` holds (T, 137, 3) float32, written
atomically, and `<video id>.json` names the source and its size and modification time, so a changed
source is read again (and two datasets with the same video ids never share entries). One unreadable
skeleton is reported and skipped: its clips drop out, the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classify.data.clips import ClipIndex
from classify.data.openpose import read_keypoints
from detect.data.converters.common import DatasetError
from extract.io import atomic_write_bytes, atomic_write_json
from extract.progress import progress as progress_bar


def _stamp(path: Path) -> dict:
    files = sorted(path.glob("*_keypoints.json")) if path.is_dir() else [path]
    return {"source": str(path.resolve()), "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "mtime": max((f.stat().st_mtime for f in files), default=0.0)}


@dataclass
class Skeletons:
    keypoints: dict[str, np.ndarray] = field(default_factory=dict)  # video -> (T, 137, 3)
    failed: dict[str, str] = field(default_factory=dict)  # video -> message
    read: int = 0  # read from source this call (the rest came from the cache)


def load_skeletons(index: ClipIndex, cache: Path, progress: bool = True) -> Skeletons:
    """Keypoints of every video of `index` that has clips, from `cache` or its source."""
    root = Path(index.root).resolve()
    cache = Path(cache) / f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"
    cache.mkdir(parents=True, exist_ok=True)
    out = Skeletons()
    videos = sorted({c.video for c in index.clips})
    for vid in progress_bar(videos, desc="skeletons", unit="video", enabled=progress):
        src = index.skeletons.get(vid)
        if src is None:
            out.failed[vid] = f"{index.root}: no skeleton for video {vid}"
            continue
        npy, meta = cache / f"{vid}.npy", cache / f"{vid}.json"
        stamp = _stamp(src)
        if npy.is_file() and meta.is_file() and json.loads(meta.read_text()) == stamp:
            out.keypoints[vid] = np.load(npy)
            continue
        try:
            kp = read_keypoints(src)
        except DatasetError as e:
            out.failed[vid] = str(e)
            continue
        buf = io.BytesIO()
        np.save(buf, kp)
        atomic_write_bytes(npy, buf.getvalue())
        atomic_write_json(meta, stamp)
        out.keypoints[vid] = kp
        out.read += 1
    return out


def check_clip_frames(index: ClipIndex, skeletons: Skeletons) -> list[str]:
    """Drop (into `skeletons.failed`) videos with a clip past their skeleton's last frame;
    returns the messages."""
    msgs = []
    for c in index.clips:
        kp = skeletons.keypoints.get(c.video)
        if kp is not None and c.end >= len(kp):
            msg = (f"{index.skeletons[c.video]}: {len(kp)} frames, but clip {c.key} (label row "
                   f"{c.row}) ends at frame {c.end}")
            skeletons.failed[c.video] = msg
            del skeletons.keypoints[c.video]
            msgs.append(msg)
    return msgs
