"""A run directory: everything needed to trace and reproduce a training run.

    runs/NAME/config.toml          the resolved config
    runs/NAME/run.json             versions, command, feature set (path, key, settings), annotations
    runs/NAME/metrics.csv          one row per epoch: losses, val metrics, lr, time
    runs/NAME/checkpoints/last.pt  written atomically every epoch (resume point)
    runs/NAME/checkpoints/best.pt  best epoch on `val`, with the tuned score threshold
    runs/NAME/predictions.json, metrics.json, submission/<video>.csv   written by `eval`
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from detect.config import Config, config_to_dict, load_config, to_toml
from extract.cache import FeatureSet, atomic_write_bytes, atomic_write_json, atomic_writer
from extract.provenance import versions

CONFIG_FILE = "config.toml"
RUN_FILE = "run.json"
METRICS_CSV = "metrics.csv"
LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


class RunError(RuntimeError):
    """A run directory is missing, incomplete, or does not match what was asked."""


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
        },
        "annotations": str(Path(annotations).resolve()),
        **(extra or {}),
    }
    atomic_write_json(out / RUN_FILE, info)


def read_run(run: Path) -> tuple[Config, dict[str, Any]]:
    """The resolved config and run.json of a run directory."""
    run = Path(run)
    if not (run / CONFIG_FILE).is_file() or not (run / RUN_FILE).is_file():
        raise RunError(f"{run}: not a run directory ({CONFIG_FILE} or {RUN_FILE} is missing)")
    return load_config(run / CONFIG_FILE), json.loads((run / RUN_FILE).read_text())


def append_metrics_row(out: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row to metrics.csv (the header grows if new columns appear)."""
    path = out / METRICS_CSV
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    rows = [r for r in rows if str(r.get("epoch")) != str(row["epoch"])]  # a resumed epoch
    rows.append({k: v for k, v in row.items()})
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def read_metrics_rows(run: Path) -> list[dict[str, str]]:
    path = Path(run) / METRICS_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save atomically: a killed run never leaves a partial checkpoint."""
    with atomic_writer(Path(path)) as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a broken file
        raise RunError(f"{path}: not a readable mgdet checkpoint ({e})") from e
