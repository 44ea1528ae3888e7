import pytest
import torch

from detect.model.segments import TIOU_EPS, cl_to_se, paired_tiou, se_to_cl, segment_tiou


def loop_tiou(a, b, eps=TIOU_EPS):
    """Reference: plain Python floats, one pair at a time."""
    out = []
    for s1, e1 in a.tolist():
        row = []
        for s2, e2 in b.tolist():
            inter = max(0.0, min(e1, e2) - max(s1, s2))
            union = max(0.0, e1 - s1) + max(0.0, e2 - s2) - inter
            row.append(inter / (union + eps))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(len(a), len(b))


def awkward_segments(n, seed):
    """Random segments plus the edge cases: zero length, reversed, touching, identical, outside."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    x = x.sort(dim=1).values
    fixed = torch.tensor(
        [[0.3, 0.3], [0.5, 0.2], [0.0, 0.5], [0.5, 1.0], [0.0, 1.0], [0.25, 0.5], [0.3, 0.3]],
        dtype=torch.float64,
    )
    return torch.cat([x, fixed])


def test_segment_tiou_matches_python_loop():
    a, b = awkward_segments(13, 0), awkward_segments(9, 1)
    want = loop_tiou(a, b)
    assert torch.allclose(segment_tiou(a, b), want, rtol=0, atol=1e-12)
    got32 = segment_tiou(a.float(), b.float())
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), want, atol=1e-6)


def test_segment_tiou_known_values():
    a = torch.tensor([[0.0, 1.0], [0.0, 0.5], [0.3, 0.3], [0.6, 0.2]])
    b = torch.tensor([[0.25, 0.5], [0.5, 1.0], [0.3, 0.3], [0.0, 1.0]])
    got = segment_tiou(a, b)
    assert got[0, 0] == pytest.approx(0.25)  # contained
    assert got[1, 1] == 0  # touching at 0.5: no overlap
    assert got[0, 3] == pytest.approx(1.0)  # identical
    assert got[2, 2] == 0 and torch.isfinite(got).all()  # two identical empty segments: 0, no NaN
    assert (got[3] == 0).all()  # reversed segment counts as empty


def test_paired_tiou_is_the_diagonal():
    a, b = awkward_segments(10, 2), awkward_segments(10, 3)
    assert torch.allclose(paired_tiou(a, b), torch.diagonal(segment_tiou(a, b)), atol=0)


def test_centre_length_round_trip():
    se = torch.tensor([[[0.1, 0.5], [0.2, 0.2]], [[-0.3, 1.2], [0.0, 1.0]]], dtype=torch.float64)
    cl = se_to_cl(se)
    assert cl.shape == se.shape
    assert torch.allclose(cl[0, 0], torch.tensor([0.3, 0.4], dtype=torch.float64))
    assert torch.allclose(cl[1, 0], torch.tensor([0.45, 1.5], dtype=torch.float64))
    assert torch.allclose(cl_to_se(cl), se, atol=1e-15)


def test_tiou_gradients_match_finite_differences():
    a = torch.tensor([[0.1, 0.6], [0.3, 0.9]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.2, 0.5], [0.4, 1.0], [0.55, 0.7]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: segment_tiou(x, b), (a,))
    assert torch.autograd.gradcheck(lambda x: paired_tiou(x, b[:2]), (a,))


def test_zero_length_segments_give_finite_gradients():
    a = torch.tensor([[0.4, 0.4], [0.2, 0.2]], requires_grad=True)
    b = torch.tensor([[0.4, 0.4], [0.1, 0.3]])
    paired_tiou(a, b).sum().backward()
    assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize(
    "fn, args",
    [
        (segment_tiou, (torch.zeros(3, 3), torch.zeros(2, 2))),
        (segment_tiou, (torch.zeros(2, 2, 2), torch.zeros(2, 2))),
        (paired_tiou, (torch.zeros(3, 2), torch.zeros(2, 2))),
        (se_to_cl, (torch.zeros(4),)),
    ],
)
def test_bad_shapes_are_clear_errors(fn, args):
    with pytest.raises(ValueError, match=r"\(.*2\)"):
        fn(*args)


def _iou_loss_reference(a, b, kind):
    """One pair at a time in float64, from the definitions."""
    out = []
    for (s1, e1), (s2, e2) in zip(a.tolist(), b.tolist(), strict=True):
        inter = max(0.0, min(e1, e2) - max(s1, s2))
        union = (e1 - s1) + (e2 - s2) - inter
        iou = inter / union if union > 0 else 0.0
        c = max(e1, e2) - min(s1, s2)
        if kind == "iou":
            out.append(1 - iou)
        elif kind == "giou":
            out.append(1 - iou + (c - union) / c)
        else:
            out.append(1 - iou + (((s1 + e1) - (s2 + e2)) / 2) ** 2 / c**2)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])
def test_paired_iou_losses_match_the_definitions_and_pull_disjoint_pairs(kind):
    from detect.model.segments import paired_iou_loss
    torch.manual_seed(0)
    s = torch.rand(50, 2, dtype=torch.float64)
    a = torch.stack([s.min(1).values, s.max(1).values], 1)
    s = torch.rand(50, 2, dtype=torch.float64)
    b = torch.stack([s.min(1).values, s.max(1).values], 1)
    torch.testing.assert_close(paired_iou_loss(a, b, kind), _iou_loss_reference(a, b, kind),
                               rtol=1e-6, atol=1e-6)
    # Hand case: [0, 1] vs [2, 3]: IoU 0, C = 3, U = 2, centre distance 2.
    x, y = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 3.0]], requires_grad=True)
    expect = {"iou": 1.0, "giou": 1 + 1 / 3, "diou": 1 + 4 / 9}[kind]
    loss = paired_iou_loss(x, y, kind)
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    loss.sum().backward()
    moves = bool(y.grad.abs().sum() > 0)
    assert moves == (kind != "iou")  # only the generalised losses pull disjoint pairs together
    with pytest.raises(ValueError, match="iou loss must be one of"):
        paired_iou_loss(x, x, "l2")
