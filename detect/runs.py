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

CONFIG_FILE = "config.toml"
RUN_FILE = "run.json"
LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


def write_run_files(
    out: Path, cfg: Config, feature_set: FeatureSet, annotations: Path, extra: dict | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CONFIG_FILE, to_toml(config_to_dict(cfg)).encode())
    info = {
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "feature_set": {
            "path": str(Path(feature_set.path).resolve()),
            "key": feature_set.key,
            "settings": feature_set.settings,
            # What reproduces the features, so predict and stream need only the run.
            **_weights_record(feature_set),
        },
        "annotations": str(Path(annotations).resolve()),
        **(extra or {}),
    }
    atomic_write_json(out / RUN_FILE, info)


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


def check_feature_set(run: Path, info: dict[str, Any], fs: FeatureSet) -> None:
    """RunError unless `fs` is the feature set the run was trained on (by key)."""
    trained = info["feature_set"]["key"]
    if fs.key != trained:
        raise RunError(f"{run}: run was trained on feature set {trained!r}, not {fs.key!r} "
                       f"({fs.path})")


def run_feature_set(run: Path, info: dict[str, Any]) -> FeatureSet:
    """The feature set a run was trained on, checked to be unchanged since."""
    fs = FeatureSet.open(Path(info["feature_set"]["path"]))
    check_feature_set(run, info, fs)
    return fs


def score_threshold(cfg: Config, checkpoint: dict[str, Any], run: Path | str = "run") -> float:
    """The score threshold a run applies: eval.score_threshold when set (>= 0), else the one
    tuned on `val` and stored in best.pt (never tuned on `test`) once training has finished;
    RunError for a run stopped before that."""
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
    digest, frame rate, stride, resolution, layers and dtype (run.json's feature_set)."""
    fs = info["feature_set"]
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
    fs = info["feature_set"]
    label = (fs.get("weights") or {}).get("label")
    if label != "random" and (fs.get("settings") or {}).get("weights") != "random":
        return None
    return ("!! RANDOM WEIGHTS: this run's features come from a randomly initialised I3D, so its "
            "detections and scores say nothing about real gestures; extract with --weights "
            "kinetics and train again for real ones")
