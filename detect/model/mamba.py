"""A Mamba v1 block with mamba-ssm's parameter names, shapes and initialisation.

CPU and CI run a pure-PyTorch selective scan; on CUDA the same module (same weights) can call
mamba-ssm's `selective_scan_fn` kernel instead (`backend="cuda"`, or `"auto"` when it imports).
A state_dict therefore loads strictly between this module and `mamba_ssm.Mamba` in both directions.

Layout conventions follow `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`:
u, delta, z are (B, d_inner, L); A is (d_inner, N); B and C are (B, N, L); D and delta_bias are
(d_inner,).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "torch", "cuda")


class MambaBackendError(RuntimeError):
    """The requested selective-scan backend cannot run here."""


def scan_dtype(t: Tensor) -> torch.dtype:
    """Dtype the scan runs in: fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 (tests, gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _states(a: Tensor, b: Tensor) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t from h_0 = 0 for all t; a, b, result: (L, ...)."""
    h = torch.empty_like(b)
    if a.shape[0]:
        h[0] = b[0]
    for t in range(1, a.shape[0]):
        torch.addcmul(b[t], a[t], h[t - 1], out=h[t])
    return h


def _contract_state(x: Tensor, v: Tensor) -> Tensor:
    """sum_n x[..., d, n] v[..., n]: (L, Bt, d, N), (L, Bt, N) -> (L, Bt, d), as one bmm."""
    L, Bt, d, N = x.shape
    return torch.bmm(x.reshape(L * Bt, d, N), v.reshape(L * Bt, N, 1)).view(L, Bt, d)


def _contract_channels(x: Tensor, v: Tensor) -> Tensor:
    """sum_d x[..., d, n] v[..., d]: (L, Bt, d, N), (L, Bt, d) -> (L, Bt, N), as one bmm."""
    L, Bt, d, N = x.shape
    return torch.bmm(v.reshape(L * Bt, 1, d), x.reshape(L * Bt, d, N)).view(L, Bt, N)


class _SelectiveScan(torch.autograd.Function):
    """y_t = <h_t, C_t>, h_t = exp(dt_t A) * h_{t-1} + (dt_t u_t) B_t over the state axis.

    dt, dtu: (L, Bt, d); A: (d, N); B, C: (L, Bt, N) -> y: (L, Bt, d).

    Autograd through a step loop keeps every step's state, decay and drive, (L, Bt, d, N) each,
    and replays 4L small nodes backwards. Here the forward keeps only its (L, Bt, d)- and
    (L, Bt, N)-sized inputs; the backward rebuilds decay, drive and states once, runs the adjoint
    recurrence g_t = a_{t+1} g_{t+1} + dy_t C_t in reverse (one fused multiply-add per step) and
    gets every input's gradient from g in a few vectorised reductions, recomputing instead of
    storing as mamba-ssm's kernel does.
    """

    @staticmethod
    def _decay_drive(dt: Tensor, A: Tensor, dtu: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
        return torch.exp(dt.unsqueeze(-1) * A), dtu.unsqueeze(-1) * B.unsqueeze(2)

    @staticmethod
    def forward(ctx, dt: Tensor, A: Tensor, dtu: Tensor, B: Tensor, C: Tensor) -> Tensor:  # noqa: D102
        a, b = _SelectiveScan._decay_drive(dt, A, dtu, B)
        h = _states(a, b)
        ctx.save_for_backward(dt, A, dtu, B, C)
        return _contract_state(h, C)

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor, ...]:  # noqa: D102
        dt, A, dtu, B, C = ctx.saved_tensors
        a, b = _SelectiveScan._decay_drive(dt, A, dtu, B)
        h = _states(a, b)
        drive = gy.unsqueeze(-1) * C.unsqueeze(2)  # (L, Bt, d, N): dy_t C_t
        g = torch.empty_like(drive)
        L = a.shape[0]
        if L:
            g[L - 1] = drive[L - 1]
        for t in range(L - 2, -1, -1):
            torch.addcmul(drive[t], a[t + 1], g[t + 1], out=g[t])
        dC = _contract_channels(h, gy)
        d_dtu = _contract_state(g, B)
        dB = _contract_channels(g, dtu)
        # d(loss)/d(exp(dt A)) = g_t h_{t-1}; times a for the exponent's gradient.
        ga = a.mul_(torch.cat([torch.zeros_like(h[:1]), h[:-1]]).mul_(g))
        d_dt = (ga * A).sum(-1)
        dA = (ga.mul_(dt.unsqueeze(-1))).sum((0, 1))
        return d_dt, dA, d_dtu, dB, dC


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Selective scan in pure PyTorch, computed in fp32 (fp64 for fp64 input) under any autocast.

    h_t = exp(delta_t * A) h_{t-1} + delta_t * B_t * u_t,  y_t = <C_t, h_t> + D * u_t,
    then y * silu(z). The recurrence is one fused multiply-add per step over (Bt, d, N), with a
    hand-written backward that recomputes instead of storing (`_SelectiveScan`).

    u, delta, z: (Bt, d, L); A: (d, N); B, C: (Bt, N, L); D, delta_bias: (d,).
    Returns (Bt, d, L) in u's dtype.
    """
    dtype, ct = u.dtype, scan_dtype(u)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u32 = u.to(ct)
        dt = delta.to(ct)
        if delta_bias is not None:
            dt = dt + delta_bias.to(ct)[None, :, None]
        if delta_softplus:
            dt = F.softplus(dt)
        # (L, Bt, ...) layout so each step reads a contiguous slab.
        dt_l = dt.permute(2, 0, 1).contiguous()  # (L, Bt, d)
        dtu_l = (dt * u32).permute(2, 0, 1).contiguous()  # (L, Bt, d)
        B_l = B.to(ct).permute(2, 0, 1).contiguous()  # (L, Bt, N)
        C_l = C.to(ct).permute(2, 0, 1).contiguous()  # (L, Bt, N)
        y = _SelectiveScan.apply(dt_l, A.to(ct), dtu_l, B_l, C_l).permute(1, 2, 0)  # (Bt, d, L)
        if D is not None:
            y = y + D.to(ct)[None, :, None] * u32
        if z is not None:
            y = y * F.silu(z.to(ct))
    return y.to(dtype)


@functools.cache
def _probe_cuda_scan() -> Callable[..., Tensor] | str:
    """mamba-ssm's selective_scan_fn, or why it cannot be used (probed once per process, since a
    failed import is retried from scratch by Python and "auto" asks on every forward)."""
    try:
        from mamba_ssm.ops import selective_scan_interface as ssi
    except Exception as e:  # ImportError, or the extension's undefined-symbol errors
        return (
            "mamba backend 'cuda' needs mamba-ssm (pip install 'mgdet[cuda]' on a CUDA machine); "
            f"importing mamba_ssm.ops.selective_scan_interface failed: {e}"
        )
    if getattr(ssi, "selective_scan_cuda", True) is None:
        return (
            "mamba backend 'cuda': mamba-ssm is installed without its compiled "
            "selective_scan_cuda extension"
        )
    return ssi.selective_scan_fn


def _cuda_scan() -> Callable[..., Tensor]:
    """mamba-ssm's CUDA selective scan, or a MambaBackendError saying why it is unavailable."""
    found = _probe_cuda_scan()
    if isinstance(found, str):
        raise MambaBackendError(found)
    return found


def cuda_backend_available() -> bool:
    """True when mamba-ssm's kernel imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        _cuda_scan()
    except MambaBackendError:
        return False
    return True


def resolve_backend(backend: str, x: Tensor) -> str:
    """The backend a call with input `x` uses: "torch" or "cuda"."""
    if backend not in BACKENDS:
        raise ValueError(f"mamba backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cuda" if x.is_cuda and cuda_backend_available() else "torch"
    if backend == "cuda" and not x.is_cuda:
        raise MambaBackendError(
            f"mamba backend 'cuda' needs CUDA tensors, got a tensor on {x.device}; "
            "use backend 'torch' or 'auto' on CPU"
        )
    return backend


class Mamba(nn.Module):
    """Mamba v1 mixer (mamba_ssm.modules.mamba_simple.Mamba), input (B, L, d_model) -> same.

    Parameter names, shapes and init equal mamba-ssm's: in_proj, conv1d (depthwise, causal),
    x_proj, dt_proj (bias = softplus^-1 of a log-uniform dt), A_log (S4D-real), D, out_proj.

    `bidirectional=True` adds a backward direction in the Vision Mamba "v2" layout: own
    conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b, sharing in_proj, out_proj and the gate; the
    backward scan runs over the reversed sequence and the two directions are averaged (Vim's
    `if_devide_out`), which keeps the output scale of the one-way block.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "torch",
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"mamba backend must be one of {BACKENDS}, got {backend!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.bidirectional = bidirectional

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        dt_args = (dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        suffixes = ("", "_b") if bidirectional else ("",)
        for s in suffixes:
            conv = nn.Conv1d(
                self.d_inner,
                self.d_inner,
                kernel_size=d_conv,
                groups=self.d_inner,
                padding=d_conv - 1,
                bias=conv_bias,
            )
            x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = self._make_dt_proj(*dt_args)
            # S4D-real: A = -(1..N) in every channel, stored as log for positivity.
            A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
            A_log = nn.Parameter(torch.log(A))
            D = nn.Parameter(torch.ones(self.d_inner))
            setattr(self, f"conv1d{s}", conv)
            setattr(self, f"x_proj{s}", x_proj)
            setattr(self, f"dt_proj{s}", dt_proj)
            # mamba-ssm names the backward decay A_b_log (Vim), not A_log_b.
            setattr(self, "A_log" if not s else "A_b_log", A_log)
            setattr(self, f"D{s}", D)

    def no_weight_decay(self) -> set[str]:
        """A (as its log) and D are the SSM's dynamics, not weights to shrink (mamba-ssm)."""
        names = {"A_log", "D"}
        return names | {"A_b_log", "D_b"} if self.bidirectional else names

    def _make_dt_proj(
        self, dt_min: float, dt_max: float, dt_init: str, dt_scale: float, floor: float
    ) -> nn.Linear:
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                dt_proj.weight.fill_(std)
            else:
                dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(
                torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=floor)
            # softplus^-1(dt) = dt + log(1 - exp(-dt)), so softplus(bias) starts at dt.
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_proj.bias._no_reinit = True
        return dt_proj

    def _direction(self, x: Tensor, z: Tensor, suffix: str, scan: Callable[..., Tensor]) -> Tensor:
        """One scan direction. x, z: (B, d_inner, L) -> (B, d_inner, L) (gated)."""
        conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        x_proj: nn.Linear = getattr(self, f"x_proj{suffix}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        A_log: Tensor = self.A_log if not suffix else self.A_b_log
        D: Tensor = getattr(self, f"D{suffix}")
        L = x.shape[-1]
        x = F.silu(conv(x)[..., :L])  # causal: keep the first L outputs of the padded conv
        x_dbl = x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        ct = scan_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # dt stays fp32 under autocast; its bias is added (and softplus applied) in the scan.
            dt = F.linear(dt.to(ct), dt_proj.weight.to(ct)).transpose(1, 2)  # (B, d_inner, L)
        if scan is not selective_scan_torch:
            dt = dt.to(x.dtype)  # the kernel wants delta in u's dtype; it upcasts internally
        A = -torch.exp(A_log.to(ct))
        return scan(
            x,
            dt,
            A,
            Bm.transpose(1, 2).contiguous(),
            Cm.transpose(1, 2).contiguous(),
            D.to(ct),
            z=z,
            delta_bias=dt_proj.bias.to(ct),
            delta_softplus=True,
        )

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (B, L, d_model) -> (B, L, d_model)."""
        if hidden.ndim != 3 or hidden.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba expects (B, L, {self.d_model}) input, got {tuple(hidden.shape)}"
            )
        backend = resolve_backend(self.backend, hidden)
        scan = _cuda_scan() if backend == "cuda" else selective_scan_torch
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        if backend == "cuda":
            x, z = x.contiguous(), z.contiguous()
        y = self._direction(x, z, "", scan)
        if self.bidirectional:
            y_b = self._direction(x.flip(-1), z.flip(-1), "_b", scan).flip(-1)
            y = (y + y_b) / 2
        return self.out_proj(y.transpose(1, 2))


def check_cuda_parity(module: Mamba, x: Tensor) -> float:
    """Max abs difference between the torch and cuda backends on `x` (B, L, d_model), CUDA only.

    Compares the outputs and the gradients of `x` and of every parameter (loss = sum of outputs
    times a fixed random tensor), so both the forward and the backward kernels are checked. Run it
    before trusting the kernel; upstream's own fp32 tolerance is about 2e-3 absolute.
    """
    if not x.is_cuda:
        raise MambaBackendError(f"check_cuda_parity needs CUDA tensors, got {x.device}")
    _cuda_scan()  # a clear error when mamba-ssm is missing
    saved = module.backend
    weight = torch.randn_like(x)  # output has x's shape; a random weight checks every entry
    results = []
    try:
        for backend in ("torch", "cuda"):
            module.backend = backend
            module.zero_grad(set_to_none=True)
            xi = x.detach().clone().requires_grad_(True)
            out = module(xi)
            (out * weight).sum().backward()
            grads = [xi.grad] + [p.grad for p in module.parameters() if p.grad is not None]
            results.append((out.detach(), [g.detach().clone() for g in grads]))
    finally:
        module.backend = saved
        module.zero_grad(set_to_none=True)
    (out_t, g_t), (out_c, g_c) = results
    diff = (out_t - out_c).abs().max().item()
    for a, b in zip(g_t, g_c, strict=True):
        diff = max(diff, (a - b).abs().max().item())
    return diff
