"""`detect ablate`: every config on one cache, a table, skip-or-resume after a kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detect.config import load_config
from detect.experiments.ablate import Ablation, changed_keys, run_ablation
from detect.runs import LAST
from detect.synthetic.features import synth_feature_set
from extract.io import read_metrics_rows

TINY_TOML = """
name = "tiny"
[data]
window = 32
[model]
hidden_dim = 32
num_queries = 8
num_points = 6
num_layers = 2
num_heads = 2
ffn_dim = 64
mix_dim = 8
[model.mamba]
backend = "torch"
[train]
batch_size = 4
lr = 1e-3
epochs = {epochs}
device = "cpu"
"""


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return synth_feature_set(out, videos=10, classes=3, seed=1, noise=0.0, dim=16,
                             min_duration_s=40, max_duration_s=60)


def _configs(root: Path, epochs: int) -> Path:
    root.mkdir(parents=True)
    (root / "tiny.toml").write_text(TINY_TOML.format(epochs=epochs))
    d = root / "ablations"
    d.mkdir()
    (d / "default.toml").write_text('base = "../tiny.toml"\nname = "tiny-default"\n')
    (d / "l1.toml").write_text('base = "../tiny.toml"\nname = "tiny-l1"\n[model]\nnum_layers = 1\n')
    return d


def test_changed_keys_are_the_differences_from_the_base(tmp_path):
    d = _configs(tmp_path / "c", 2)
    assert changed_keys(d / "default.toml", load_config(d / "default.toml")) == {}
    assert changed_keys(d / "l1.toml", load_config(d / "l1.toml")) == {"model.num_layers": 1}
    # Without a base, the differences from the defaults.
    got = changed_keys(tmp_path / "c" / "tiny.toml", load_config(tmp_path / "c" / "tiny.toml"))
    assert got["model.hidden_dim"] == 32 and got["train.epochs"] == 2 and "name" not in got


def test_ablation_trains_every_config_writes_the_table_and_skips_done_runs(tiny_set, tmp_path):
    fs, ann = tiny_set
    d = _configs(tmp_path / "c", 2)
    out = tmp_path / "out"
    ab = Ablation(d, fs.path, ann, out, baselines=("probe",))
    rows = run_ablation(ab, progress=False)
    assert [r["config"] for r in rows] == ["default", "l1", "baseline-probe"]
    assert all(r["status"] == "ok" for r in rows), rows
    assert rows[0]["changed"] == "(base)" and rows[1]["changed"] == "model.num_layers=1"
    for r in rows[:2]:
        m = json.loads((out / r["config"] / "metrics.json").read_text())
        assert (r["f1_strict"], r["map"], r["params"]) == (m["f1_strict"], m["map"], m["params"])
        assert r["s_per_epoch"] > 0 and len(read_metrics_rows(out / r["config"])) == 2
    assert rows[1]["params"] < rows[0]["params"]  # one decoder layer fewer
    with open(out / "ablation.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["config"] for t in table] == ["default", "l1", "baseline-probe"]
    assert float(table[1]["f1_strict"]) == pytest.approx(rows[1]["f1_strict"])
    md = (out / "ablation.md").read_text()
    assert ("| config | changed keys | f1_miga | f1_strict | mAP | R <0.8s | params | s/epoch |"
            in md)
    # The recall of the shortest ground truths is the metrics.json figure.
    short = json.loads((out / "l1" / "metrics.json").read_text())["recall_by_duration"]["<0.8s"]
    assert rows[1]["recall_short"] == short["recall"]
    assert json.loads((out / "ablation.json").read_text())["feature_set"]["key"] == fs.key

    stamp = [(out / n / "metrics.json").stat().st_mtime_ns for n in ("default", "l1")]
    again = run_ablation(ab, progress=False)
    assert [(out / n / "metrics.json").stat().st_mtime_ns for n in ("default", "l1")] == stamp
    assert [r["f1_strict"] for r in again] == [r["f1_strict"] for r in rows]

    # A config edited after its run was evaluated is reported, not silently mixed in.
    (d / "l1.toml").write_text('base = "../tiny.toml"\nname = "tiny-l1"\n[model]\nnum_layers = 3\n')
    edited = run_ablation(ab, progress=False)
    assert edited[0]["status"] == "ok" and "differs" in edited[1]["status"]
    assert "l1" in edited[1]["status"]


def test_ablation_resumes_after_kill_9_without_redoing_finished_epochs(tiny_set, tmp_path):
    fs, ann = tiny_set
    d = _configs(tmp_path / "c", 12)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "detect", "ablate", "--configs", str(d), "--features",
           str(fs.path), "--annotations", str(ann), "--out", str(out), "--baselines", ""]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "default"
    deadline = time.time() + 300
    while time.time() < deadline and len(read_metrics_rows(first)) < 3:
        assert proc.poll() is None, "ablate ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_metrics_rows(first)
    assert 3 <= len(before) < 12 and (first / LAST).is_file()
    assert not (first / "metrics.json").exists()

    rows = run_ablation(Ablation(d, fs.path, ann, out), progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    after = read_metrics_rows(first)
    assert [int(r["epoch"]) for r in after] == list(range(1, 13))
    # Finished epochs were kept as they were, not trained again; the kill may land between an
    # epoch's metrics row and its checkpoint, so the last one may be redone (identically).
    assert after[: len(before) - 1] == before[:-1]
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert drop(after[len(before) - 1]) == drop(before[-1])


def test_the_short_recall_column_is_the_shortest_bin_whatever_the_key_order():
    from detect.experiments.ablate import _headline

    # metrics.json is written with sorted keys, so "<0.8s" is not the first bin there.
    bins = {"0.8-2s": {"recall": 0.9}, "2-4s": {"recall": 0.8}, "<0.8s": {"recall": 0.2},
            ">=4s": {"recall": 0.7}}
    m = {"f1_miga": 0.5, "f1_strict": 0.4, "map": 0.1, "recall_by_duration": bins}
    assert _headline(m) == {"f1_miga": 0.5, "f1_strict": 0.4, "map": 0.1, "recall_short": 0.2}
    del m["recall_by_duration"]  # a run evaluated before the metric existed
    assert _headline(m)["recall_short"] is None
