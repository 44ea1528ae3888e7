"""`python -m extract kinetics VIDEO...`: each video's top-K Kinetics-400 labels, a check that a
backbone and its weights see what they should.

A video is decoded at the backbone's Kinetics frame rate, short side 256, centre crop 224
(`extract.decode`), and classified fully convolutionally over its whole length: the trunk runs in
chunks with halos (`extract.i3d.ChunkedExtractor`, equal to one pass, memory bounded whatever
the length), the Kinetics head runs at every temporal position of its spatially averaged last
layer, and the logits are averaged over the positions before the softmax.

- inception_i3d: DeepMind's original network (MaxPool3d_5a with temporal stride 2, as its logits
  were trained: `extract.inception_i3d`), one step per 8 frames, at 25 fps (Kinetics' clips and
  DeepMind's evaluation). Head: average pool (2, 7, 7) with stride 1, then the 1x1x1 conv.
- i3d_r50: pytorchvideo's blocks 0-5, one step per 2 frames, then its ResNetBasicHead: average
  pool (4, 7, 7) with stride 1, then the 2048 -> 400 projection. At 30 / 8 = 3.75 fps: the 8x8
  model was trained on 8 frames taken 8 apart from Kinetics' 30 fps videos, and the motion it
  knows is that rate's.

At 224 x 224 both last layers are 7 x 7, which the heads' pools cover whole, so pooling their
spatial average is the same. Steps are whole: the frames after the last full step (fewer than
8 for inception_i3d) only serve as context, as in `extract features`.

Labels: `kinetics400_labels.txt`, DeepMind's label map (deepmind/kinetics-i3d,
data/label_map.txt, Apache-2.0): the 400 classes in alphabetical order, which is the index
order of both heads (pytorchvideo's Kinetics models number the classes alphabetically too, as
its kinetics_classnames.json does; their weights cannot be fetched here to check it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from extract.decode import DecodeError, DecodeSettings, FrameStream, open_video
from extract.i3d import (
    INCEPTION,
    MODEL_NAME,
    ChunkedExtractor,
    RunOptions,
    _build,
    build_backbone,
    default_chunk_frames,
    fetch_kinetics,
    load_state,
)
from extract.inception_i3d import (
    MIXED_4F_DIM,
    MIXED_5C_DIM,
    NUM_CLASSES,
    InceptionBackbone,
    InceptionI3d,
)
from extract.inception_weights import build_inception_classifier
from extract.weights import Weights, WeightsError

LABELS_FILE = "kinetics400_labels.txt"
SHORT_SIDE = 256
CROP = 224
# Frames per second each backbone's Kinetics head was trained at (module docstring).
FPS = {INCEPTION: 25.0, MODEL_NAME: 30.0 / 8}
R50_HEAD = ("blocks.6.proj.weight", "blocks.6.proj.bias")
Log = Callable[[str], None]


def kinetics_labels() -> list[str]:
    """The 400 Kinetics-400 class names, in the heads' index order (shipped with the package)."""
    text = resources.files("extract").joinpath(LABELS_FILE).read_text(encoding="utf-8")
    names = text.splitlines()
    if len(names) != NUM_CLASSES:  # a damaged install would mislabel every class silently
        raise RuntimeError(f"extract/{LABELS_FILE}: {len(names)} names, expected {NUM_CLASSES}")
    return names


class OriginalInceptionTrunk(nn.Module):
    """DeepMind's Inception-I3D up to Mixed_5c, as a backbone `ChunkedExtractor` can run.

    forward: (N, 3, T, H, W) in [-1, 1] -> (Mixed_5c spatially averaged (N, 1024, ceil(T/8)),
    None). `step` = 8 frames per output step (the original MaxPool3d_5a halves time).
    """

    model = INCEPTION
    dims = (MIXED_5C_DIM, MIXED_4F_DIM)
    res4 = False
    normalize = staticmethod(InceptionBackbone.normalize)

    def __init__(self, net: InceptionI3d) -> None:
        super().__init__()
        self.net = net
        self.step = net.temporal_reach()[2]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x).float().mean(dim=(3, 4)), None

    def temporal_reach(self) -> tuple[int, int, int]:
        return self.net.temporal_reach()


@dataclass
class KineticsHead:
    """A Kinetics head on spatially averaged steps, applied at every temporal position.

    weight: (400, C); bias: (400,); window: the head's temporal average pool, in steps.
    __call__: steps (S, C) -> logits (400,), the mean over the S - window + 1 positions (a video
    shorter than the window is pooled whole, as one position).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    window: int

    def __call__(self, steps: torch.Tensor) -> torch.Tensor:
        k = min(self.window, steps.shape[0])
        pooled = steps.float().unfold(0, k, 1).mean(dim=-1)  # (S - k + 1, C): pool, stride 1
        return (pooled @ self.weight.t() + self.bias).mean(dim=0)


@dataclass
class KineticsClassifier:
    """A backbone's trunk (chunkable), its Kinetics head, the decoding that feeds them and the
    weights they hold."""

    trunk: nn.Module
    head: KineticsHead
    decode: DecodeSettings
    weights: Weights


def _r50_head(weights: str, seed: int) -> KineticsHead:
    """i3d_r50's projection: from the checkpoint, or the seeded network's for "random" (the
    same network `build_backbone` makes for that seed)."""
    if weights == "random":
        proj = _build(seed).blocks[6].proj
        return KineticsHead(proj.weight.detach(), proj.bias.detach(), 4)
    path = fetch_kinetics() if weights == "kinetics" else Path(weights)
    state = load_state(path)
    missing = [k for k in R50_HEAD if k not in state]
    if missing:
        raise WeightsError(f"{path}: no Kinetics-400 head ({', '.join(missing)}); an "
                           "end-to-end mgdet run holds the backbone only and cannot classify")
    w, b = (state[k].float() for k in R50_HEAD)
    if tuple(w.shape) != (NUM_CLASSES, 2048) or tuple(b.shape) != (NUM_CLASSES,):
        raise WeightsError(f"{path}: Kinetics head of shape {tuple(w.shape)}, expected "
                           f"({NUM_CLASSES}, 2048)")
    return KineticsHead(w, b, 4)


def build_classifier(model: str = INCEPTION, weights: str = "kinetics", seed: int = 0,
                     log: Log = lambda s: None) -> KineticsClassifier:
    """The Kinetics-400 classifier of `model` with `weights` ("kinetics", "random" or a PATH
    holding the head too); WeightsError when they cannot be had or lack the head."""
    if model not in FPS:
        raise ValueError(f"model must be one of {', '.join(FPS)}, got {model!r}")
    decode = DecodeSettings(FPS[model], SHORT_SIDE, CROP)
    if model == INCEPTION:
        net, info = build_inception_classifier(weights, seed, temporal_pool_5a=2, log=log)
        conv = net.logits.conv3d  # type: ignore[union-attr]
        head = KineticsHead(conv.weight.detach().flatten(1), conv.bias.detach(), 2)
        return KineticsClassifier(OriginalInceptionTrunk(net).eval(), head, decode, info)
    trunk, info = build_backbone(weights, seed, model=MODEL_NAME)
    return KineticsClassifier(trunk, _r50_head(weights, seed), decode, info)


@dataclass
class VideoLabels:
    """One video's result: its top labels with probabilities, and how much was seen."""

    video: str
    top: list[tuple[str, float]]
    frames: int
    fps: float


def video_logits(clf: KineticsClassifier, path: Path, device: torch.device,
                 chunk_frames: int | None = None) -> tuple[torch.Tensor, int]:
    """(logits (400,) averaged over the whole video, decoded frames); DecodeError naming the file
    when it cannot be read or is shorter than one step."""
    step = clf.trunk.step
    chunk = chunk_frames or default_chunk_frames(device)
    runner = ChunkedExtractor(clf.trunk, step, device, RunOptions(chunk_frames=chunk))
    blocks = []  # (s_i, C) trunk steps, as each chunk's are final
    with FrameStream(path, clf.decode, chunk=16, track_pts=False) as stream:
        for block, _ in runner.iter_steps(stream):
            blocks.append(torch.from_numpy(block))
    frames = stream.result.num_frames
    steps = torch.cat(blocks) if blocks else torch.zeros(0)  # (S, C), S = frames // step
    if steps.shape[0] == 0:
        raise DecodeError(f"{path}: too short to classify ({frames} frames at "
                          f"{clf.decode.fps:g} fps; one step needs {step})")
    return clf.head(steps.to(clf.head.weight.device)), frames


def top_labels(logits: torch.Tensor, k: int, labels: list[str]) -> list[tuple[str, float]]:
    """logits (400,) -> the k most probable (label, softmax probability), most probable first."""
    probs = torch.softmax(logits.double(), dim=0)
    p, idx = probs.topk(k)
    return [(labels[i], float(v)) for v, i in zip(p.tolist(), idx.tolist(), strict=True)]


def check_top(k: int) -> None:
    """ValueError unless 1 <= k <= 400 (labels per video)."""
    if not 1 <= k <= NUM_CLASSES:
        raise ValueError(f"--top must be in 1..{NUM_CLASSES}, got {k}")


def check_videos(paths: list[Path]) -> None:
    """DecodeError naming the first path that is not a readable video, before any work."""
    for path in paths:
        container, _ = open_video(path)
        container.close()


def classify_videos(paths: list[Path], clf: KineticsClassifier, k: int = 5,
                    device: torch.device | str = "cpu",
                    on_error: Log = lambda s: print(s, file=sys.stderr)) -> list[VideoLabels]:
    """Every video's top-k labels; a video that fails mid-way is reported through `on_error`
    and left out."""
    check_top(k)
    device = torch.device(device)
    labels = kinetics_labels()
    out = []
    for path in paths:
        try:
            logits, frames = video_logits(clf, path, device)
        except DecodeError as e:
            on_error(f"error: {e}")
            continue
        out.append(VideoLabels(str(path), top_labels(logits, k, labels), frames,
                               clf.decode.fps))
    return out


def format_labels(results: list[VideoLabels]) -> str:
    """The human-readable listing: per video a header, then one `prob  label` line each."""
    lines = []
    for r in results:
        lines.append(f"{r.video}: {r.frames} frames at {r.fps:g} fps "
                     f"({r.frames / r.fps:.1f} s)")
        lines += [f"  {p:6.3f}  {name}" for name, p in r.top]
    return "\n".join(lines)


def as_json(results: list[VideoLabels]) -> list[dict]:
    """`--json`'s list: [{"video": PATH, "top": [{"label": NAME, "prob": P}, ...]}, ...]."""
    return [{"video": r.video, "top": [{"label": n, "prob": round(p, 6)} for n, p in r.top]}
            for r in results]
