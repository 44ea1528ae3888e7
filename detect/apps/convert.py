"""`python -m detect convert {smg,imigue,activitynet}` and `python -m detect synth-videos`
(`detect/__main__.py` mounts `app` as the `convert` sub-app and `synth_videos` as a command)."""

from __future__ import annotations

from pathlib import Path

import typer

from detect.data.converters.activitynet import convert_activitynet
from detect.data.converters.common import DatasetError
from detect.data.converters.imigue import DEFAULT_IMIGUE_SPLIT, convert_imigue
from detect.data.converters.smg import DEFAULT_SMG_SPLIT, convert_smg

app = typer.Typer(help="Convert a dataset's labels to canonical annotations.json.")


def _fail(e: Exception) -> None:
    """Bad input (a malformed dataset file, a bad option): exit 2, as every CLI here."""
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(code=2)


def _read_classes(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names")
    return names


@app.command()
def smg(
    root: Path = typer.Argument(..., help="SMG release folder (searched recursively)"),
    out: Path = typer.Option(..., "--out", help="annotations.json to write"),
    frame_base: int = typer.Option(0, "--frame-base", help="number of the first frame (0 or 1)"),
    split: str = typer.Option(DEFAULT_SMG_SPLIT, "--split", help="sample numbers per subset"),
    classes: Path = typer.Option(
        None, "--classes", help="text file of class names 1..K (default: the 17 SMG classes)"
    ),
) -> None:
    """SMG: SampleXXXX/SampleXXXX_{finelabels,data}.csv -> annotations.json."""
    try:
        convert_smg(root, out, split=split, frame_base=frame_base, classes=_read_classes(classes))
    except (DatasetError, ValueError) as e:
        _fail(e)
    typer.echo(f"wrote {out}")


@app.command()
def imigue(
    root: Path = typer.Argument(..., help="iMiGUE folder, or the original labels_*.csv"),
    out: Path = typer.Option(..., "--out", help="annotations.json to write"),
    split: str = typer.Option(
        DEFAULT_IMIGUE_SPLIT, "--split", help="subject ids per subset; `rest` = all others"
    ),
    labels_csv: Path = typer.Option(
        None, "--labels-csv", help="original labels_20200831.csv (subject ids)"
    ),
    frame_base: int = typer.Option(0, "--frame-base", help="number of the first frame (0 or 1)"),
) -> None:
    """iMiGUE: XXXX/XXXX_label.csv or labels_20200831.csv -> annotations.json."""
    try:
        convert_imigue(root, out, split=split, labels_csv=labels_csv, frame_base=frame_base)
    except (DatasetError, ValueError) as e:
        _fail(e)
    typer.echo(f"wrote {out}")


@app.command()
def activitynet(
    json_path: Path = typer.Argument(..., help="ActivityNet/THUMOS-style JSON"),
    out: Path = typer.Option(..., "--out", help="annotations.json to write"),
    fps: float = typer.Option(30.0, "--fps", help="fps of videos whose entry has none"),
) -> None:
    """ActivityNet-style JSON (training/validation/testing) -> annotations.json."""
    try:
        convert_activitynet(json_path, out, default_fps=fps)
    except (DatasetError, ValueError) as e:
        _fail(e)
    typer.echo(f"wrote {out}")


def synth_videos(
    out: Path = typer.Option(Path("data/synthetic"), "--out", help="folder to render into"),
    videos: int = typer.Option(12, "--videos", help="number of videos"),
    minutes: float = typer.Option(2.0, "--minutes", help="length of each video"),
    classes: int = typer.Option(8, "--classes", help="number of gesture classes (1-12)"),
    seed: int = typer.Option(0, "--seed", help="seed of the gesture plan and the rendering"),
    size: str = typer.Option("160x120", "--size", help="WxH, both even"),
    fps: float = typer.Option(30.0, "--fps", help="frame rate of the rendered videos"),
) -> None:
    """Render synthetic micro-gesture videos in the SMG layout (plus annotations.json)."""
    from detect.synthetic.videos import render_dataset

    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        _fail(ValueError(f"--size {size!r} is not WxH"))
    try:
        paths = render_dataset(out, videos, minutes, classes, seed, (w, h), fps)
    except (DatasetError, ValueError) as e:
        _fail(e)
    typer.echo(f"{len(paths)} videos and {out / 'annotations.json'} under {out}")
