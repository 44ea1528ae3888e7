"""`python -m classify`: render a synthetic iMiGUE, train and evaluate the clip classifier."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Micro-gesture clip classification on iMiGUE (2s-AGCN on skeletons).")


@app.command()
def render(
    out: Path = typer.Argument(..., help="output folder (iMiGUE layout)"),
    videos: int = typer.Option(16, "--videos"),
    minutes: float = typer.Option(0.75, "--minutes", help="length of each video"),
    seed: int = typer.Option(0, "--seed"),
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
) -> None:
    """Train the skeleton streams (and, with rgb.enabled, the RGB and fusion heads) on the training
    subjects; evaluate on the test subjects."""
    from classify.config import load_classify_config
    from classify.report import format_metrics
    from classify.run import run_classify

    cfg = load_classify_config(config, set_)
    metrics = run_classify(cfg, data, cache, out)
    typer.echo(format_metrics(metrics))
    typer.echo(f"outputs: {out}")


def main() -> None:
    from extract.io import RunError

    try:
        app()
    except (ValueError, RunError) as e:  # DatasetError, ConfigError: bad input, no traceback
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
