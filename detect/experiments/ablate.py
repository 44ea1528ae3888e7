"""Ablations over one feature cache (`python -m detect ablate`, `make ablate`).

Every `*.toml` in a folder is trained on the same feature set (nothing is re-extracted) into
OUT/<config stem>/, then evaluated on `test`; the baselines (detect.experiments.baselines) go to
OUT/baseline-<kind>/. A killed ablation picks up where it stopped: a run already evaluated with the
same config is kept, a run with a last.pt is resumed, anything else starts over. The table is
rewritten after every run:

    OUT/ablation.md, OUT/ablation.csv   config, changed keys, f1_miga, f1_strict, mAP, recall of
                                        ground truths under 0.8 s, params,
                                        s/epoch (mean wall time per epoch, val evaluation included)
    OUT/ablation.json                   the same rows, with the feature set, versions and settings

"Changed keys" are the resolved config's differences from its `base` config (or from the
defaults when it has none), `name` aside.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detect.config import Config, load_config
from detect.evaluation.metrics import DURATION_BINS, duration_labels
from detect.runs import LAST, read_run
from extract.cache import FeatureSet
from extract.config import ConfigError, config_to_dict
from extract.io import RunError, atomic_write_bytes, atomic_write_json, read_metrics_rows
from extract.progress import progress as progress_bar
from extract.provenance import versions
from extract.streams import FeatureStreams, open_features

COLUMNS = ("config", "changed", "f1_miga", "f1_strict", "map", "recall_short", "params",
           "s_per_epoch", "status")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(path: Path, cfg: Config) -> dict[str, Any]:
    """The keys of `cfg` (loaded from `path`) whose values differ from its base config's."""
    base_rel = _base_of(path)
    base = load_config(path.parent / base_rel) if base_rel else Config()
    ours, theirs = flatten(config_to_dict(cfg)), flatten(config_to_dict(base))
    return {k: v for k, v in ours.items() if k != "name" and theirs.get(k) != v}


def _base_of(path: Path) -> str | None:
    import tomllib

    try:
        base = tomllib.loads(path.read_text()).get("base")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from e
    return base if isinstance(base, str) else None


def _fmt_changed(changed: dict[str, Any]) -> str:
    return "; ".join(f"{k}={json.dumps(v)}" for k, v in changed.items()) or "(base)"


@dataclass
class Ablation:
    configs: Path
    features: Path | list[Path]  # several: streams of the same videos (RGB, pose)
    annotations: Path
    out: Path
    baselines: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()  # --set applied to every config


def _is_evaluated(run: Path, cfg: Config) -> bool:
    if not (run / "metrics.json").is_file():
        return False
    old, _ = read_run(run)
    if config_to_dict(old) != config_to_dict(cfg):
        raise RunError(f"{run}: evaluated with a config that differs from the ablation's; move "
                       "it away or choose another --out")
    return json.loads((run / "metrics.json").read_text()).get("subset") == "test"


def _run_config(path: Path, cfg: Config, ab: Ablation, progress: bool) -> dict[str, Any]:
    from detect.evaluation.evaluate import evaluate_run
    from detect.train.loop import train

    run = ab.out / path.stem
    if not _is_evaluated(run, cfg):
        train(cfg, ab.features, ab.annotations, run, resume=(run / LAST).is_file(),
              progress=progress)
        evaluate_run(run, "test", progress=progress)
    m = json.loads((run / "metrics.json").read_text())
    secs = [float(r["seconds"]) for r in read_metrics_rows(run) if r.get("seconds")]
    return _headline(m) | {"params": m.get("params"),
                           "s_per_epoch": sum(secs) / len(secs) if secs else None}


def _run_baseline(kind: str, ab: Ablation, progress: bool) -> dict[str, Any]:
    from detect.experiments.baselines import BaselineConfig, run_baseline

    out = ab.out / f"baseline-{kind}"
    if (out / "metrics.json").is_file():
        m = json.loads((out / "metrics.json").read_text())
    else:
        m = run_baseline(BaselineConfig(kind=kind), ab.features, ab.annotations, out, progress)
    return _headline(m) | {"params": m["params"], "s_per_epoch": None}


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    """The table's figures of a metrics.json: F1s, mAP and the recall of the shortest ground
    truths (the first duration bin; None in metrics written before it existed). The bins are
    looked up by label: metrics.json is written with sorted keys."""
    short = m.get("recall_by_duration", {}).get(duration_labels(DURATION_BINS)[0])
    return {"f1_miga": m["f1_miga"], "f1_strict": m["f1_strict"], "map": m["map"],
            "recall_short": short["recall"] if short else None}


def run_ablation(ab: Ablation, progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate every config in `ab.configs`, then the baselines; returns the rows
    (a failed config has its error in "status" and the rest still run)."""
    paths = sorted(Path(ab.configs).glob("*.toml"))
    if not paths:
        raise ConfigError(f"{ab.configs}: no *.toml configs to ablate")
    fs = open_features(ab.features)
    # Load every config before training any, so a typo in the last one fails in seconds.
    loaded = []
    for p in paths:
        cfg = load_config(p, list(ab.overrides))
        loaded.append((p, cfg, changed_keys(p, load_config(p))))
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[str, Any]] = [("config", x) for x in loaded]
    jobs += [("baseline", k) for k in ab.baselines]
    for kind, job in progress_bar(jobs, desc="ablation", enabled=progress, log_every_s=0):
        if kind == "config":
            p, cfg, changed = job
            row: dict[str, Any] = {"config": p.stem, "changed": _fmt_changed(changed)}
            try:
                row.update(_run_config(p, cfg, ab, progress), status="ok")
            except (RunError, ConfigError, ValueError, RuntimeError) as e:
                row["status"] = f"failed: {e}"
        else:
            row = {"config": f"baseline-{job}",
                   "changed": f"{job} baseline (detect.experiments.baselines)"}
            try:
                row.update(_run_baseline(job, ab, progress), status="ok")
            except (ValueError, RuntimeError) as e:
                row["status"] = f"failed: {e}"
        rows.append(row)
        write_table(ab, fs, rows)
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_markdown(rows: list[dict[str, Any]]) -> str:
    head = ["config", "changed keys", "f1_miga", "f1_strict", "mAP", "R <0.8s", "params",
            "s/epoch", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_cell(r.get(c)).replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(ab: Ablation, fs: FeatureSet | FeatureStreams, rows: list[dict[str, Any]]) -> None:
    ab.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(ab.out / "ablation.md", format_markdown(rows).encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
    w.writeheader()
    w.writerows([{c: r.get(c, "") for c in COLUMNS} for r in rows])
    atomic_write_bytes(ab.out / "ablation.csv", buf.getvalue().encode())
    atomic_write_json(ab.out / "ablation.json", {
        "rows": rows,
        "configs": str(Path(ab.configs).resolve()),
        "feature_set": {"path": str(Path(fs.path).resolve()), "key": fs.key},
        "annotations": str(Path(ab.annotations).resolve()),
        "overrides": list(ab.overrides),
        "versions": versions(),
    })
