import dataclasses

import pytest
import torch
import torch.nn.functional as F

from detect.config import MambaConfig, ModelConfig
from detect.model.decoder import num_boundary_points, points_to_segments
from detect.model.detector import Detector, init_query_points
from detect.model.mamba import Mamba
from extract.training import parameter_groups

IN_DIM, C = 12, 3


def tiny_cfg(**kw) -> ModelConfig:
    mamba = MambaConfig(d_state=4, **kw.pop("mamba", {}))
    base = dict(
        hidden_dim=32,
        num_queries=8,
        num_points=6,
        num_layers=2,
        num_heads=4,
        ffn_dim=64,
        mix_dim=8,
        dropout=0.0,
        mamba=mamba,
    )
    base.update(kw)
    return ModelConfig(**base)


VARIANTS = [
    dict(query_mixer="mhsa"),
    dict(query_mixer="mamba_mhsa"),
    dict(query_mixer="mamba_mhsa", mamba=dict(order="centre")),
    dict(query_mixer="mamba_mhsa", mamba=dict(bidirectional=True)),
    dict(query_mixer="mamba_mhsa", mamba=dict(order="centre", bidirectional=True)),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: str(v))
def test_output_shapes_for_every_mixer(variant):
    torch.manual_seed(0)
    cfg = tiny_cfg(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in variant.items()})
    model = Detector(cfg, IN_DIM, C)
    has_mamba = any(isinstance(m, Mamba) for m in model.modules())
    assert has_mamba == (cfg.query_mixer == "mamba_mhsa")
    for W in (16, 11):  # no positional table tied to W
        out = model(torch.randn(2, W, IN_DIM))
        L, B, Nq, Ns = cfg.num_layers, 2, cfg.num_queries, cfg.num_points
        assert out["logits"].shape == (L, B, Nq, C + 1)
        assert out["segments"].shape == (L, B, Nq, 2)
        assert out["points"].shape == (L, B, Nq, Ns)
        assert out["dense_logits"].shape == (B, W, C)
        assert all(torch.isfinite(v).all() for v in out.values())
    loss = sum(v.float().square().mean() for v in out.values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("ns,nb", [(21, 14), (15, 10), (16, 10), (20, 13), (27, 18), (6, 4)])
def test_boundary_point_count(ns, nb):
    assert num_boundary_points(ns) == nb


def test_segments_are_min_max_of_boundary_points():
    torch.manual_seed(1)
    model = Detector(tiny_cfg(num_points=9), IN_DIM, C)
    with torch.no_grad():  # make the points move so min/max is not trivially the init order
        for layer in model.layers:
            layer.offset_head[-1].weight.normal_(0, 1.0)
    out = model(torch.randn(2, 16, IN_DIM))
    pts, seg = out["points"], out["segments"]
    nb = 9 - 3
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in pts.shape[:3])).tolist():
        p = pts[tuple(idx)]
        assert seg[tuple(idx)][0].item() == min(p[:nb].tolist())
        assert seg[tuple(idx)][1].item() == max(p[:nb].tolist())
    # The semantic points do not take part: moving them leaves the segment unchanged.
    moved = pts.clone()
    moved[..., nb:] += 5.0
    assert torch.equal(points_to_segments(moved), seg)


def test_point_update_rule_and_detach():
    torch.manual_seed(2)
    model = Detector(tiny_cfg(num_layers=3), IN_DIM, C)
    with torch.no_grad():
        for layer in model.layers:
            layer.offset_head[-1].weight.normal_(0, 0.5)
            layer.offset_head[-1].bias.normal_(0, 0.5)
    offsets = []
    hooks = [
        layer.offset_head.register_forward_hook(lambda m, i, o: offsets.append(o))
        for layer in model.layers
    ]
    x = torch.randn(2, 16, IN_DIM)
    out = model(x)
    for h in hooks:
        h.remove()
    prev = model.query_points.unsqueeze(0).expand(2, -1, -1).double()
    for layer_idx in range(3):
        seg = points_to_segments(prev)
        length = (seg[..., 1] - seg[..., 0]).unsqueeze(-1)
        expected = prev + offsets[layer_idx].double() * 0.5 * length
        torch.testing.assert_close(out["points"][layer_idx].double(), expected)
        prev = out["points"][layer_idx].double()
    # Points of layer 1 are refined from detached layer-0 points: no gradient reaches layer 0's
    # offset head, while layer 0's own points train it and the learned initial points.
    head0 = list(model.layers[0].offset_head.parameters())
    g1 = torch.autograd.grad(out["points"][1].sum(), head0, allow_unused=True, retain_graph=True)
    assert all(g is None or torch.all(g == 0) for g in g1)
    g0 = torch.autograd.grad(out["points"][0].sum(), [*head0, model.query_points])
    assert all(g.abs().sum() > 0 for g in g0)


def permuted_copy(model: Detector, perm: torch.Tensor) -> Detector:
    other = Detector(model.cfg, model.in_dim, model.num_classes)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.query_embed.weight.copy_(model.query_embed.weight[perm])
        other.query_points.copy_(model.query_points[perm])
    return other.eval()


@pytest.mark.parametrize(
    "variant,equivariant",
    [
        (dict(query_mixer="mamba_mhsa", mamba=dict(order="centre")), True),
        (dict(query_mixer="mamba_mhsa", mamba=dict(order="centre", bidirectional=True)), True),
        (dict(query_mixer="mhsa"), True),
        (dict(query_mixer="mamba_mhsa", mamba=dict(order="index")), False),
    ],
)
def test_query_slot_permutation(variant, equivariant):
    torch.manual_seed(3)
    model = Detector(tiny_cfg(**variant), IN_DIM, C).eval()
    with torch.no_grad():  # points that move, and random (distinct) initial centres
        model.query_points.uniform_(0.05, 0.95)
        for layer in model.layers:
            layer.offset_head[-1].weight.normal_(0, 0.3)
    perm = torch.randperm(8)
    x = torch.randn(2, 16, IN_DIM)
    out, out_p = model(x), permuted_copy(model, perm)(x)
    for key in ("logits", "segments", "points"):
        same = torch.allclose(out_p[key], out[key][:, :, perm], rtol=1e-4, atol=1e-5)
        assert same == equivariant, key
    torch.testing.assert_close(out_p["dense_logits"], out["dense_logits"])


def test_res4_input_is_projected_and_summed():
    torch.manual_seed(4)
    model = Detector(tiny_cfg(), IN_DIM, C, res4_dim=5).eval()
    x, r = torch.randn(2, 16, IN_DIM), torch.randn(2, 16, 5)
    expected = model.input_proj(x) + model.res4_proj(r)
    torch.testing.assert_close(model.project(x, r), expected)
    out = model(x, r)
    assert out["dense_logits"].shape == (2, 16, C)
    assert not torch.allclose(model(x, r)["logits"], model(x, r + 1.0)["logits"])
    with pytest.raises(ValueError, match="pass res4"):
        model(x)
    with pytest.raises(ValueError, match=r"res4 must be \(B, W, 5\)"):
        model(x, torch.randn(2, 15, 5))
    with pytest.raises(ValueError, match=r"features must be \(B, W, 12\)"):
        model(torch.randn(2, 16, 7), r)
    with pytest.raises(ValueError, match="res4_dim=0"):
        Detector(tiny_cfg(), IN_DIM, C)(x, r)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="query_mixer"):
        Detector(tiny_cfg(query_mixer="attention"), IN_DIM, C)
    with pytest.raises(ValueError, match="order"):
        Detector(tiny_cfg(mamba=dict(order="random")), IN_DIM, C)
    with pytest.raises(ValueError, match="num_heads"):
        Detector(tiny_cfg(num_heads=5), IN_DIM, C)


def test_initial_query_points():
    pts = init_query_points(48, 30)
    assert pts.shape == (48, 30)
    assert pts.min() >= 0 and pts.max() <= 1
    seg = points_to_segments(pts)
    centres, lengths = seg.mean(-1), seg[:, 1] - seg[:, 0]
    assert torch.all(lengths > 0)
    assert torch.all(centres[1:] > centres[:-1])  # distinct, ordered by slot
    assert len({round(v, 5) for v in lengths[4:-4].tolist()}) == 4  # four scales inside
    nb = num_boundary_points(30)
    inside = (pts[:, nb:] > seg[:, :1]) & (pts[:, nb:] < seg[:, 1:])
    assert inside.all()


def test_parameter_groups():
    model = Detector(tiny_cfg(mamba=dict(bidirectional=True)), IN_DIM, C)
    decay, no_decay = parameter_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    names_decay, names_no = set(decay["names"]), set(no_decay["names"])
    all_names = {n for n, _ in model.named_parameters()}
    assert names_decay | names_no == all_names and not names_decay & names_no
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        excluded = (
            p.ndim <= 1
            or leaf in ("A_log", "A_b_log", "query_points")
            or name == "query_embed.weight"
        )
        assert (name in names_no) == excluded, name
    assert any(n.endswith("mixer.A_log") for n in names_no)
    assert any(n.endswith("mixer.D_b") for n in names_no)
    assert any(n.endswith("conv1d.weight") for n in names_decay)
    assert any(n.endswith("norm.weight") for n in names_no)
    assert any(n.endswith(".bias") for n in names_no)
    opt = torch.optim.AdamW(parameter_groups(model, 1e-2), lr=1e-3)
    a_log = model.layers[0].mixer.mamba[0].mixer.A_log
    before = a_log.detach().clone()
    opt.zero_grad()
    model(torch.randn(1, 16, IN_DIM))["logits"].sum().backward()
    a_log.grad = torch.zeros_like(a_log)  # a zero gradient: only weight decay could move it
    opt.step()
    assert torch.equal(a_log.detach(), before)


def test_tiny_model_overfits_one_window():
    torch.manual_seed(5)
    cfg = tiny_cfg()
    model = Detector(cfg, IN_DIM, C)
    W = 16
    x = torch.randn(1, W, IN_DIM)
    gt_seg = torch.tensor([[0.1, 0.3], [0.55, 0.9]])
    gt_cls = torch.tensor([0, 2])
    # Fixed assignment: queries 1 and 5 are the positives, all others background.
    target_cls = torch.full((cfg.num_queries,), C)
    target_cls[1], target_cls[5] = gt_cls
    dense = torch.zeros(1, W, C)
    dense[0, 2:5, 0] = 1
    dense[0, 9:15, 2] = 1
    opt = torch.optim.AdamW(parameter_groups(model, 1e-4), lr=3e-3)

    def loss_fn(out):
        ce = F.cross_entropy(out["logits"][:, 0].reshape(-1, C + 1), target_cls.repeat(2))
        l1 = (out["segments"][:, 0, [1, 5]] - gt_seg).abs().sum(-1).mean()
        bce = F.binary_cross_entropy_with_logits(out["dense_logits"], dense)
        return ce + 5 * l1 + bce, l1

    first = None
    for _ in range(60):
        loss, l1 = loss_fn(model(x))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    loss, l1 = loss_fn(out)
    assert loss.item() < 0.2 * first
    assert (out["segments"][-1, 0, [1, 5]] - gt_seg).abs().max() < 0.05
    assert torch.equal(out["logits"][-1, 0].argmax(-1), target_cls)


def test_default_config_builds_with_expected_parts():
    cfg = dataclasses.replace(ModelConfig(), num_layers=1)
    model = Detector(cfg, 2048, 17)
    mamba = [m for m in model.modules() if isinstance(m, Mamba)]
    assert len(mamba) == cfg.mamba.layers
    assert mamba[0].d_inner == 1024 and mamba[0].dt_rank == 32
    assert model.query_points.shape == (48, 30)


def test_centre_order_mixer_gradients_and_sorting():
    from detect.model.decoder import QueryMixer

    torch.manual_seed(6)
    cfg = tiny_cfg(hidden_dim=8, num_heads=2, mamba=dict(order="centre", layers=1))
    mixer = QueryMixer(cfg, total_mamba_blocks=1).double().eval()
    q = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    centres = torch.rand(2, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: mixer(x, centres), (q,))
    # The scan sees the queries in centre order: equal to running the blocks on sorted queries.
    perm = centres.argsort(1)
    sorted_q = torch.gather(q, 1, perm[..., None].expand_as(q))
    x = sorted_q
    for block in mixer.mamba:
        x = block(x)
    unsorted = torch.empty_like(x).scatter(1, perm[..., None].expand_as(x), x)
    attn, _ = mixer.attn(unsorted, unsorted, unsorted, need_weights=False)
    torch.testing.assert_close(mixer(q, centres), mixer.attn_norm(unsorted + attn))
    with pytest.raises(ValueError, match="centres"):
        mixer(q)


def test_input_standardisation_equals_standardised_inputs():
    from detect.config import ModelConfig as _MC

    cfg = _MC(hidden_dim=16, num_queries=4, num_points=6, num_layers=1, num_heads=2, ffn_dim=32,
              mix_dim=4, dropout=0.0)
    torch.manual_seed(0)
    a = Detector(cfg, in_dim=5, num_classes=3, res4_dim=2).eval()
    b = Detector(cfg, in_dim=5, num_classes=3, res4_dim=2).eval()
    b.load_state_dict(a.state_dict())
    x, r = torch.randn(2, 8, 5) * 0.01 + 3.0, torch.randn(2, 8, 2) + 1.0
    mean, std = x.mean((0, 1)), x.std((0, 1))
    a.set_input_stats(mean, std, r.mean((0, 1)), r.std((0, 1)))
    got = a(x, r)
    want = b((x - mean) / std, (r - r.mean((0, 1))) / r.std((0, 1)))
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)
    assert "input_mean" in a.state_dict() and "res4_std" in a.state_dict()


def _mixing_loop_reference(mod, pf, q):
    """DynamicMixing written per query with explicit matrices, in float64."""
    from detect.model.decoder import DynamicMixing

    assert isinstance(mod, DynamicMixing)
    B, Nq, Ns, D = pf.shape
    m = mod.mix_dim
    out = torch.zeros(B, Nq, D, dtype=torch.float64)

    def ln(x, norm):
        return F.layer_norm(x, x.shape[-1:], norm.weight.double(), norm.bias.double())

    for b in range(B):
        for i in range(Nq):
            qi, X = q[b, i], pf[b, i]
            params = mod.channel_params.double()(qi)
            W1, W2 = params[: D * m].reshape(D, m), params[D * m :].reshape(m, D)
            xc = F.relu(ln(F.relu(ln(X @ W1, mod.norm_mid)) @ W2, mod.norm_channel))
            Wt = mod.frame_params.double()(qi).reshape(Ns, Ns)
            xf = F.relu(ln(X.T @ Wt, mod.norm_frame)).T
            rows = torch.cat([xc, xf], dim=-1)
            if mod.mixing == "lean":
                rows = torch.stack([mod.point_proj.double()(r) for r in rows])
            out[b, i] = F.relu(ln(mod.out.double()(rows.reshape(-1)), mod.norm_out))
    return out


@pytest.mark.parametrize("mixing", ["full", "lean"])
def test_dynamic_mixing_equals_a_per_query_loop(mixing):
    from detect.model.decoder import DynamicMixing

    torch.manual_seed(0)
    mod = DynamicMixing(16, 5, 4, mixing, rank=6, point_dim=7).double()
    pf, q = torch.randn(2, 3, 5, 16, dtype=torch.float64), torch.randn(2, 3, 16,
                                                                        dtype=torch.float64)
    torch.testing.assert_close(mod(pf, q), _mixing_loop_reference(mod, pf, q))
    assert torch.autograd.gradcheck(lambda a, b: mod(a, b), (pf[:1, :2].requires_grad_(True),
                                                             q[:1, :2].requires_grad_(True)))


def test_lean_mixing_parameters_at_the_paper_config():
    """The paper model: D=512, m=64, Ns=30. PointTAD's mixing is 85% of it; lean cuts it ~10x."""
    from detect.model.decoder import DynamicMixing
    from detect.model.detector import count_parameters

    full, lean = DynamicMixing(512, 30, 64, "full"), DynamicMixing(512, 30, 64, "lean")
    assert count_parameters(full) == 512 * 65536 + 65536 + 30720 * 512 + 512 + 512 * 900 + 900 \
        + 2 * (64 + 512 + 30 + 512)
    assert count_parameters(full) / count_parameters(lean) > 8
    paper = Detector(dataclasses.replace(ModelConfig(), mixing="full"), 2048, 17)
    mixing = sum(count_parameters(m) for m in paper.modules() if isinstance(m, DynamicMixing))
    assert 0.8 < mixing / count_parameters(paper) < 0.9


@pytest.mark.parametrize("layers, kernel", [(2, 3), (1, 5)])
def test_temporal_encoder_matches_a_loop_and_has_its_receptive_field(layers, kernel):
    torch.manual_seed(5)
    model = Detector(tiny_cfg(encoder_layers=layers, encoder_kernel=kernel), IN_DIM, C).eval()
    enc = model.encoder
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    enc = enc.double()
    # Reference: each block as an explicit per-step sum over the kernel taps, zero padded.
    ref = x.clone()
    r = kernel // 2
    for conv, norm in zip(enc.convs, enc.norms, strict=True):
        pad = F.pad(ref, (0, 0, r, r))
        y = torch.stack([
            sum(pad[:, t + j] @ conv.weight[:, :, j].T for j in range(kernel)) + conv.bias
            for t in range(ref.shape[1])
        ], dim=1)
        ref = ref + F.gelu(F.layer_norm(y, (32,), norm.weight, norm.bias, norm.eps))
    torch.testing.assert_close(enc(x), ref)
    # A change at step 10 reaches exactly layers * (kernel // 2) steps on either side.
    x2 = x.clone()
    x2[:, 10] += 1.0
    changed = (enc(x2) - enc(x)).abs().amax(dim=(0, 2)) > 0
    reach = layers * r
    assert changed.nonzero().flatten().tolist() == list(range(10 - reach, 10 + reach + 1))
    # The detector's dense head reads the encoded features.
    feats = torch.randn(1, 20, IN_DIM)
    model.float()
    expected = model.dense_head(model.encoder(model.project(feats)))
    torch.testing.assert_close(model(feats)["dense_logits"], expected)
    assert Detector(tiny_cfg(), IN_DIM, C).encoder is None


def test_input_dropout_acts_in_training_only():
    torch.manual_seed(6)
    model = Detector(tiny_cfg(input_dropout=0.5), IN_DIM, C)
    plain = Detector(tiny_cfg(), IN_DIM, C)
    plain.load_state_dict(model.state_dict())  # same parameters: dropout adds none
    x = torch.randn(2, 16, IN_DIM)
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x)["logits"], plain(x)["logits"], rtol=0, atol=0)
    model.train()
    p = model.project(x)
    # About half of the standardised inputs are zeroed, the rest scaled by 2.
    kept = model.input_drop(torch.ones(10_000, IN_DIM))
    assert set(kept.unique().tolist()) == {0.0, 2.0}
    assert 0.45 < (kept == 0).float().mean().item() < 0.55
    assert not torch.allclose(p, plain.project(x))
