"""Kinetics I3Ds as fully convolutional temporal feature extractors: pytorchvideo's `i3d_r50`
(the default) and DeepMind's Inception-v1 I3D (`inception_i3d`, in `extract.inception_i3d`).

The i3d_r50 backbone (blocks 0-5: stem, res2, pool, res3, res4, res5) has a temporal stride of
2, so it gives one "native step" per 2 input frames; inception_i3d (AFSD's 5a pool) one per 4.
A stored feature averages `stride // step` consecutive native steps. Feature i covers frames
[i*stride, (i+1)*stride); a video of N 10 fps frames gives T = N // stride features (frames past
the last full group only serve as context).

Long videos run in chunks: chunk c produces the features of frames [c*L, (c+1)*L) from the frames
[c*L - halo, (c+1)*L + halo) (clipped to the video). Because every chunk starts at a multiple of
the native step and the halo covers the backbone's temporal reach, chunked features equal
one-pass features.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from extract.decode import normalize
from extract.inception_i3d import MIXED_4F_DIM, MIXED_5C_DIM, InceptionBackbone
from extract.inception_weights import build_inception_backbone
from extract.weights import (
    Weights,
    WeightsError,
    check_state,
    file_sha256,
    read_checkpoint,
    state_digest,
)

with warnings.catch_warnings():
    # pytorchvideo imports fvcore, which calls torch.jit.script at import time; torch >= 2.10
    # warns about that on every command. Nothing of ours uses TorchScript.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated",
                            category=FutureWarning)
    from pytorchvideo.models.hub import i3d_r50

KINETICS_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/I3D_8x8_R50.pyth"
KINETICS_FILE = "I3D_8x8_R50.pyth"
MODEL_NAME = "i3d_r50"
BACKBONE_BLOCKS = 6  # blocks.0-5; blocks.6 is the Kinetics classification head
RES4_DIM = 1024
RES5_DIM = 2048
Tensor4 = torch.Tensor | None  # res4 output, absent unless asked for
Chunk = tuple[torch.Tensor, int, int, int]  # (input frames, input start, core start, core end)
INCEPTION = "inception_i3d"
MODELS = (MODEL_NAME, INCEPTION)


@dataclass(frozen=True)
class BackboneSpec:
    """What a feature set of one backbone holds: the widths and names of its main layer and
    of the optional second one (`res4` / `--res4`), and input frames per native step."""

    dims: tuple[int, int]
    layers: tuple[str, str]
    step: int


SPECS = {
    MODEL_NAME: BackboneSpec((RES5_DIM, RES4_DIM), ("res5", "res4"), 2),
    INCEPTION: BackboneSpec((MIXED_5C_DIM, MIXED_4F_DIM), ("mixed_5c", "mixed_4f"), 4),
}


def backbone_spec(model: str) -> BackboneSpec:
    if model not in SPECS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    return SPECS[model]


def layer_names(model: str, res4: bool) -> list[str]:
    """The `layers` a feature set of `model` records: ["res5"] or ["res5", "res4"] for i3d_r50,
    ["mixed_5c"] or ["mixed_5c", "mixed_4f"] for inception_i3d."""
    names = backbone_spec(model).layers
    return list(names) if res4 else [names[0]]


class I3DBackbone(nn.Module):
    """blocks.0-5 of `i3d_r50`, spatially averaged.

    forward: (N, 3, T, H, W) -> res5 (N, 2048, T // 2) and res4 (N, 1024, T // 2) or None.
    `normalize` makes its input from uint8 frames; `step` frames per output step.

    checkpointing: while gradients are recorded, run every residual block (and the stem) of a
    block that has trainable parameters under activation checkpointing, so training keeps only
    the block inputs and recomputes the rest in the backward pass. Blocks without trainable
    parameters run plainly (they record nothing when their input needs no gradient).
    """

    model = MODEL_NAME
    step = 2
    dims = (RES5_DIM, RES4_DIM)
    normalize = staticmethod(normalize)

    def __init__(self, net: nn.Module, res4: bool = False, checkpointing: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(net.blocks[:BACKBONE_BLOCKS]))
        self.res4 = res4
        self.checkpointing = checkpointing

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not (self.checkpointing and torch.is_grad_enabled()
                and any(p.requires_grad for p in block.parameters())):
            return block(x)
        parts = list(block.res_blocks) if hasattr(block, "res_blocks") else [block]
        for part in parts:
            x = checkpoint(part, x, use_reentrant=False)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        r4 = None
        for i, block in enumerate(self.blocks):
            x = self._run(block, x)
            if i == 4 and self.res4:
                r4 = x.float().mean(dim=(3, 4))
        return x.float().mean(dim=(3, 4)), r4


# Either feature backbone: both give (main layer, second layer or None) per native step.
Backbone = I3DBackbone | InceptionBackbone


def pool_steps(steps: torch.Tensor, group: int) -> torch.Tensor:
    """Average `group` consecutive native steps into one stored feature.

    steps: (S, C) -> (S // group, C) float32; trailing steps that do not fill a group are
    dropped. The one pooling used by the extractor and by end-to-end training.
    """
    s = steps.shape[0] // group * group
    return steps[:s].reshape(s // group, group, -1).float().mean(dim=1)


def temporal_reach(module: nn.Module) -> tuple[int, int, int]:
    """(lo, hi, step) such that output step o depends on input frames [o*step+lo, o*step+hi].

    A module with its own `temporal_reach()` (inception_i3d: parallel branches, SAME padding)
    answers for itself. Otherwise walks the Conv3d / pooling layers in order; in a ResNet the
    main path is the longest chain, and the 1x1 shortcut convolutions add no temporal extent.
    """
    own = getattr(module, "temporal_reach", None)
    if callable(own):
        return own()
    lo, hi, step = 0, 0, 1
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.MaxPool3d | nn.AvgPool3d):
            k = _t(m.kernel_size)
            s = _t(m.stride)
            p = _t(m.padding)
            d = _t(getattr(m, "dilation", 1))
            lo += -p * step
            hi += ((k - 1) * d - p) * step
            step *= s
    return lo, hi, step


def _t(v: int | tuple[int, ...]) -> int:
    return int(v[0] if isinstance(v, tuple | list) else v)


def required_halo(backbone: nn.Module) -> int:
    """Smallest halo (frames) for exact chunking of `backbone`, a multiple of its native step
    so chunk inputs start on its grid (18 for i3d_r50, 40 for inception_i3d)."""
    lo, hi, step = temporal_reach(backbone)
    # A core step o (frames step*o .. step*o+step-1 inside the core) must see all of
    # [step*o + lo, step*o + hi] inside the chunk's input.
    need = max(-lo, hi - (step - 1))
    return -(-need // step) * step


def _build(seed: int) -> nn.Module:
    # Initialise under a private RNG state so a seed gives the same weights whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return i3d_r50(pretrained=False)


def kinetics_path() -> Path:
    """Where the official checkpoint is looked for: `torch.hub.get_dir()/checkpoints/`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / KINETICS_FILE


def fetch_kinetics() -> Path:
    """The official checkpoint file, downloaded into the hub cache if missing."""
    path = kinetics_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(KINETICS_URL, str(path), progress=True)
    except Exception as e:
        raise WeightsError(
            f"Kinetics weights not found at {path} and the download from {KINETICS_URL} failed "
            f"({type(e).__name__}: {e}). Download {KINETICS_FILE} on a machine with network and "
            f"copy it to {path} (or set TORCH_HOME), or pass --weights PATH."
        ) from e
    return path


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict (see `read_checkpoint` for the formats)."""
    return read_checkpoint(path)[0]


def check_backbone_state(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """The backbone part of `state`, after checking every key and shape; head keys are ignored."""
    prefixes = tuple(f"blocks.{i}." for i in range(BACKBONE_BLOCKS))
    wanted = {k: v for k, v in reference.items() if k.startswith(prefixes)}
    # BatchNorm's step counter does not change inference; older checkpoints may lack it.
    return check_state({k: v for k, v in state.items() if k.startswith(prefixes)}, wanted, path,
                       "not an i3d_r50 checkpoint",
                       optional=lambda k: k.endswith("num_batches_tracked"))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_backbone(weights: str = "kinetics", seed: int = 0, res4: bool = False,
                   model: str = MODEL_NAME) -> tuple[Backbone, Weights]:
    """The backbone `model` in eval mode with `weights`: "kinetics", "random" (seeded) or a
    file path (see `extract.inception_weights` for inception_i3d's).

    Never falls back to random weights: a missing or wrong checkpoint raises WeightsError.
    """
    if backbone_spec(model) is SPECS[INCEPTION]:
        # Getting the Kinetics weights the first time downloads 47 MB: say so, as torch.hub
        # does for i3d_r50's.
        return build_inception_backbone(weights, seed, res4, log=_stderr)
    net = _build(seed)
    if weights == "random":
        info = Weights(label="random", sha256=state_digest(net.state_dict()), seed=seed)
    else:
        path = fetch_kinetics() if weights == "kinetics" else Path(weights)
        reference = net.state_dict()
        raw, mgdet = read_checkpoint(path)
        state = check_backbone_state(raw, reference, path)
        net.load_state_dict(state, strict=False)
        label = "kinetics" if weights == "kinetics" else str(Path(weights).resolve())
        # A training checkpoint is rewritten with other content (optimiser, threshold): its
        # digest is that of the backbone weights alone, so equal weights give an equal key.
        info = Weights(label=label, sha256=state_digest(state) if mgdet else file_sha256(path))
    backbone = I3DBackbone(net, res4=res4).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone, info


@dataclass
class RunOptions:
    """How features are computed (never what they are, up to float rounding).

    chunk_frames: core frames per chunk (a multiple of the stride); halo: context frames each
    side (default: the computed minimum); batch_chunks: chunks per forward (CUDA only).
    """

    chunk_frames: int = 256
    halo: int | None = None
    batch_chunks: int = 1


@dataclass
class Features:
    """res5: (T, C) float32, the main layer (i3d_r50's res5, 2048; inception_i3d's Mixed_5c,
    1024); res4: (T, C4) float32, the second (res4, 1024; Mixed_4f, 832) or None; num_frames:
    input frames."""

    res5: np.ndarray
    res4: np.ndarray | None
    num_frames: int


class ChunkedExtractor:
    """Run the backbone over a stream of frames in overlapping chunks; see the module docstring."""

    def __init__(self, backbone: Backbone, stride: int = 4, device: str | torch.device = "cpu",
                 options: RunOptions | None = None) -> None:
        if stride not in (2, 4, 8):
            raise ValueError(f"stride must be 2, 4 or 8 frames, got {stride}")
        self.step = temporal_reach(backbone)[2]
        if stride % self.step:
            raise ValueError(f"stride must be a multiple of {backbone.model}'s temporal stride "
                             f"of {self.step} frames, got {stride}")
        options = options or RunOptions()
        if options.chunk_frames <= 0 or options.chunk_frames % stride:
            raise ValueError(f"chunk_frames must be a positive multiple of the stride {stride}, "
                             f"got {options.chunk_frames}")
        need = required_halo(backbone)
        halo = need if options.halo is None else options.halo
        if halo < need or halo % self.step:
            raise ValueError(f"halo must be a multiple of {self.step} and >= {need} frames (the "
                             f"backbone's reach), got {halo}")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.backbone = backbone.to(self.device).to(memory_format=torch.channels_last_3d)
        self.stride = stride
        self.chunk = options.chunk_frames
        self.halo = halo
        self.batch = max(1, options.batch_chunks) if self.cuda else 1

    @torch.inference_mode()
    def _forward(self, inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, Tensor4]]:
        """inputs: list of (n, h, w, 3) uint8 with equal n -> per input (res5, res4) (T', C)."""
        x = torch.cat([self.backbone.normalize(f.to(self.device, non_blocking=True))
                       for f in inputs])
        x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            r5, r4 = self.backbone(x)
        out = []
        for i in range(len(inputs)):
            out.append((r5[i].t(), None if r4 is None else r4[i].t()))
        return out

    def _pool(self, steps: torch.Tensor) -> np.ndarray:
        """(S, C) native steps (S a multiple of stride // step) -> (S // g, C) stride features."""
        return pool_steps(steps, self.stride // self.step).cpu().numpy()

    def run(self, frames: Iterable[torch.Tensor],
            progress: Callable[[int], None] | None = None) -> Features:
        """frames: chunks of (n, h, w, 3) uint8 10 fps frames, in order -> Features.

        Only about chunk_frames + 2 * halo frames are held at once. `progress(n)` is called with
        the number of frames whose features are done.
        """
        res5: list[np.ndarray] = []
        res4: list[np.ndarray] = []
        for r5, r4 in self.iter_steps(frames, progress):
            res5.append(r5)
            if r4 is not None:
                res4.append(r4)
        n = self._num_frames
        t = n // self.stride
        dim5, dim4 = self.backbone.dims
        r5 = np.concatenate(res5) if res5 else np.zeros((0, dim5), np.float32)
        r4 = None
        if self.backbone.res4:
            r4 = np.concatenate(res4) if res4 else np.zeros((0, dim4), np.float32)
        assert r5.shape[0] == t, (r5.shape, t)
        return Features(res5=r5, res4=r4, num_frames=n)

    def iter_steps(self, frames: Iterable[torch.Tensor],
                   progress: Callable[[int], None] | None = None,
                   ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """The features of `run`, as consecutive blocks (res5 (t, 2048), res4 (t, 1024) | None)
        yielded as soon as each chunk's are final (its core plus the halo after it has arrived):
        what a live source needs. Their concatenation is `run`'s result."""
        pending: list[tuple[torch.Tensor, int, int, int]] = []  # (input, in_start, c0, c1)
        for item in self._chunks(frames):
            if pending and item[0].shape != pending[0][0].shape:
                yield from self._flush(pending, progress)
            pending.append(item)
            if len(pending) >= self.batch:  # at once: a live source waits on these features
                yield from self._flush(pending, progress)
        if pending:
            yield from self._flush(pending, progress)

    def _flush(self, pending: list[tuple[torch.Tensor, int, int, int]],
               progress: Callable[[int], None] | None,
               ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        outs = self._forward([p[0] for p in pending])
        items = list(pending)
        pending.clear()
        for (_, start, c0, c1), (r5, r4) in zip(items, outs, strict=True):
            a, b = (c0 - start) // self.step, (c1 - start) // self.step
            if progress is not None:
                progress(c1 - c0)
            yield self._pool(r5[a:b]), None if r4 is None else self._pool(r4[a:b])

    def _chunks(self, frames: Iterable[torch.Tensor]) -> Iterator[Chunk]:
        """Yield (input frames, input start, core start, core end) as soon as each is complete.

        The core of the last chunk ends at the last full stride group; the input still reaches
        to the last frame, as in a one-pass run.
        """
        buf: list[torch.Tensor] = []
        buf_start = 0  # global index of buf's first frame
        buf_len = 0
        c0 = 0
        self.max_buffered = 0  # frames held at once: bounded whatever the stream's length
        for chunk in frames:
            buf.append(chunk)
            buf_len += chunk.shape[0]
            self.max_buffered = max(self.max_buffered, buf_len)
            while buf_start + buf_len >= c0 + self.chunk + self.halo:
                c1 = c0 + self.chunk
                yield self._cut(buf, buf_start, c0, c1, c1 + self.halo)
                c0 = c1
                buf, buf_start, buf_len = self._trim(buf, buf_start, c0 - self.halo)
        n = buf_start + buf_len
        self._num_frames = n
        end = n // self.stride * self.stride
        while c0 < end:
            c1 = min(c0 + self.chunk, end)
            yield self._cut(buf, buf_start, c0, c1, n)
            c0 = c1

    def _cut(self, buf: list[torch.Tensor], buf_start: int, c0: int, c1: int,
             stop: int) -> tuple[torch.Tensor, int, int, int]:
        start = max(0, c0 - self.halo)
        data = torch.cat(buf) if len(buf) > 1 else buf[0]
        return data[start - buf_start:stop - buf_start], start, c0, c1

    @staticmethod
    def _trim(buf: list[torch.Tensor], buf_start: int,
              keep_from: int) -> tuple[list[torch.Tensor], int, int]:
        """Drop frames before `keep_from` (global index)."""
        data = torch.cat(buf) if len(buf) > 1 else buf[0]
        cut = max(0, keep_from - buf_start)
        data = data[cut:]
        return [data], buf_start + cut, data.shape[0]


def default_chunk_frames(device: torch.device) -> int:
    """Core frames per chunk: long enough that the 2 x 18 halo frames of i3d_r50 cost under 15%
    (inception_i3d's 2 x 40 cost 24% of 256 on a CPU)."""
    return 512 if device.type == "cuda" else 256
