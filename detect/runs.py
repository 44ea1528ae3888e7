"""A run directory: everything needed to trace and reproduce a training run.

    runs/NAME/config.toml          the resolved config
    runs/NAME/run.json             versions, command, feature set (path, key, settings), annotations
    runs/NAME/metrics.csv          one row per epoch: losses, val metrics, lr, time
    runs/NAME/checkpoints/last.pt  written atomically every epoch (resume point)
    runs/NAME/checkpoints/best.pt  best epoch on `val`, with the tuned score threshold
    runs/NAME/predictions.json, metrics.json, submission/<video>_prediction.csv   by `eval`
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from detect.config import Config, load_config
from extract.cache import CacheError, FeatureSet
from extract.config import config_to_dict, to_toml
from extract.io import RunError, atomic_write_bytes, atomic_write_json, read_json
from extract.pipeline import weights_source
from extract.provenance import versions
from extract.streams import FeatureStreams, component_sets

CONFIG_FILE = "config.toml"
RUN_FILE = "run.json"
LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


def write_run_files(
    out: Path, cfg: Config, feature_set: FeatureSet | FeatureStreams, annotations: Path,
    extra: dict | None = None
) -> None:
    """config.toml and run.json. A run on several feature sets (streams) records each of them
    in "feature_sets", in stream order; "feature_set" is the first one."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CONFIG_FILE, to_toml(config_to_dict(cfg)).encode())
    records = [_set_record(fs) for fs in component_sets(feature_set)]
    info = {
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "feature_set": records[0],
        **({"feature_sets": records} if len(records) > 1 else {}),
        "annotations": str(Path(annotations).resolve()),
        **(extra or {}),
    }
    atomic_write_json(out / RUN_FILE, info)


def _set_record(fs: FeatureSet) -> dict[str, Any]:
    return {
        "path": str(Path(fs.path).resolve()),
        "key": fs.key,
        "settings": fs.settings,
        # What reproduces the features, so predict and stream need only the run.
        **_weights_record(fs),
    }


def _weights_record(fs: FeatureSet) -> dict[str, Any]:
    try:
        source = weights_source(fs)
    except (CacheError, OSError, ValueError):  # a set without readable records: nothing to add
        return {}
    return {} if source is None else {"weights": {"label": source[0], "seed": source[1]}}


def read_run(run: Path) -> tuple[Config, dict[str, Any]]:
    """The resolved config and run.json of a run directory."""
    run = Path(run)
    if not (run / CONFIG_FILE).is_file() or not (run / RUN_FILE).is_file():
        raise RunError(f"{run}: not a run directory ({CONFIG_FILE} or {RUN_FILE} is missing)")
    info = read_json(run / RUN_FILE, "run record")
    if not isinstance(info, dict) or not isinstance(info.get("feature_set"), dict):
        raise RunError(f"{run / RUN_FILE}: not an mgdet run record (no feature_set object)")
    return load_config(run / CONFIG_FILE), info


def recorded_sets(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of the feature sets a run was trained on, in stream order."""
    return list(info.get("feature_sets") or [info["feature_set"]])


def video_set_index(info: dict[str, Any]) -> int:
    """Which of a run's feature sets stage one made from the videos (the RGB stream, whatever
    its place in the stream order; the others are pose): the first whose settings name a frame
    size, else 0."""
    for i, rec in enumerate(recorded_sets(info)):
        if "short_side" in rec.get("settings", {}):
            return i
    return 0


def check_feature_set(run: Path, info: dict[str, Any], fs: FeatureSet | FeatureStreams) -> None:
    """RunError unless `fs` is the feature set (or the streams, in order) the run was trained on
    (by key)."""
    trained = [r["key"] for r in recorded_sets(info)]
    given = [s.key for s in component_sets(fs)]
    if given != trained:
        what = "feature set" if len(trained) == 1 else "feature sets"
        raise RunError(f"{run}: run was trained on {what} {' + '.join(trained)!r}, not "
                       f"{' + '.join(given)!r} ({fs.path})")


def run_feature_set(run: Path, info: dict[str, Any]) -> FeatureSet | FeatureStreams:
    """The feature set (or streams) a run was trained on, checked to be unchanged since."""
    sets = [FeatureSet.open(Path(r["path"])) for r in recorded_sets(info)]
    fs = sets[0] if len(sets) == 1 else FeatureStreams(sets)
    check_feature_set(run, info, fs)
    return fs


def is_multi_stream(info: dict[str, Any]) -> bool:
    """Whether the run was trained on several feature sets (e.g. RGB + pose)."""
    return len(recorded_sets(info)) > 1


def score_threshold(cfg: Config, checkpoint: dict[str, Any], run: Path | str = "run") -> float:
    """The score threshold a run applies: for a causal run online.threshold when set (>= 0);
    eval.score_threshold when set (>= 0), else the one
    tuned on `val` and stored in best.pt (never tuned on `test`) once training has finished;
    RunError for a run stopped before that."""
    if cfg.online.causal and cfg.online.threshold >= 0:  # a causal run's emission threshold
        return cfg.online.threshold
    if cfg.eval.score_threshold >= 0:
        return cfg.eval.score_threshold
    if "threshold" not in checkpoint:
        raise RunError(
            f"{run}: {BEST} has no tuned score threshold yet: training stopped before its last "
            "epoch. Finish it (`python -m detect train ... --resume`) or set "
            "eval.score_threshold")
    return checkpoint["threshold"]


def features_provenance(info: dict[str, Any]) -> list[tuple[str, str]]:
    """What made a run's features, as (name, value) rows for people: backbone, weights and their
    digest, frame rate, stride, resolution, layers and dtype (run.json's RGB feature set)."""
    fs = recorded_sets(info)[video_set_index(info)]
    s = fs.get("settings") or {}
    w = fs.get("weights") or {}
    weights = str(w.get("label") or s.get("weights") or "?")
    if weights == "random" or s.get("weights") == "random":
        weights = f"random (seed {w.get('seed', 0)})"
    digest = str(s.get("weights_sha256") or "")
    size = s.get("crop") or s.get("short_side")
    rows = [
        ("backbone", str(s.get("model", "?"))),
        ("weights", weights),
        ("weights sha256", digest[:16] + "..." if digest else "-"),
        ("frames", f"{s['fps']:g} fps" if "fps" in s else "?"),
        ("feature stride", f"{s['stride']} frames" if "stride" in s else "?"),
        ("resolution", f"{size} px" if size else "as decoded"),
        ("layers", ", ".join(s.get("layers", [])) or "-"),
        ("dtype", str(s.get("dtype", "-"))),
        ("feature set", str(fs.get("key", "?"))),
    ]
    return rows


def random_weights_warning(info: dict[str, Any]) -> str | None:
    """One loud line when a run's features came from a randomly initialised backbone, else None:
    its scores then say nothing about real gestures, whatever they look like."""
    fs = recorded_sets(info)[video_set_index(info)]
    label = (fs.get("weights") or {}).get("label")
    if label != "random" and (fs.get("settings") or {}).get("weights") != "random":
        return None
    return ("!! RANDOM WEIGHTS: this run's features come from a randomly initialised I3D, so its "
            "detections and scores say nothing about real gestures; extract with --weights "
            "kinetics and train again for real ones")
