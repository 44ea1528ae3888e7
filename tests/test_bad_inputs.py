"""A table of bad inputs across the three CLIs: each gives the documented exit code (2 for usage
errors and bad input, 1 for failures during work), a message naming the file, key or line, no
traceback, and leaves nothing partial behind.

The commands run in this process through each CLI's own entry point (`main()`, with its error
handling), so the table stays fast.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from detect.runs import write_run_files
from detect.synthetic.features import synth_feature_set
from tests.videos import write_noise_video

CFG = "configs/demo.toml"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: a small feature set and its annotations, a run folder without weights,
    and bad files of every kind."""
    root = tmp_path_factory.mktemp("bad")
    fs, ann = synth_feature_set(root / "synth", videos=4, classes=2, dim=8,
                                min_duration_s=20, max_duration_s=30)
    (root / "fs").symlink_to(fs.path)
    (root / "ann.json").symlink_to(ann)
    (root / "binary.json").write_bytes(bytes(range(128, 256)))
    (root / "broken.json").write_text('{"classes": [')
    (root / "a_file").write_text("not a folder\n")
    (root / "notes").mkdir()
    (root / "notes" / "thesis.tex").write_text("precious\n")
    (root / "videos").mkdir()
    write_noise_video(root / "videos" / "clip.mp4", 1.0, fps=10)
    bad_run = root / "bad_run"
    write_run_files(bad_run, __import__("detect.config").config.load_config(CFG), fs, ann)
    (bad_run / "run.json").write_text("{not json")
    bad_fs = root / "bad_fs"
    shutil.copytree(fs.path, bad_fs)
    (bad_fs / "failures.json").write_text("[1, 2")
    (root / "preds.json").write_text('{"results": {"nope": []}}')
    (root / "bad.toml").write_text("[train]\nepochs = \n")
    return root


def cli(module: str, args: list[str]) -> None:
    if module == "extract":
        from extract.__main__ import app as entry
    elif module == "detect":
        from detect.__main__ import main as entry
    else:
        from classify.__main__ import main as entry
    sys.argv = [module, *args]
    entry()


T = ["train", "--config", CFG, "--features", "{ws}/fs", "--annotations", "{ws}/ann.json",
     "--out", "{ws}/run"]

# (module, arguments, exit code, fragment of the message)
ROWS = [
    ("extract", ["features", "{ws}/missing.mp4", "--out", "{ws}/out"], 2,
     "missing.mp4: no such file or folder"),
    ("extract", ["features", "{ws}/videos", "--out", "{ws}/out", "--device", "bogus"], 2,
     "unknown device 'bogus'"),
    ("extract", ["features", "{ws}/videos", "--out", "{ws}/out", "--stride", "3"], 2,
     "stride must be 2, 4 or 8"),
    ("extract", ["features", "{ws}/videos", "--out", "{ws}/out", "--weights", "{ws}/w.pyth"], 2,
     "w.pyth: checkpoint file does not exist"),
    ("extract", ["features", "{ws}/videos", "--out", "{ws}/out", "--weights", "{ws}/a_file"], 2,
     "a_file: not a readable torch checkpoint"),
    ("extract", ["features", "{ws}/notes", "--out", "{ws}/out", "--dataset", "ucf"], 2,
     "--dataset must be smg or imigue"),
    ("extract", ["info", "{ws}/notes"], 2, "notes: not a feature set"),
    ("extract", ["info", "{ws}/bad_fs"], 2, "failures.json: not valid JSON"),
    ("detect", [*T[:2], "{ws}/nope.toml", *T[3:]], 2, "nope.toml: config file not found"),
    ("detect", [*T[:2], "{ws}/bad.toml", *T[3:]], 2, "bad.toml"),
    ("detect", [*T, "--set", "train.select_metric=f1"], 2,
     "train.select_metric: 'f1' is not one of f1_miga, f1_strict, map"),
    ("detect", [*T, "--set", "train.lr_step=0"], 2, "train.lr_step: must be >= 1"),
    ("detect", [*T, "--set", "train.epochs=0"], 2, "train.epochs: must be >= 1"),
    ("detect", [*T, "--set", "train.batch_size=0"], 2, "train.batch_size: must be >= 1"),
    ("detect", [*T, "--set", "train.lr=-1e-4"], 2, "train.lr: must be > 0"),
    ("detect", [*T, "--set", "data.train_overlap=1"], 2, "data.train_overlap: must be in [0, 1)"),
    ("detect", [*T, "--set", "data.window=1"], 2, "data.window: must be >= 2"),
    ("detect", [*T, "--set", "eval.nms_iou=0"], 2, "eval.nms_iou: must be in (0, 1]"),
    ("detect", [*T, "--set", "model.num_heads=3"], 2, "must be divisible by model.num_heads"),
    ("detect", [*T, "--set", "model.mixing=huge"], 2, "model.mixing: 'huge' is not one of"),
    ("detect", [*T, "--set", "model.mamba.backend=gpu"], 2, "model.mamba.backend"),
    ("detect", [*T, "--set", "train.device=tpu"], 2, "train.device: 'tpu' is not one of"),
    ("detect", [*T, "--set", "nosuch.key=1"], 2, "unknown key(s) nosuch"),
    ("detect", [*T, "--set", "train.lr=fast"], 2, "train.lr: expected float"),
    ("detect", [*T, "--set", "train.epochs"], 2, "expected section.key=value"),
    ("detect", [*T[:6], "{ws}/notes", *T[7:]], 2, "notes: is a folder, not the annotation file"),
    ("detect", [*T[:6], "{ws}/binary.json", *T[7:]], 2, "binary.json: not a text file"),
    ("detect", [*T[:6], "{ws}/broken.json", *T[7:]], 2, "broken.json: not valid JSON"),
    ("detect", [*T[:8], "{ws}/a_file"], 2, "a_file: a file, not a folder"),
    ("detect", [*T[:4], "{ws}/notes", *T[5:]], 2, "notes"),
    ("detect", ["eval", "{ws}/notes"], 2, "notes: not a run directory"),
    ("detect", ["eval", "{ws}/bad_run"], 2, "run.json: not valid JSON"),
    ("detect", ["predict", "{ws}/missing.mp4", "--run", "{ws}/bad_run"], 2,
     "run.json: not valid JSON"),
    ("detect", ["stream", "{ws}/missing.mp4", "--run", "{ws}/notes"], 2, "not a run directory"),
    ("detect", ["report", "{ws}/notes"], 2, "notes: not a run directory"),
    ("detect", ["score", "--predictions", "{ws}/nope.json", "--annotations", "{ws}/ann.json"], 2,
     "nope.json: predictions file not found"),
    ("detect", ["score", "--predictions", "{ws}/preds.json", "--annotations", "{ws}/ann.json"],
     2, "not in the annotations: 'nope'"),
    ("detect", ["demo", "--run", "{ws}/notes", "--data", "{ws}/d", "--cache", "{ws}/c"], 2,
     "notes: a folder that is not an mgdet run"),
    ("detect", ["convert", "smg", "{ws}/missing", "--out", "{ws}/a.json"], 2, "missing"),
    ("detect", ["synth", "--out", "{ws}/s", "--profile", "kinetics"], 2,
     "profile must be one of"),
    ("detect", ["baseline", "svm", "--features", "{ws}/fs", "--annotations", "{ws}/ann.json",
                "--out", "{ws}/b"], 2, "svm"),
    ("detect", ["ablate", "--configs", "{ws}/missing", "--features", "{ws}/fs",
                "--annotations", "{ws}/ann.json", "--out", "{ws}/ab"], 2, "missing"),
    ("classify", ["train", "--data", "{ws}/missing", "--out", "{ws}/cls"], 2, "missing"),
    ("classify", ["train", "--data", "{ws}/notes", "--out", "{ws}/cls", "--set",
                  "train.epochs=0"], 2, "train: epochs"),
    ("classify", ["train", "--data", "{ws}/notes", "--out", "{ws}/cls", "--set",
                  "fusion.dropout=1.5"], 2, "fusion.dropout: must be in [0, 1)"),
    ("classify", ["train", "--data", "{ws}/notes", "--out", "{ws}/cls", "--set",
                  "train.device=gpu"], 2, "train.device: 'gpu' is not one of"),
]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("module", "args", "code", "fragment"), ROWS,
                         ids=[f"{m}-{i}" for i, (m, *_) in enumerate(ROWS)])
def test_bad_input_is_named_exits_as_documented_and_leaves_nothing(
        ws, module, args, code, fragment, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    before = _files(ws)
    with pytest.raises(SystemExit) as e:
        cli(module, [a.replace("{ws}", str(ws)) for a in args])
    out, err = capsys.readouterr()
    assert e.value.code == code, out + err
    assert fragment in out + err, out + err
    assert "Traceback" not in out + err
    assert _files(ws) == before, sorted(_files(ws) - before)


def test_the_table_covers_every_cli_and_enough_rows():
    assert len(ROWS) >= 30
    assert {m for m, *_ in ROWS} == {"extract", "detect", "classify"}
    assert os.path.isfile(REPO / CFG)


@pytest.mark.parametrize(("target", "variables", "needs"), [
    ("train", ["ANNOTATIONS="], "make train needs ANNOTATIONS="),
    ("eval", ["RUN="], "make eval needs RUN="),
])
def test_make_targets_say_what_they_need(target, variables, needs):
    """`make train` without ANNOTATIONS said "Missing option '--out'"; `make eval` with an empty
    RUN ran eval on nothing. (STAMP= skips the virtualenv step.)"""
    import subprocess

    r = subprocess.run(["make", "-s", target, *variables, "STAMP="], cwd=REPO, text=True,
                       capture_output=True)
    assert r.returncode != 0 and needs in r.stdout + r.stderr, r.stdout + r.stderr


def test_predict_never_suggests_an_option_it_does_not_have(tmp_path, monkeypatch):
    """The Kinetics download hint names extract's --weights; predict (which has none) drops it."""
    import torch

    import extract.i3d as i3d
    from detect.apps.predict import RunFeatures, backbone_for
    from extract.io import RunError

    monkeypatch.setattr(i3d, "kinetics_path", lambda: tmp_path / "I3D_8x8_R50.pyth")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    src = RunFeatures({"stride": 4, "short_side": 32, "crop": 32, "layers": ["res5"],
                       "dtype": "float16", "fps": 10.0}, "key", "kinetics", 0, "run")
    with pytest.raises(RunError, match="copy it to") as e:
        backbone_for(src)
    assert "--weights" not in str(e.value)
