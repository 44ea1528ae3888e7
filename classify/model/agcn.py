"""2s-AGCN (Shi et al., CVPR 2019): a skeleton classifier whose graph is partly learned.

Each layer is a spatial graph convolution over joints followed by a temporal convolution over
frames, with a residual. The graph of subset k (identity, inward, outward) is

    A_k + B_k + C_k(x),    C_k = softmax over senders of theta_k(x)^T phi_k(x) / (c_e T)

A_k the fixed normalised BODY_25 partition, B_k a free V x V matrix (initialised near 0), C_k the
data-dependent similarity of joints (1x1 embeddings to c_e = C_out / 4 channels). The two streams
("2s") are the same network trained on joints and on bones; their softmax scores are summed.

Shapes: x (N, C, T, V): C input channels (x, y, confidence), T frames, V joints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from classify.config import AGCNConfig
from classify.data.skeleton import NUM_JOINTS, adjacency_subsets


class GraphConv(nn.Module):
    """Adaptive graph convolution: (N, C_in, T, V) -> (N, C_out, T, V)."""

    def __init__(self, c_in: int, c_out: int, A: Tensor, adaptive: bool = True) -> None:
        super().__init__()
        k, v, _ = A.shape
        self.register_buffer("A", A)
        self.adaptive = adaptive
        self.embed = max(1, c_out // 4)
        self.B = nn.Parameter(torch.full((k, v, v), 1e-6)) if adaptive else None
        self.theta = nn.ModuleList(nn.Conv2d(c_in, self.embed, 1) for _ in range(k))
        self.phi = nn.ModuleList(nn.Conv2d(c_in, self.embed, 1) for _ in range(k))
        self.conv = nn.ModuleList(nn.Conv2d(c_in, c_out, 1) for _ in range(k))
        for conv in self.conv:  # the subsets add up: keep the sum's scale (as the paper's code)
            nn.init.normal_(conv.weight, 0, (2.0 / (c_out * c_in * k)) ** 0.5)
            nn.init.zeros_(conv.bias)
        self.bn = nn.BatchNorm2d(c_out)
        nn.init.constant_(self.bn.weight, 1e-6)
        self.down = (nn.Identity() if c_in == c_out
                     else nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out)))


    def no_weight_decay(self) -> set[str]:
        """B, the learned adjacency, starts at 1e-6 and is not a weight to shrink (2s-AGCN)."""
        return {"B"} if self.B is not None else set()
    def graphs(self, x: Tensor) -> Tensor:
        """(N, C_in, T, V) -> (N, K, V, V): each subset's graph for this sample."""
        n, _, t, v = x.shape
        A = self.A[None].expand(n, -1, -1, -1)
        if not self.adaptive:
            return A
        sims = []
        for theta, phi in zip(self.theta, self.phi, strict=True):
            a = theta(x).permute(0, 3, 1, 2).reshape(n, v, -1)  # (N, V, c_e T)
            b = phi(x).reshape(n, -1, v)  # (N, c_e T, V)
            sims.append(torch.softmax(torch.bmm(a, b) / a.shape[-1], dim=-2))
        return A + self.B[None] + torch.stack(sims, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, t, v = x.shape
        graphs = self.graphs(x)
        y = 0
        for k, conv in enumerate(self.conv):
            y = y + conv(torch.matmul(x.reshape(n, c * t, v), graphs[:, k]).reshape(n, c, t, v))
        return F.relu(self.bn(y) + self.down(x))


class TemporalConv(nn.Module):
    """(N, C_in, T, V) -> (N, C_out, T / stride, V): a (kernel x 1) convolution and batch norm."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 9, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1), ((kernel - 1) // 2, 0))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, A: Tensor, stride: int, kernel: int,
                 adaptive: bool, residual: bool = True) -> None:
        super().__init__()
        self.gcn = GraphConv(c_in, c_out, A, adaptive)
        self.tcn = TemporalConv(c_out, c_out, kernel, stride)
        if not residual:
            self.residual: nn.Module | None = None
        elif c_in == c_out and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = TemporalConv(c_in, c_out, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.tcn(self.gcn(x))
        return F.relu(y if self.residual is None else y + self.residual(x))


class AGCN(nn.Module):
    """One stream: (N, C, T, V) -> logits (N, classes); `features` gives the pooled (N, C_last)
    and `tokens` the last layer's (N, T', V, C_last) for fusion with other modalities."""

    def __init__(self, cfg: AGCNConfig, num_classes: int, in_channels: int = 3,
                 num_joints: int = NUM_JOINTS, A: Tensor | None = None) -> None:
        super().__init__()
        if len(cfg.channels) != len(cfg.strides) or not cfg.channels:
            raise ValueError("agcn channels and strides must be non-empty and of equal length")
        A = torch.as_tensor(adjacency_subsets(num_joints)) if A is None else A
        self.data_bn = nn.BatchNorm1d(in_channels * num_joints)
        blocks, c_prev = [], in_channels
        for i, (c, s) in enumerate(zip(cfg.channels, cfg.strides, strict=True)):
            blocks.append(Block(c_prev, c, A, s, cfg.temporal_kernel, cfg.adaptive,
                                residual=i > 0))
            c_prev = c
        self.blocks = nn.Sequential(*blocks)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(c_prev, num_classes)
        nn.init.normal_(self.fc.weight, 0, (2.0 / num_classes) ** 0.5)
        nn.init.zeros_(self.fc.bias)

    def tokens(self, x: Tensor) -> Tensor:
        n, c, t, v = x.shape
        # Batch norm per (joint, channel) over the data, as the paper's data_bn.
        x = self.data_bn(x.permute(0, 3, 1, 2).reshape(n, v * c, t))
        x = x.reshape(n, v, c, t).permute(0, 2, 3, 1)
        return self.blocks(x).permute(0, 2, 3, 1)

    def features(self, x: Tensor) -> Tensor:
        return self.tokens(x).mean(dim=(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.features(x)))
