import math

import pytest
import torch
import torch.nn.functional as F

from detect.model.mamba import (
    Mamba,
    MambaBackendError,
    check_cuda_parity,
    selective_scan_torch,
)


def naive_scan(u, delta, A, B, C, D, z, delta_bias):
    """Per-timestep, per-channel float64 recurrence written as plainly as possible."""
    args = (u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C, D, z, delta_bias = (t.double() for t in args)
    Bt, d, L = u.shape
    N = A.shape[1]
    y = torch.zeros(Bt, d, L, dtype=torch.float64)
    for b in range(Bt):
        for c in range(d):
            h = torch.zeros(N, dtype=torch.float64)
            for t in range(L):
                dt = F.softplus(delta[b, c, t] + delta_bias[c])
                h = torch.exp(dt * A[c]) * h + dt * B[b, :, t] * u[b, c, t]
                out = (C[b, :, t] * h).sum() + D[c] * u[b, c, t]
                y[b, c, t] = out * F.silu(z[b, c, t])
    return y


def naive_block(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's Mamba forward (slow path) step by step in float64, one sample at a time."""
    p = {k: v.double() for k, v in m.state_dict().items()}
    Bt, L, _ = x.shape
    d, N, R, K = m.d_inner, m.d_state, m.dt_rank, m.d_conv
    out = torch.zeros(Bt, L, m.d_model, dtype=torch.float64)
    A = -torch.exp(p["A_log"])
    for b in range(Bt):
        xz = x[b].double() @ p["in_proj.weight"].T  # (L, 2d): x first, then the gate z
        xs, zs = xz[:, :d], xz[:, d:]
        h = torch.zeros(d, N, dtype=torch.float64)
        for t in range(L):
            # causal depthwise conv: tap k of the kernel sees input t - (K - 1) + k
            conv = p["conv1d.bias"].clone()
            for k in range(K):
                s = t - (K - 1) + k
                if s >= 0:
                    conv = conv + p["conv1d.weight"][:, 0, k] * xs[s]
            xc = F.silu(conv)
            dbl = p["x_proj.weight"] @ xc
            dt_low, Bv, Cv = dbl[:R], dbl[R : R + N], dbl[R + N :]
            dt = F.softplus(p["dt_proj.weight"] @ dt_low + p["dt_proj.bias"])
            h = torch.exp(dt[:, None] * A) * h + (dt * xc)[:, None] * Bv[None, :]
            y = h @ Cv + p["D"] * xc
            out[b, t] = p["out_proj.weight"] @ (y * F.silu(zs[t]))
    return out


def random_scan_inputs(Bt=2, d=3, L=7, N=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bt, d, L, generator=g, dtype=dtype)
    delta = torch.randn(Bt, d, L, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(d, N, generator=g, dtype=dtype) * 2 - 0.1
    B = torch.randn(Bt, N, L, generator=g, dtype=dtype)
    C = torch.randn(Bt, N, L, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    z = torch.randn(Bt, d, L, generator=g, dtype=dtype)
    bias = torch.randn(d, generator=g, dtype=dtype) * 0.3
    return u, delta, A, B, C, D, z, bias


def test_scan_matches_naive_recurrence_fp32_and_fp64():
    args = random_scan_inputs()
    ref = naive_scan(*args)
    u, delta, A, B, C, D, z, bias = args
    y64 = selective_scan_torch(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, ref, rtol=1e-12, atol=1e-12)
    f32 = [t.float() for t in args]
    y32 = selective_scan_torch(*f32[:7], delta_bias=f32[7], delta_softplus=True)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), ref, rtol=1e-5, atol=1e-5)


def test_scan_gradcheck():
    args = [t.requires_grad_(True) for t in random_scan_inputs(Bt=1, d=2, L=4, N=3)]
    u, delta, A, B, C, D, z, bias = args

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True)

    assert torch.autograd.gradcheck(fn, tuple(args))


def test_block_matches_stepwise_reference_and_gradcheck():
    torch.manual_seed(0)
    m = Mamba(6, d_state=3, d_conv=3, expand=2).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_block(m, x), rtol=1e-10, atol=1e-12)
    xg = x[:1, :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(m, (xg,))


def test_causal():
    torch.manual_seed(1)
    m = Mamba(8, d_state=4)
    x = torch.randn(2, 12, 8)
    y = m(x)
    t = 6
    x2 = x.clone()
    x2[:, t:] += torch.randn(2, 12 - t, 8)
    y2 = m(x2)
    assert torch.equal(y[:, :t], y2[:, :t])
    assert (y[:, t:] - y2[:, t:]).abs().max() > 1e-3


def expected_shapes(d_model, d_state=16, d_conv=4, expand=2):
    """mamba_ssm.modules.mamba_simple.Mamba's state_dict (bias=False, conv_bias=True)."""
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)
    return {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize("d_model", [20, 64])
def test_state_dict_matches_mamba_ssm(d_model):
    m = Mamba(d_model)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected_shapes(d_model)
    assert m.no_weight_decay() == {"A_log", "D"}
    assert m.dt_proj.bias._no_reinit


def test_bidirectional_names_and_reversal_symmetry():
    torch.manual_seed(2)
    m = Mamba(8, d_state=4, bidirectional=True)
    sd = m.state_dict()
    base = expected_shapes(8, d_state=4)
    extra = {
        "conv1d_b.weight": base["conv1d.weight"],
        "conv1d_b.bias": base["conv1d.bias"],
        "x_proj_b.weight": base["x_proj.weight"],
        "dt_proj_b.weight": base["dt_proj.weight"],
        "dt_proj_b.bias": base["dt_proj.bias"],
        "A_b_log": base["A_log"],
        "D_b": base["D"],
    }
    assert {k: tuple(v.shape) for k, v in sd.items()} == {**base, **extra}
    # Swapping the forward and backward parameters and reversing the input reverses the output.
    swapped = Mamba(8, d_state=4, bidirectional=True)
    swap = {}
    for k, v in sd.items():
        if k.startswith(("in_proj", "out_proj")):
            swap[k] = v
        elif k == "A_log":
            swap["A_b_log"] = v
        elif k == "A_b_log":
            swap["A_log"] = v
        elif k.split(".")[0].endswith("_b"):
            head, *rest = k.split(".")
            swap[".".join([head[:-2], *rest])] = v
        else:
            head, *rest = k.split(".")
            swap[".".join([head + "_b", *rest])] = v
    swapped.load_state_dict(swap)
    x = torch.randn(2, 9, 8)
    torch.testing.assert_close(swapped(x.flip(1)), m(x).flip(1), rtol=1e-5, atol=1e-6)
    # And it is no longer causal: later inputs change earlier outputs.
    x2 = x.clone()
    x2[:, -1] += 5.0
    assert (m(x2)[:, 0] - m(x)[:, 0]).abs().max() > 1e-6


def test_initialisation_statistics():
    torch.manual_seed(3)
    dt_min, dt_max = 1e-3, 1e-1
    m = Mamba(256, d_state=16, dt_min=dt_min, dt_max=dt_max)
    dt = F.softplus(m.dt_proj.bias.detach().double())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    # log-uniform: the log of dt is spread over the whole interval, centred in the middle.
    log_dt = dt.log()
    mid = (math.log(dt_min) + math.log(dt_max)) / 2
    assert abs(log_dt.mean().item() - mid) < 0.3
    assert log_dt.min() < math.log(dt_min) + 0.5 and log_dt.max() > math.log(dt_max) - 0.5
    expected_A = torch.arange(1, 17, dtype=torch.float32).log().repeat(512, 1)
    assert torch.equal(m.A_log.detach(), expected_A)
    assert torch.equal(m.D.detach(), torch.ones(512))
    bound = m.dt_rank**-0.5
    assert m.dt_proj.weight.abs().max() <= bound and m.dt_proj.weight.abs().max() > 0.9 * bound
    # The floor wins when it is above dt_min.
    floored = Mamba(16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    torch.testing.assert_close(
        F.softplus(floored.dt_proj.bias.detach()), torch.full((32,), 1e-4), rtol=1e-4, atol=0
    )
    const = Mamba(16, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(const.dt_proj.weight, torch.full_like(const.dt_proj.weight, 2.0))


def test_autocast_keeps_scan_in_fp32():
    torch.manual_seed(4)
    m = Mamba(16, d_state=4)
    x = torch.randn(2, 10, 16)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)


def test_backends_on_cpu():
    m = Mamba(8, d_state=4, backend="torch")
    x = torch.randn(1, 5, 8)
    ref = m(x)
    m.backend = "auto"
    assert torch.equal(m(x), ref)  # auto falls back to the torch scan on CPU
    m.backend = "cuda"
    with pytest.raises(MambaBackendError, match="cuda"):
        m(x)
    with pytest.raises(MambaBackendError):
        check_cuda_parity(m, x)
    with pytest.raises(ValueError, match="backend"):
        Mamba(8, backend="triton")
    with pytest.raises(ValueError, match=r"\(B, L, 8\)"):
        Mamba(8)(torch.randn(2, 5, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_parity():  # pragma: no cover - GPU machines only
    pytest.importorskip("mamba_ssm")
    torch.manual_seed(5)
    m = Mamba(64).cuda()
    x = torch.randn(4, 48, 64, device="cuda")
    assert check_cuda_parity(m, x) < 2e-3


def test_scan_gradients_match_float64_loop_reference_at_query_length():
    """The hand-written backward against autograd through the plain float64 loop, at the decoder's
    sequence length (Nq = 48), in fp32 and fp64."""
    args = random_scan_inputs(Bt=2, d=5, L=48, N=6, seed=3)
    weight = torch.randn(2, 5, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref_in = [t.clone().requires_grad_(True) for t in args]
    (naive_scan(*ref_in) * weight).sum().backward()
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
        xs = [t.detach().to(dtype).requires_grad_(True) for t in args]
        u, delta, A, B, C, D, z, bias = xs
        y = selective_scan_torch(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True)
        (y * weight.to(dtype)).sum().backward()
        for name, got, ref in zip("u delta A B C D z bias".split(), xs, ref_in, strict=True):
            torch.testing.assert_close(got.grad.double(), ref.grad, rtol=tol, atol=tol,
                                       msg=f"d{name} ({dtype})")
