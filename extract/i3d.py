"""pytorchvideo's Kinetics I3D (`i3d_r50`) as a fully convolutional temporal feature extractor.

The backbone (blocks 0-5: stem, res2, pool, res3, res4, res5) has a temporal stride of 2, so it
gives one "native step" per 2 input frames; a stored feature averages `stride // 2` consecutive
native steps. Feature i covers frames [i*stride, (i+1)*stride); a video of N 10 fps frames gives
T = N // stride features (frames past the last full group only serve as context).

Long videos run in chunks: chunk c produces the features of frames [c*L, (c+1)*L) from the frames
[c*L - halo, (c+1)*L + halo) (clipped to the video). Because every chunk starts at an even frame
and the halo covers the backbone's temporal reach, chunked features equal one-pass features.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from extract.decode import normalize
from extract.weights import (
    Weights,
    WeightsError,
    check_state,
    file_sha256,
    load_torch_file,
    state_dict_in,
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


class I3DBackbone(nn.Module):
    """blocks.0-5 of `i3d_r50`, spatially averaged.

    forward: (N, 3, T, H, W) -> res5 (N, 2048, T // 2) and res4 (N, 1024, T // 2) or None.

    checkpointing: while gradients are recorded, run every residual block (and the stem) of a
    block that has trainable parameters under activation checkpointing, so training keeps only
    the block inputs and recomputes the rest in the backward pass. Blocks without trainable
    parameters run plainly (they record nothing when their input needs no gradient).
    """

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


def pool_steps(steps: torch.Tensor, group: int) -> torch.Tensor:
    """Average `group` consecutive native steps into one stored feature.

    steps: (S, C) -> (S // group, C) float32; trailing steps that do not fill a group are
    dropped. The one pooling used by the extractor and by end-to-end training.
    """
    s = steps.shape[0] // group * group
    return steps[:s].reshape(s // group, group, -1).float().mean(dim=1)


def temporal_reach(module: nn.Module) -> tuple[int, int, int]:
    """(lo, hi, step) such that output step o depends on input frames [o*step+lo, o*step+hi].

    Walks the Conv3d / pooling layers in order; in a ResNet the main path is the longest chain,
    and the 1x1 shortcut convolutions add no temporal extent.
    """
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
    """Smallest even halo (frames) for exact chunking of `backbone` (18 for i3d_r50)."""
    lo, hi, step = temporal_reach(backbone)
    # A core step o (frames step*o .. step*o+step-1 inside the core) must see all of
    # [step*o + lo, step*o + hi] inside the chunk's input.
    need = max(-lo, hi - (step - 1))
    return need + (need % 2)


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


# In an end-to-end mgdet checkpoint the I3D's state sits under this prefix of "model".
MGDET_BACKBONE_PREFIX = "backbone."


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(backbone-or-whole state_dict, is_mgdet) of a checkpoint file.

    Accepts a `.pyth` dict with `model_state`, a plain state_dict, or an mgdet training
    checkpoint of an end-to-end run (`runs/NAME/checkpoints/best.pt`: its "model" holds the
    backbone under "backbone."). A feature-mode mgdet checkpoint holds no backbone: an error.
    """
    obj = load_torch_file(path)
    mgdet = isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj
    if mgdet:
        mode = obj["config"].get("mode", "features") if isinstance(obj["config"], dict) else None
        obj = {k.removeprefix(MGDET_BACKBONE_PREFIX): v for k, v in obj["model"].items()
               if k.startswith(MGDET_BACKBONE_PREFIX)}
        if not obj:
            raise WeightsError(
                f"{path}: an mgdet checkpoint of a {mode!r}-mode run holds no I3D backbone; "
                "only end-to-end runs (mode = \"e2e\") finetune it"
            )
    state = state_dict_in(obj, path, containers=("model_state",),
                          expected="a dict of tensors, a dict with 'model_state', or an "
                          "end-to-end mgdet checkpoint")
    return state, mgdet


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


def build_backbone(weights: str = "kinetics", seed: int = 0,
                   res4: bool = False) -> tuple[I3DBackbone, Weights]:
    """The backbone in eval mode with `weights`: "kinetics", "random" (seeded) or a file path.

    Never falls back to random weights: a missing or wrong checkpoint raises WeightsError.
    """
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
    """res5: (T, 2048) float32; res4: (T, 1024) float32 or None; num_frames: input frames."""

    res5: np.ndarray
    res4: np.ndarray | None
    num_frames: int


class ChunkedExtractor:
    """Run the backbone over a stream of frames in overlapping chunks; see the module docstring."""

    def __init__(self, backbone: I3DBackbone, stride: int = 4, device: str | torch.device = "cpu",
                 options: RunOptions | None = None) -> None:
        if stride not in (2, 4, 8):
            raise ValueError(f"stride must be 2, 4 or 8 frames, got {stride}")
        options = options or RunOptions()
        if options.chunk_frames <= 0 or options.chunk_frames % stride:
            raise ValueError(f"chunk_frames must be a positive multiple of the stride {stride}, "
                             f"got {options.chunk_frames}")
        need = required_halo(backbone)
        halo = need if options.halo is None else options.halo
        if halo < need or halo % 2:
            raise ValueError(f"halo must be even and >= {need} frames (the backbone's reach), "
                             f"got {halo}")
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
        x = torch.cat([normalize(f.to(self.device, non_blocking=True)) for f in inputs])
        x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            r5, r4 = self.backbone(x)
        out = []
        for i in range(len(inputs)):
            out.append((r5[i].t(), None if r4 is None else r4[i].t()))
        return out

    def _pool(self, steps: torch.Tensor) -> np.ndarray:
        """(S, C) native steps (S a multiple of stride // 2) -> (S // g, C) stride features."""
        return pool_steps(steps, self.stride // 2).cpu().numpy()

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
        r5 = np.concatenate(res5) if res5 else np.zeros((0, RES5_DIM), np.float32)
        r4 = None
        if self.backbone.res4:
            r4 = np.concatenate(res4) if res4 else np.zeros((0, RES4_DIM), np.float32)
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
            a, b = (c0 - start) // 2, (c1 - start) // 2
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
    """Core frames per chunk: long enough that the 2 x 18 halo frames cost under 15%."""
    return 512 if device.type == "cuda" else 256
