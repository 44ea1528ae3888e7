"""torchvision's MViTv2-S as a clip token extractor for the RGB stream.

A clip of `frames` RGB frames at `size` x `size` gives (1 + frames / 2, 768) tokens: the class
token, then one token per temporal slot of the last stage (its spatial tokens averaged; the patch
embedding has a temporal stride of 2). Kinetics-400 weights (`mvit_v2_s-ae3be167.pth`, the file
torchvision downloads) are looked for in the torch hub cache, or read from a given path; they fit
only the 16 x 224 model they were trained at (the relative position tables depend on the input
size). Random weights are an explicit choice ("random"), never a fallback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.video.mvit import MSBlockConfig, MViT

from extract.weights import (
    Weights,
    WeightsError,
    check_state,
    file_sha256,
    load_torch_file,
    state_dict_in,
    state_digest,
)

MVIT_URL = "https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth"
MVIT_FILE = "mvit_v2_s-ae3be167.pth"
MVIT_FRAMES, MVIT_SIZE, MVIT_DIM = 16, 224, 768
# The Kinetics transform of torchvision's MViT weights (VideoClassification preset).
MVIT_MEAN = (0.45, 0.45, 0.45)
MVIT_STD = (0.225, 0.225, 0.225)


class MViTTokens(nn.Module):
    """(B, 3, T, H, W) normalised frames -> (B, 1 + T/2, 768) tokens (see the module docstring)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        net = self.net
        x = net.conv_proj(x)
        b, c, t, h, w = x.shape
        x = net.pos_encoding(x.flatten(2).transpose(1, 2))
        thw = (t, h, w)
        for block in net.blocks:
            x, thw = block(x, thw)
        x = net.norm(x)
        cls, grid = x[:, :1], x[:, 1:].reshape(b, thw[0], thw[1] * thw[2], -1)
        return torch.cat([cls, grid.mean(2)], 1)


def mvit_path() -> Path:
    """Where the Kinetics checkpoint is looked for: `torch.hub.get_dir()/checkpoints/`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / MVIT_FILE


def _build(frames: int, size: int, seed: int) -> nn.Module:
    if frames % 2 or size % 32:
        raise ValueError(f"MViTv2-S needs an even frame count and a size divisible by 32 "
                         f"(got {frames} frames at {size})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # torchvision's `mvit_v2_s` fixes the input size, so build its architecture here.
        return MViT(spatial_size=(size, size), temporal_size=frames,
                    block_setting=v2_s_blocks(), residual_pool=True,
                    residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True,
                    stochastic_depth_prob=0.2)


def v2_s_blocks() -> list[MSBlockConfig]:
    """The 16 blocks of torchvision's `mvit_v2_s` (heads, channels, pooling strides)."""
    blocks = []
    for i in range(16):
        heads = 1 if i == 0 else 2 if i < 3 else 4 if i < 14 else 8
        c_in = 96 if i < 2 else 192 if i < 4 else 384 if i < 15 else 768
        c_out = 96 if i == 0 else 192 if i < 3 else 384 if i < 14 else 768
        q = [1, 2, 2] if i in (1, 3, 14) else [1, 1, 1]
        kv = [1, 8, 8] if i == 0 else [1, 4, 4] if i < 3 else [1, 2, 2] if i < 14 else [1, 1, 1]
        blocks.append(MSBlockConfig(num_heads=heads, input_channels=c_in, output_channels=c_out,
                                    kernel_q=[3, 3, 3], kernel_kv=[3, 3, 3], stride_q=q,
                                    stride_kv=kv))
    return blocks


def read_mvit_checkpoint(path: Path, reference: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state_dict of a torchvision MViTv2-S checkpoint file (a plain state_dict, or under
    "model" / "model_state"), checked key by key against `reference`; the head is ignored."""
    state = state_dict_in(load_torch_file(path), path,
                          containers=("model_state", "model", "state_dict"))
    return check_state({k: v for k, v in state.items() if not k.startswith("head.")},
                       {k: v for k, v in reference.items() if not k.startswith("head.")},
                       path, "not an MViTv2-S checkpoint for this input size")


def build_mvit(weights: str = "kinetics", frames: int = MVIT_FRAMES, size: int = MVIT_SIZE,
               seed: int = 0) -> tuple[MViTTokens, Weights]:
    """The token extractor in eval mode with `weights`: "kinetics" (the hub cache file), a path,
    or "random" (seeded; said on stderr). A missing or unfitting checkpoint raises WeightsError."""
    net = _build(frames, size, seed)
    if weights == "random":
        print(f"warning: MViTv2-S with RANDOM weights (seed {seed}); RGB tokens carry no "
              "Kinetics knowledge", file=sys.stderr)
        info = Weights(label="random", sha256=state_digest(net.state_dict()), seed=seed)
    else:
        path = mvit_path() if weights == "kinetics" else Path(weights)
        if weights == "kinetics" and not path.is_file():
            raise WeightsError(f"Kinetics MViTv2-S weights not found at {path}: download "
                               f"{MVIT_URL} on a machine with network and copy it there (or "
                               "set TORCH_HOME), pass a checkpoint path, or choose random "
                               "weights explicitly")
        if (frames, size) != (MVIT_FRAMES, MVIT_SIZE):
            raise WeightsError(f"{path}: Kinetics MViTv2-S weights fit {MVIT_FRAMES} frames at "
                               f"{MVIT_SIZE}, not {frames} at {size}")
        state = read_mvit_checkpoint(path, net.state_dict())
        net.load_state_dict(state, strict=False)
        label = "kinetics" if weights == "kinetics" else str(path.resolve())
        info = Weights(label=label, sha256=file_sha256(path))
    model = MViTTokens(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def mvit_input(frames: Tensor) -> Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32 normalised with the Kinetics preset."""
    x = frames.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean = torch.tensor(MVIT_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(MVIT_STD).view(1, 3, 1, 1, 1)
    return (x - mean) / std
