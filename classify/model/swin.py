"""SwinFace's face backbone: a Swin-T at 112 x 112 (patch 2, window 7), as a face embedder.

SwinFace (Qin et al., 2023) trains a Swin-T on 112 x 112 aligned faces with patch size 2 so that
the four stages see 56, 28, 14 and 7 tokens a side (window 7, embed 96, depths 2-2-6-2, heads
3-6-12-24). The module and parameter names here are the original Swin code's
(`patch_embed.proj`, `layers.i.blocks.j.attn.qkv`, `layers.i.downsample.reduction`, ...), which
SwinFace's checkpoints use, so a user's checkpoint loads key by key. We take the backbone only:
the face embedding is the final norm's tokens averaged, (B, 768); SwinFace's multi-task heads
(FAM, task subnets) are not needed for emotion and are ignored when a checkpoint has them.

Weights: a checkpoint path (a SwinFace training checkpoint with `state_dict_backbone`, or a bare
state dict; `module.` / `backbone.` prefixes are stripped), read with `weights_only=True`;
"random" only when asked, said on stderr. There is no public download to fall back on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extract.weights import WeightsError, file_sha256, load_torch_file, state_dict_in

FACE_SIZE = 112
EMBED_DIM = 768


def window_partition(x: Tensor, w: int) -> Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C)."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(x: Tensor, w: int, h: int, wd: int) -> Tensor:
    """(B * H/w * W/w, w*w, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    b = x.shape[0] // ((h // w) * (wd // w))
    x = x.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (w x w) windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)  # (2, w*w)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        index = rel[..., 0] * (2 * window - 1) + rel[..., 1]
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B*nW, N, C); mask (nW, N, N) of 0 / -100 or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)[None]  # (1, heads, N, N)
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias + mask[:, None]).repeat(bw // nw, 1, 1, 1)  # window i of each image
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                             scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def shift_mask(res: int, window: int, shift: int) -> Tensor:
    """(nW, w*w, w*w): -100 between tokens that the cyclic shift brought from different regions."""
    img = torch.zeros(1, res, res, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    cnt = 0
    for hs in cuts:
        for ws in cuts:
            img[:, hs, ws] = cnt
            cnt += 1
    win = window_partition(img, window).squeeze(-1)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, res: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        if res <= window:  # one window covers the map: no shift (as the original code)
            window, shift = res, 0
        self.res, self.window, self.shift = res, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.register_buffer("attn_mask", shift_mask(res, window, shift) if shift else None,
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H*W, C) -> (B, H*W, C)."""
        b, n, c = x.shape
        h = self.norm1(x).view(b, self.res, self.res, c)
        if self.shift:
            h = torch.roll(h, (-self.shift, -self.shift), (1, 2))
        h = self.attn(window_partition(h, self.window), self.attn_mask)
        h = window_reverse(h, self.window, self.res, self.res)
        if self.shift:
            h = torch.roll(h, (self.shift, self.shift), (1, 2))
        x = x + h.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """(B, H*W, C) -> (B, H/2*W/2, 2C): each 2 x 2 neighbourhood concatenated, then projected."""

    def __init__(self, dim: int, res: int) -> None:
        super().__init__()
        self.res = res
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        x = x.view(b, self.res, self.res, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, res: int, depth: int, heads: int, window: int,
                 downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SwinBlock(dim, res, heads, window, 0 if i % 2 == 0 else
                                              window // 2) for i in range(depth))
        self.downsample = PatchMerging(dim, res) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


@dataclass(frozen=True)
class SwinConfig:
    img_size: int = FACE_SIZE
    patch: int = 2
    window: int = 7
    dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    heads: tuple[int, ...] = (3, 6, 12, 24)


class SwinFaceBackbone(nn.Module):
    """Faces (B, 3, 112, 112), RGB in [-1, 1] (`face_input`) -> embeddings (B, 768)."""

    def __init__(self, cfg: SwinConfig = SwinConfig()) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg.patch, cfg.dim)
        res, dim = cfg.img_size // cfg.patch, cfg.dim
        layers = []
        for i, (d, h) in enumerate(zip(cfg.depths, cfg.heads, strict=True)):
            last = i == len(cfg.depths) - 1
            layers.append(BasicLayer(dim, res, d, h, cfg.window, downsample=not last))
            if not last:
                res, dim = res // 2, dim * 2
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim)
        self.apply(_init)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(1)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class FaceWeights:
    label: str  # "random" or the checkpoint path
    sha256: str  # of the file; "" for random


def read_swinface_checkpoint(path: Path) -> dict[str, Tensor]:
    """The backbone's state dict from a SwinFace checkpoint (see the module docstring)."""
    return state_dict_in(load_torch_file(path), path,
                         containers=("state_dict_backbone", "state_dict"),
                         strip=("module.", "backbone."),
                         expected="SwinFace's 'state_dict_backbone' or a bare state dict")


def build_swinface(weights: str, seed: int = 0) -> tuple[SwinFaceBackbone, FaceWeights]:
    """(the backbone in eval mode, what it was loaded from); `weights` is a path or "random"."""
    torch.manual_seed(seed)
    model = SwinFaceBackbone()
    if weights == "random":
        print(f"warning: SwinFace Swin-T with RANDOM weights (seed {seed}); face embeddings "
              "carry no face knowledge", file=sys.stderr)
        return model.eval(), FaceWeights("random", "")
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"{path}: no such SwinFace checkpoint (give a path, or 'random' to "
                           "train from random weights on purpose)")
    state = read_swinface_checkpoint(path)
    own = model.state_dict()
    derived = ("relative_position_index", "attn_mask")  # recomputed here, not learned
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise WeightsError(f"{path}: does not fit SwinFace's Swin-T at 112: "
                           f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                           f"wrong shape {wrong[:5]}")
    ignored = [k for k in state if k not in own and not k.endswith(derived)]
    if ignored:
        print(f"{path}: ignoring {len(ignored)} keys that are not the backbone's "
              f"(e.g. {ignored[0]})", file=sys.stderr)
    model.load_state_dict({k: state[k] for k in own})
    sha = file_sha256(path)
    return model.eval(), FaceWeights(str(path), sha)


# SwinFace is trained in arcface_torch's convention: RGB in [-1, 1].
MEAN = torch.full((1, 3, 1, 1), 0.5)
STD = torch.full((1, 3, 1, 1), 0.5)


def face_input(crops: Tensor) -> Tensor:
    """(B, 112, 112, 3) uint8 -> (B, 3, 112, 112) float, normalised."""
    x = crops.permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD
