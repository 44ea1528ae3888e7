"""Stage two end to end on synthetic feature sets: learning, resume, divergence, eval outputs."""

import json

import pytest
import torch

from detect.config import load_config
from detect.data.annotations import load_annotations
from detect.data.windows import WindowDataset
from detect.evaluation.evaluate import evaluate_run
from detect.evaluation.metrics import score_files
from detect.evaluation.submission import read_miga_csv
from detect.runs import BEST, LAST
from detect.synthetic.features import synth_feature_set
from detect.train.loop import TrainingDiverged, train
from extract.io import RunError, load_checkpoint, read_metrics_rows


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    fs, ann = synth_feature_set(out, videos=10, classes=3, seed=1, noise=0.0, dim=16,
                                min_duration_s=40, max_duration_s=60)
    return fs, ann


TINY = [
    "data.window=32", "model.hidden_dim=32", "model.num_queries=8", "model.num_points=6",
    "model.num_layers=2", "model.num_heads=2", "model.ffn_dim=64", "model.mix_dim=8",
    "model.dropout=0.1", "train.batch_size=4", "train.lr=1e-3", "train.epochs=3",
    "train.device=cpu",
]


@pytest.mark.parametrize("ema", [0.0, 0.99], ids=["raw", "ema"])
def test_resume_reaches_the_same_result(tiny_set, tmp_path, ema):
    fs, ann = tiny_set
    cfg = load_config(None, [*TINY, f"train.ema={ema}"])
    train(cfg, fs.path, ann, tmp_path / "full", progress=False)
    train(cfg, fs.path, ann, tmp_path / "cut", progress=False, max_epochs=1)
    assert load_checkpoint(tmp_path / "cut" / LAST)["epoch"] == 0
    train(cfg, fs.path, ann, tmp_path / "cut", resume=True, progress=False)
    full, cut = read_metrics_rows(tmp_path / "full"), read_metrics_rows(tmp_path / "cut")
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in full] == [
        {k: v for k, v in r.items() if k not in drop} for r in cut
    ]
    a, b = load_checkpoint(tmp_path / "full" / BEST), load_checkpoint(tmp_path / "cut" / BEST)
    assert a["threshold"] == b["threshold"] and a["best_epoch"] == b["best_epoch"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    last = load_checkpoint(tmp_path / "cut" / LAST)
    if ema:
        # "model" holds the averaged weights that were evaluated; the raw ones resume training.
        w = "query_points"
        assert last["ema"]["steps"] > 0
        torch.testing.assert_close(last["model"][w], last["ema"]["module"][w], rtol=0, atol=0)
        assert not torch.equal(last["model"][w], last["raw_model"][w])
    else:
        assert "ema" not in last and "raw_model" not in last


def test_refuses_existing_run_and_mismatched_features(tiny_set, tmp_path):
    fs, ann = tiny_set
    cfg = load_config(None, [*TINY, "train.epochs=1"])
    train(cfg, fs.path, ann, tmp_path / "r", progress=False)
    with pytest.raises(RunError, match="already there"):
        train(cfg, fs.path, ann, tmp_path / "r", progress=False)
    other = load_config(None, [*TINY, "train.epochs=2"])
    with pytest.raises(RunError, match="differs"):
        train(other, fs.path, ann, tmp_path / "r", resume=True, progress=False)
    with pytest.raises(ValueError, match="stride"):
        train(load_config(None, [*TINY, "data.stride=8"]), fs.path, ann, tmp_path / "s",
              progress=False)


def test_divergence_stops_with_a_clear_message_and_keeps_last_good(tiny_set, tmp_path):
    fs, ann = tiny_set
    # Epoch 1 trains normally; the schedule then multiplies the lr by 1e30.
    cfg = load_config(None, [*TINY, "train.lr_step=1", "train.lr_gamma=1e30",
                             "train.clip_grad=0.0"])
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        train(cfg, fs.path, ann, tmp_path / "nan", progress=False)
    ck = load_checkpoint(tmp_path / "nan" / LAST)
    assert ck["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_small_model_learns_clean_synthetic_set(tmp_path):
    fs, ann = synth_feature_set(tmp_path / "d", videos=16, classes=4, seed=0, noise=0.0, dim=32,
                                min_duration_s=60, max_duration_s=90)
    cfg = load_config("configs/synthetic-small.toml", ["train.device=cpu"])
    run = tmp_path / "run"
    train(cfg, fs.path, ann, run, progress=False)
    metrics = evaluate_run(run, "test", progress=False)
    assert metrics["f1_strict"] >= 0.8, metrics
    # The written predictions re-score to the same figures with the standalone scorer.
    again = score_files(run / "predictions.json", ann, "test")
    for k in ("f1_miga", "f1_strict"):
        assert again[k] == pytest.approx(metrics[k])
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["subset"] == "test" and saved["f1_strict"] == pytest.approx(metrics["f1_strict"])
    preds = json.loads((run / "predictions.json").read_text())["results"]
    rows = sum(len(read_miga_csv(p)) for p in (run / "submission").glob("*.csv"))
    assert rows == sum(len(v) for v in preds.values()) > 0


@pytest.mark.slow
def test_two_process_ddp_training_on_cpu(tiny_set, tmp_path):
    """The README's `torchrun --nproc_per_node 2 -m detect train ...`, run as written (gloo)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    fs, ann = tiny_set
    repo = Path(__file__).resolve().parents[1]
    args = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node",
            "2", "-m", "detect", "train", "--config",
            str(repo / "configs/synthetic-small.toml"), "--features", str(fs.path),
            "--annotations", str(ann), "--out", str(tmp_path / "ddp")]
    for kv in [*TINY, "train.epochs=2"]:
        args += ["--set", kv]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run(args, cwd=repo, env=dict(env, PYTHONPATH=str(repo)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("best f1_miga on val") == 1  # rank 0 alone reports
    # A log, not a terminal: one line per epoch, no bar redraws.
    assert "\r" not in proc.stdout + proc.stderr and "\x1b[" not in proc.stdout + proc.stderr
    assert [ln.split(":")[0] for ln in proc.stdout.splitlines() if ln.startswith("epoch ")] == [
        "epoch 1/2", "epoch 2/2"]
    rows = read_metrics_rows(tmp_path / "ddp")  # rank 0 alone writes the run files
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # Each rank trained on its half of the windows.
    full = len(WindowDataset(fs, load_annotations(ann), "train", load_config(None, TINY).data,
                             train=True))
    assert int(rows[0]["train_windows"]) == -(-full // 2)
    assert load_checkpoint(tmp_path / "ddp" / BEST)["threshold"] >= 0


def test_feature_stats_match_numpy_and_are_stored_in_the_checkpoint(tiny_set, tmp_path):
    import numpy as np

    from detect.train.loop import feature_stats

    fs, ann = tiny_set
    cfg = load_config(None, [*TINY, "train.epochs=1"])
    ds = WindowDataset(fs, load_annotations(ann), "train", cfg.data, train=True)
    mean, std, m4, s4 = feature_stats(ds)
    allf = np.concatenate([fs.load(v).features for v in ds.video_ids]).astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), allf.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), allf.std(0, ddof=1), rtol=1e-5, atol=1e-6)
    assert m4 is None and s4 is None
    train(cfg, fs.path, ann, tmp_path / "r", progress=False)
    ck = load_checkpoint(tmp_path / "r" / BEST)
    torch.testing.assert_close(ck["model"]["input_mean"], mean)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_every_written_file_follows_the_umask(tmp_path, umask, mode):
    """Feature sets, annotations, run files and checkpoints are shared by a team: the atomic
    writer's temporary files must not stay private (mkstemp makes them 0600)."""
    import os

    old = os.umask(umask)
    try:
        fs, ann = synth_feature_set(tmp_path / "synth", videos=4, classes=2, seed=3, noise=0.0,
                                    dim=8, min_duration_s=20, max_duration_s=30)
        cfg = load_config(None, [*TINY, "train.epochs=1"])
        train(cfg, fs.path, ann, tmp_path / "run", progress=False)
        evaluate_run(tmp_path / "run", "test", progress=False)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".h5" for p in files) and any(p.suffix == ".pt" for p in files)
    assert any(p.name == "annotations.json" for p in files)
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files
             if p.stat().st_mode & 0o777 != mode}
    assert not wrong, wrong
