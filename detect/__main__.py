"""Stage two of mgdet: train, evaluate and apply the micro-gesture detector on cached features.

Each command has its own --help."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

# rich_markup_mode=None: click's plain help, which wraps at any width (rich's panels cut option
# names and texts short on an 80-column terminal).
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__,
                  rich_markup_mode=None)

class OnlineModeChoice(str, Enum):
    causal = "causal"
    window_final = "window-final"


SetOpt = typer.Option(None, "--set", help="override a config key: section.key=value (repeatable)")


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="TOML config (configs/*.toml)"),
    features: list[Path] = typer.Option(
        ..., "--features", help="feature set folder ROOT/<key>; repeat it to train on several "
        "streams of the same videos (RGB then pose), fused as model.fusion says"),
    annotations: Path = typer.Option(..., "--annotations", help="canonical annotations.json"),
    out: Path = typer.Option(..., "--out", help="run directory, e.g. runs/NAME"),
    set_: Optional[list[str]] = SetOpt,  # noqa: UP007, UP045 - typer needs Optional here
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads, as --set "
                                "train.threads=N (0: the config's, else the cores this process "
                                "may use)"),
) -> None:
    """Train the detector on cached features; the best epoch is chosen on `val`."""
    from detect.config import load_config
    from detect.train.loop import train as run_train

    cfg = load_config(config, [*(set_ or []), *([f"train.threads={threads}"] if threads else [])])
    result = run_train(cfg, list(features), annotations, out, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"best {cfg.train.select_metric} on val: {result['best_metric']:.4f} "
                   f"(epoch {result['best_epoch']}); run: {out}")


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="run directory"),
    subset: str = typer.Option("test", "--subset", help="train, val or test (choose configs on "
                               "val; report test once)"),
    online: bool = typer.Option(
        False, "--online", help="replay the subset's videos step by step from the feature set "
        "and score what is emitted and when (RUN/metrics_online.json: F1s, mAP, AEDT)"),
    mode: Optional[OnlineModeChoice] = typer.Option(  # noqa: UP045
        None, "--mode", help="with --online: causal (default for a run trained with "
        "online.causal) or window-final (detect stream's sliding windows; default otherwise)"),
) -> None:
    """Predict on a subset with the best checkpoint; write predictions, MiGA CSVs, metrics."""
    if online:
        from detect.evaluation.online_eval import evaluate_online_run

        evaluate_online_run(run, subset, mode.value if mode else None)
        return
    if mode is not None:
        raise typer.BadParameter("--mode goes with --online", param_hint="--mode")
    from detect.evaluation.evaluate import evaluate_run

    evaluate_run(run, subset)


@app.command()
def predict(
    videos: list[Path] = typer.Argument(..., help="video files or folders"),
    run: Path = typer.Option(..., "--run", help="a trained run directory"),
    out: Optional[Path] = typer.Option(None, "--out", help="default: RUN/predict"),  # noqa: UP045
    dataset: str = typer.Option(
        "", "--dataset", help="smg: name videos as SMG's labels do (Sample0001_color.mp4 -> "
        "Sample0001); by default a video is named by its file stem"),
    eval_overlap: Optional[float] = typer.Option(  # noqa: UP045
        None, "--eval-overlap", help="window overlap (default: the run's data.eval_overlap; "
        "1 - hop/window gives `stream --hop`'s windows)"),
) -> None:
    """Detect micro-gestures in new videos with a trained run (features made as for training)."""
    from detect.apps.predict import format_detections, predict_videos

    id_fn = None
    if dataset == "smg":
        from extract.pipeline import video_id_from_path as id_fn
    preds, classes = predict_videos(videos, run, out, id_fn=id_fn, eval_overlap=eval_overlap)
    _warn_if_random(run)  # next to the detections it is about
    typer.echo(format_detections(preds, classes))
    typer.echo(f"outputs: {out or Path(run) / 'predict'}")


class StreamModeChoice(str, Enum):
    auto = "auto"
    causal = "causal"
    window_final = "window-final"


@app.command()
def stream(
    source: str = typer.Argument(..., help="video file, /dev/video0 or a URL FFmpeg opens"),
    run: Path = typer.Option(..., "--run", help="a trained run directory"),
    out: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--out", help="JSON lines file (default RUN/stream/<source>-<time>.jsonl)"),
    mode: StreamModeChoice = typer.Option(
        StreamModeChoice.auto, "--mode", help="causal (emit within about online.horizon_s of "
        "a gesture's end), window-final (sliding windows, emit once no later window can change "
        "a detection) or auto: causal for a run trained with online.causal, else window-final"),
    window: int = typer.Option(0, "--window", help="feature steps per window (0: the run's)"),
    hop: int = typer.Option(0, "--hop", help="window-final: steps between windows (0: offline "
                            "evaluation's, window x (1 - the run's eval_overlap); a detection "
                            "is final about window - hop steps after its end); refused in "
                            "causal mode"),
    every: int = typer.Option(0, "--every", help="causal: steps between decisions (0: the "
                              "run's online.every); refused in window-final mode"),
    realtime: bool = typer.Option(False, "--realtime", help="play a file at its own speed"),
    chunk_frames: int = typer.Option(32, "--chunk-frames", help="stage one's frames per chunk"),
    threshold: Optional[float] = typer.Option(  # noqa: UP045
        None, "--threshold", help="score threshold (default: the run's; causal: "
        "online.threshold when >= 0, else the emission threshold tuned on val)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Detect micro-gestures while a video plays: one JSON line per detection, never revised.

    Two modes (--mode): causal, a run trained for it (online.causal) by default: every --every
    steps a window ending at the newest step runs and the gestures that ended within its last
    online.horizon_s seconds are emitted, so a gesture is reported within about that long after
    its end (plus stage one's chunk). window-final, the default otherwise: sliding windows every
    --hop steps, a detection emitted once no later window can change it (about window - hop
    steps after its end).

    A run on RGB + pose takes its pose steps from the SMG skeleton beside a video file
    (<id>_skeleton.csv) or from BlazePose on the file (the pose extra), as the frames arrive; it
    refuses a live source.

    Each line: class, label, start, end, score, emitted_at, source_time. Times in seconds:
    start/end in video time from the first frame; emitted_at = wall clock since the first frame
    arrived (emitted_at - end: the delay a viewer of a live source sees); source_time = video
    time received by then. The record beside it (.json) gives the mode and its settings,
    real_time_factor = wall seconds / video seconds (below 1 keeps up with a live source),
    latency figures, and each emission's end, emitted_at and source_time.

    Exit codes: 0 the source ended; 2 usage error or unusable run; 3 the source could not be
    read; 4 the source failed mid-stream (detections up to there written); 130 Ctrl-C."""
    from detect.apps.stream import EXIT_USAGE, StreamOptions
    from detect.apps.stream import stream as run_stream
    from extract.io import RunError

    opts = StreamOptions(window=window or None, hop=hop or None, realtime=realtime,
                         chunk_frames=chunk_frames, threshold=threshold, device=device,
                         mode=None if mode is StreamModeChoice.auto else mode.value,
                         every=every or None)
    _warn_if_random(run)
    try:
        result = run_stream(source, run, out, opts, progress=not quiet)
    except RunError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from e
    typer.echo(f"{result.message}; {result.detections} detections in {result.out} "
               f"({result.windows})", err=True)
    raise typer.Exit(result.exit_code)


@app.command()
def report(
    run: Path = typer.Argument(..., help="run directory (evaluated with `eval` first)"),
    subset: str = typer.Option("test", "--subset", help="the subset `eval` was run on"),
    linked_images: bool = typer.Option(
        False, "--linked-images", help="link the PNG files instead of embedding them (a smaller "
        "page for hundreds of videos, which then needs its folder)"),
) -> None:
    """Write a self-contained HTML report of an evaluated run: RUN/report/index.html, one file
    with its figures embedded (also written as PNGs beside it)."""
    from detect.apps.report import write_report

    _warn_if_random(run)
    typer.echo(f"report: {write_report(run, subset, linked=linked_images)}")


def _warn_if_random(run: Path) -> None:
    """The loud line of `runs.random_weights_warning`, on stderr, for a run made from random
    weights (nothing for a path that is not a run: the command itself says what is wrong)."""
    from detect.runs import random_weights_warning, read_run
    from extract.io import RunError

    try:
        warning = random_weights_warning(read_run(run)[1])
    except (RunError, ValueError, OSError):
        return
    if warning:
        typer.echo(warning, err=True)


@app.command()
def score(
    predictions: Path = typer.Option(..., "--predictions", help="predictions JSON "
                                     "({\"results\": {video: [{segment, label_id, score}]}})"),
    annotations: Path = typer.Option(..., "--annotations", help="canonical annotations.json"),
    subset: str = typer.Option("test", "--subset", help="train, val or test"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the metrics as JSON"),  # noqa: UP045
) -> None:
    """Score a predictions JSON against annotations (MiGA F1, strict F1, mAP)."""
    from detect.evaluation.metrics import format_table, score_files

    metrics = score_files(predictions, annotations, subset, out)
    typer.echo(format_table(metrics))


class Generator(str, Enum):
    features = "features"
    envelope = "envelope"


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="folder for annotations.json and features/"),
    videos: int = typer.Option(40, "--videos", help="number of videos"),
    generator: Generator = typer.Option(
        Generator.features, "--generator",
        help="smg-like signals (default, detect.synthetic.features) or envelope "
        "(detect.synthetic.envelopes: per-class temporal envelopes, correlated background)"),
    classes: Optional[int] = typer.Option(  # noqa: UP045
        None, "--classes", help="basic profile: number of classes (default 8); smg has 17"),
    seed: int = typer.Option(0, "--seed", help="generator seed (same seed, same set)"),
    noise: Optional[float] = typer.Option(  # noqa: UP045
        None, "--noise", help="features generator: 0 gives a clean, easy set (default 1)"),
    profile: Optional[str] = typer.Option(  # noqa: UP045
        None, "--profile",
        help="features generator: basic (default): generic timelines; smg: SMG's durations, "
        "bursts, 17 imbalanced classes, shared body-part signatures and distractor motion"),
    amplitude: Optional[float] = typer.Option(  # noqa: UP045
        None, "--amplitude", help="scale of the planted signal (default: the generator's, 1.0 "
        "for features, calibrated for envelope)"),
    min_minutes: float = typer.Option(2.0, "--min-minutes", help="shortest video"),
    max_minutes: float = typer.Option(5.0, "--max-minutes", help="longest video"),
) -> None:
    """Write a synthetic feature set and annotations.json (for tests, demos, benchmarks)."""
    minutes = dict(min_duration_s=60 * min_minutes, max_duration_s=60 * max_minutes)
    if generator is Generator.envelope:
        from detect.synthetic.envelopes import synth_envelope_set

        given = {"--profile": profile, "--classes": classes, "--noise": noise}
        for name, value in given.items():
            if value is not None:
                raise typer.BadParameter(
                    "does not apply to --generator envelope (SMG's 17 classes; its noise is "
                    "fixed, --amplitude sets the difficulty)", param_hint=name)
        extra = {} if amplitude is None else {"amplitude": amplitude}
        fs, ann_path = synth_envelope_set(out, videos=videos, seed=seed, **minutes, **extra)
    else:
        from detect.synthetic.features import synth_feature_set

        fs, ann_path = synth_feature_set(
            out, videos=videos, classes=classes, seed=seed,
            noise=1.0 if noise is None else noise, profile="basic" if profile is None else profile,
            amplitude=1.0 if amplitude is None else amplitude, **minutes)
    typer.echo(f"features: {fs.path}\nannotations: {ann_path}")


@app.command()
def baseline(
    kind: str = typer.Argument(..., help="probe (per-step linear classifier) or dense (the "
                               "detector's dense head alone)"),
    features: Path = typer.Option(..., "--features", help="feature set folder ROOT/<key>"),
    annotations: Path = typer.Option(..., "--annotations", help="canonical annotations.json"),
    out: Path = typer.Option(..., "--out", help="output folder (metrics.json, predictions.json)"),
    seed: int = typer.Option(0, "--seed", help="seed of the baseline's training"),
) -> None:
    """Fit a baseline on `train`, tune its threshold on `val`, score `test` like `eval`."""
    from detect.evaluation.metrics import format_table
    from detect.experiments.baselines import BaselineConfig, run_baseline

    metrics = run_baseline(BaselineConfig(kind=kind, seed=seed), features, annotations, out)
    typer.echo(format_table(metrics))
    typer.echo(f"outputs: {out}")


@app.command()
def ablate(
    configs: Path = typer.Option(..., "--configs", help="folder of *.toml configs"),
    features: list[Path] = typer.Option(
        ..., "--features", help="feature set folder ROOT/<key> (repeat: several streams)"),
    annotations: Path = typer.Option(..., "--annotations", help="canonical annotations.json"),
    out: Path = typer.Option(..., "--out", help="one run folder per config, and the table"),
    baselines: str = typer.Option("probe,dense", "--baselines",
                                  help="comma-separated baselines to add ('' for none)"),
    set_: Optional[list[str]] = SetOpt,  # noqa: UP007, UP045
) -> None:
    """Train and evaluate every config on one feature cache; resumable; writes OUT/ablation.md
    and .csv (config, changed keys, f1_miga, f1_strict, mAP, params, s/epoch)."""
    from detect.experiments.ablate import Ablation, format_markdown, run_ablation
    from detect.experiments.baselines import KINDS

    kinds = tuple(k.strip() for k in baselines.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise typer.BadParameter(f"unknown baseline {bad[0]!r} (one of {', '.join(KINDS)})")
    feats = features[0] if len(features) == 1 else list(features)
    rows = run_ablation(Ablation(configs, feats, annotations, out, kinds, tuple(set_ or [])))
    typer.echo(format_markdown(rows))
    typer.echo(f"table: {out / 'ablation.md'}")
    if any(r["status"] != "ok" for r in rows):
        raise typer.Exit(1)


@app.command()
def demo(
    data: Path = typer.Option(Path("data/synthetic"), "--data", help="rendered videos go here"),
    cache: Path = typer.Option(Path("cache"), "--cache", help="feature cache root"),
    run: Path = typer.Option(Path("runs/demo"), "--run", help="run directory"),
    config: Path = typer.Option(Path("configs/demo.toml"), "--config", help="detector config"),
    videos: int = typer.Option(12, "--videos", help="number of videos to render"),
    minutes: float = typer.Option(2.0, "--minutes", help="length of each video"),
    classes: int = typer.Option(8, "--classes", help="number of gesture classes"),
    crop: int = typer.Option(112, "--crop", help="I3D input crop (and short side)"),
    model: str = typer.Option("inception_i3d", "--model",
                              help="inception_i3d (DeepMind's I3D) or i3d_r50 (pytorchvideo's)"),
    weights: str = typer.Option("", "--weights",
                                help="default: kinetics where they can be had, else random"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    set_: Optional[list[str]] = SetOpt,  # noqa: UP007, UP045
) -> None:
    """Render a synthetic set, extract features, train a small detector, evaluate on test."""
    from detect.apps.demo import DemoSettings, run_demo

    run_demo(DemoSettings(data=data, cache=cache, run=run, config=config, videos=videos,
                          minutes=minutes, classes=classes, short_side=crop, crop=crop,
                          model=model, weights=weights, device=device,
                          overrides=tuple(set_ or [])))


def _mount_dataset_commands() -> None:
    from detect.apps.convert import app as convert_app
    from detect.apps.convert import synth_videos

    app.add_typer(convert_app, name="convert", help="convert SMG / iMiGUE / ActivityNet labels")
    app.command("synth-videos")(synth_videos)


_mount_dataset_commands()


def main() -> None:
    from detect.apps.plots import MissingMatplotlib
    from extract.config import ConfigError
    from extract.io import RunError

    try:
        app()
    except (ConfigError, RunError, ValueError, MissingMatplotlib) as e:  # bad input, no traceback
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
