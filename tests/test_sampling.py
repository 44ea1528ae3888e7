import math

import pytest
import torch

from detect.model.sampling import PointSampler, sample_features


def interp_ref(feat, u):
    """Linear interpolation of feat (W, D) at window time u, feature j centred at (j+0.5)/W,
    positions outside the first/last centre read the edge feature. Scalar Python, float64."""
    W = feat.shape[0]
    x = u * W - 0.5
    if x <= 0:
        return feat[0] * 1.0
    if x >= W - 1:
        return feat[W - 1] * 1.0
    i = math.floor(float(x.detach()))
    t = x - i
    return feat[i] * (1 - t) + feat[i + 1] * t


def sample_ref(features, positions, weights):
    B, N, K = positions.shape
    rows = []
    for b in range(B):
        for n in range(N):
            acc = 0
            for k in range(K):
                acc = acc + weights[b, n, k] * interp_ref(features[b], positions[b, n, k])
            rows.append(acc)
    return torch.stack(rows).view(B, N, -1)


def make_inputs(B=2, W=7, D=3, N=5, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, W, D, generator=g, dtype=torch.float64)
    # Includes positions before 0, after 1, and inside the half-step borders.
    pos = torch.rand(B, N, K, generator=g, dtype=torch.float64) * 1.6 - 0.3
    w = torch.softmax(torch.randn(B, N, K, generator=g, dtype=torch.float64), -1)
    return feats, pos, w


METHODS = ["gather", "matmul", "auto"]


@pytest.mark.parametrize("method", METHODS)
def test_matches_loop_reference_values_and_gradients(method):
    feats, pos, w = make_inputs()
    assert (pos < 0).any() and (pos > 1).any()
    args = [t.clone().requires_grad_(True) for t in (feats, pos, w)]
    ref_args = [t.clone().requires_grad_(True) for t in (feats, pos, w)]
    out = sample_features(*args, method=method)
    ref = sample_ref(*ref_args)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for a, r in zip(args, ref_args, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-10, atol=1e-12)
    # Outside the window the position gets no gradient; inside it does.
    W = feats.shape[1]
    outside = (pos * W - 0.5 < 0) | (pos * W - 0.5 > W - 1)
    assert (args[1].grad[outside] == 0).all()
    assert (args[1].grad[~outside] != 0).all()


@pytest.mark.parametrize("method", ["gather", "matmul"])
def test_gradcheck(method):
    feats, pos, w = make_inputs(B=2, W=5, D=2, N=3, K=2, seed=1)
    args = tuple(t.requires_grad_(True) for t in (feats, pos, w))
    assert torch.autograd.gradcheck(lambda f, p, w: sample_features(f, p, w, method), args)


def test_auto_gathers_for_long_windows():
    feats, pos, w = make_inputs(B=1, W=600, D=2, N=3, K=4, seed=2)
    pos.requires_grad_(True)
    out = sample_features(feats, pos, w)  # W > 64 * 2K: the gather path
    assert out.grad_fn.name().endswith("_GatherCombineBackward")
    torch.testing.assert_close(out, sample_features(feats, pos, w, "matmul"))
    with pytest.raises(ValueError, match="sampling method"):
        sample_features(feats, pos, w, "grid")


@pytest.mark.parametrize("method", METHODS)
def test_feature_centres_and_edges(method):
    W = 8
    feats = torch.arange(W, dtype=torch.float64).view(1, W, 1).repeat(1, 1, 2)
    centres = (torch.arange(W, dtype=torch.float64) + 0.5) / W
    pos = torch.cat([centres, torch.tensor([-0.5, 0.0, 1.0, 1.7, 0.5])]).view(1, -1, 1)
    out = sample_features(feats, pos, method=method)[0, :, 0]
    expected = torch.cat([torch.arange(W, dtype=torch.float64), torch.tensor([0, 0, 7, 7, 3.5])])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("method", METHODS)
def test_single_step_window_and_fp32(method):
    feats = torch.randn(2, 1, 4)
    pos = torch.tensor([[[-1.0, 0.3, 2.0]]]).expand(2, 1, 3)
    w = torch.full((2, 1, 3), 1 / 3)
    torch.testing.assert_close(sample_features(feats, pos, w, method)[:, 0], feats[:, 0])


@pytest.mark.parametrize("method", ["gather", "matmul"])
def test_no_copy_of_the_window_is_kept_for_backward(method):
    B, W, D, N, K = 2, 64, 32, 40, 4
    feats = torch.randn(B, W, D, requires_grad=True)
    pos = torch.rand(B, N, K, requires_grad=True)
    w = torch.rand(B, N, K, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sample_features(feats, pos, w, method)
    out.sum().backward()
    # Saved: the features, (B, N, K)-sized position tensors, and for matmul the (B, N, W)
    # interpolation matrix; never gathered (N, D) rows per sub-point or a per-query window copy.
    matrix = B * N * W if method == "matmul" else 0
    assert max(saved) <= max(B * W * D, matrix)
    assert sum(saved) <= B * W * D + matrix + 20 * B * N * K


def test_shape_errors():
    with pytest.raises(ValueError, match="features must be"):
        sample_features(torch.zeros(4, 3), torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match="positions must be"):
        sample_features(torch.zeros(2, 4, 3), torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match="weights"):
        sample_features(torch.zeros(1, 4, 3), torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))


def test_point_sampler_init_and_per_point_offsets():
    torch.manual_seed(0)
    B, W, D, Nq, Ns, K = 2, 16, 8, 3, 5, 4
    sampler = PointSampler(D, Ns, K).double()
    feats = torch.randn(B, W, D, dtype=torch.float64)
    points = torch.rand(B, Nq, Ns, dtype=torch.float64)
    q = torch.randn(B, Nq, D, dtype=torch.float64)
    # Init: symmetric sub-points -1.5..1.5 feature steps around each point, uniform weights.
    out = sampler(feats, points, q)
    offs = torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=torch.float64) / W
    pos = (points.unsqueeze(-1) + offs).view(B, Nq * Ns, K)
    ref = sample_ref(feats, pos, torch.full_like(pos, 0.25)).view(B, Nq, Ns, D)
    torch.testing.assert_close(out, ref)
    # Trained heads: per query and per point offsets and weights.
    with torch.no_grad():
        for p in sampler.parameters():
            p.normal_()
    out = sampler(feats, points, q)
    o = sampler.offsets(q).view(B, Nq, Ns, K) / W
    wts = torch.softmax(sampler.logits(q).view(B, Nq, Ns, K), -1)
    pos = (points.unsqueeze(-1) + o).view(B, Nq * Ns, K)
    ref = sample_ref(feats, pos, wts.reshape(B, Nq * Ns, K)).view(B, Nq, Ns, D)
    torch.testing.assert_close(out, ref)


def test_nan_positions_give_nan_features_not_a_crash():
    feats = torch.randn(1, 16, 4)
    pos = torch.tensor([[[0.5, float("nan")]]])
    out = sample_features(feats, pos)
    assert torch.isnan(out).all()
