"""`python -m classify`: render a synthetic iMiGUE, train and evaluate the clip classifier, and
label a new video's clips."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

# rich_markup_mode=None: click's plain help, which wraps at any width.
app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Micro-gesture clip classification on iMiGUE: 2s-AGCN on OpenPose skeletons, MViTv2-S "
    "RGB tokens and cross-modal token fusion, and win/lose emotion from SwinFace face tokens "
    "with the clips as context (InterFusion). Which parts run is set by the config.")


@app.command()
def render(
    out: Path = typer.Argument(..., help="output folder (iMiGUE layout)"),
    videos: int = typer.Option(16, "--videos", help="number of interview videos"),
    minutes: float = typer.Option(0.75, "--minutes", help="length of each video"),
    seed: int = typer.Option(0, "--seed", help="seed of the clips, subjects and rendering"),
) -> None:
    """Render a synthetic iMiGUE: videos, label CSVs, OpenPose JSON, the original label file."""
    from classify.synthetic import render_imigue

    made = render_imigue(out, videos, minutes, seed)
    clips = sum(len(v.plan) for v in made)
    typer.echo(f"{len(made)} videos, {clips} clips under {out}")


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="iMiGUE root (labels, skeletons)"),
    out: Path = typer.Option(..., "--out", help="run directory"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML config"),  # noqa: UP045
    cache: Path = typer.Option(Path("cache/skeleton"), "--cache", help="keypoint cache"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. train.epochs=10"),  # noqa: B008
    threads: int = typer.Option(0, "--threads", help="torch CPU threads, as --set "
                                "train.threads=N (0: the config's, else the cores this process "
                                "may use)"),
) -> None:
    """Train the skeleton streams (and, with rgb.enabled, the RGB and fusion heads) on the training
    subjects; evaluate on the test subjects."""
    from classify.config import load_classify_config
    from classify.report import format_metrics
    from classify.run import run_classify

    cfg = load_classify_config(config, [*set_, *([f"train.threads={threads}"] if threads else [])])
    metrics = run_classify(cfg, data, cache, out)
    typer.echo(format_metrics(metrics))
    typer.echo(f"outputs: {out}")


@app.command()
def predict(
    video: Path = typer.Argument(..., help="the video to label; its file stem is the video id"),
    run: Path = typer.Option(..., "--run", help="a run directory (`classify train --out`)"),
    clips: Path = typer.Option(..., "--clips", help="the clips: rows class,start,end (the "
                               "release's XXXX_label.csv) or start,end; 0-based inclusive "
                               "frames, optional header"),
    keypoints: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--keypoints", help="the video's OpenPose keypoints: a folder of "
        "*_keypoints.json, or a .csv / .xlsx table (every run has skeleton streams)"),
    out: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--out", help="output folder (default RUN/predict/<video stem>/)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
) -> None:
    """Label a new video's clips with a trained run, from the modalities it was trained on;
    writes predictions.csv, miga_track1.csv (and emotion_predictions.csv) as the run's test split,
    and predict.json. Exit 2: bad input; 1: the work failed (e.g. the video cannot be decoded)."""
    from classify.predict import PredictFailed, PredictRequest, predict_video
    from extract.io import RunError

    req = PredictRequest(video, run, clips, keypoints, out, device)
    try:
        record = predict_video(req)
    except PredictFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    except (ValueError, RunError) as e:  # DatasetError, ConfigError, not a run: bad input
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    line = f"{record['clips']} clips of {record['video_id']} ({record['models']['final']})"
    if "report" in record:
        line += f": top-1 {100 * record['report']['top1']:.2f}"
    if "emotion" in record:
        line += f", p(win) {record['emotion']['p_win']['interfusion']:.3f} (interfusion)"
    typer.echo(line)
    typer.echo(f"outputs: {req.out_dir}")


def main() -> None:
    from extract.io import RunError

    try:
        app()
    except (ValueError, RunError) as e:  # DatasetError, ConfigError: bad input, no traceback
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
