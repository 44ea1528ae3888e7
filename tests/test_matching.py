import itertools
import math

import pytest
import torch

from detect.config import LossConfig
from detect.train.matching import HungarianMatcher


def ref_cost(matcher, logits, segments, labels, gts):
    """Float64 reference of one sample's cost matrix, one (query, GT) pair at a time."""
    nq, c1 = logits.shape
    out = torch.zeros(nq, len(labels), dtype=torch.float64)
    for q in range(nq):
        z = logits[q].tolist()
        for j, (lab, (gs, ge)) in enumerate(zip(labels.tolist(), gts.tolist(), strict=True)):
            if matcher.focal:
                p = 1 / (1 + math.exp(-z[lab]))
                a, g = matcher.focal_alpha, matcher.focal_gamma
                cls = a * (1 - p) ** g * -math.log(p + 1e-8) - (1 - a) * p**g * -math.log(
                    1 - p + 1e-8
                )
            else:
                cls = -math.exp(z[lab]) / sum(math.exp(v) for v in z)
            s, e = segments[q].tolist()
            l1 = abs((s + e) / 2 - (gs + ge) / 2) + abs((e - s) - (ge - gs))
            cs, ce = min(max(s, 0.0), 1.0), min(max(e, 0.0), 1.0)
            inter = max(0.0, min(ce, ge) - max(cs, gs))
            iou = inter / (max(0.0, ce - cs) + (ge - gs) - inter + 1e-8)
            out[q, j] = (
                matcher.cost_class * cls + matcher.cost_l1 * l1 + matcher.cost_iou * (1 - iou)
            )
    return out


def brute_force_min(cost):
    """Minimal total cost over every one-to-one assignment of min(Nq, n) pairs."""
    nq, n = cost.shape
    cost = cost.tolist()
    if n <= nq:
        return min(
            sum(cost[q][j] for j, q in enumerate(p)) for p in itertools.permutations(range(nq), n)
        )
    return min(
        sum(cost[q][j] for q, j in enumerate(p)) for p in itertools.permutations(range(n), nq)
    )


def random_batch(seed, nq, sizes, num_classes=3):
    g = torch.Generator().manual_seed(seed)
    b = len(sizes)
    logits = torch.randn(b, nq, num_classes + 1, generator=g) * 2
    # Some predictions hang out of the window: the IoU term must clamp them, the L1 term not.
    segments = (torch.rand(b, nq, 2, generator=g) * 1.4 - 0.2).sort(dim=-1).values
    targets = []
    for n in sizes:
        s = torch.rand(n, 2, generator=g).sort(dim=-1).values
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=g), "segments": s})
    return logits, segments, targets


def check_valid(match, nq, n):
    pred, gt = match
    assert pred.dtype == torch.int64 and gt.dtype == torch.int64
    assert len(pred) == len(gt) == min(nq, n)
    assert len(set(pred.tolist())) == len(pred) and len(set(gt.tolist())) == len(gt)
    assert all(0 <= p < nq for p in pred.tolist()) and all(0 <= j < n for j in gt.tolist())


@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize(
    "seed, nq, sizes",
    [(0, 5, [3, 1, 0]), (1, 4, [2, 3]), (2, 3, [3, 3]), (3, 2, [3, 1]), (4, 1, [2]), (5, 5, [3])],
)
def test_matching_is_optimal_against_brute_force(seed, nq, sizes, focal):
    m = HungarianMatcher(focal=focal)
    logits, segments, targets = random_batch(seed, nq, sizes)
    matches = m(logits, segments, targets)
    assert len(matches) == len(sizes)
    for b, (t, (pred, gt)) in enumerate(zip(targets, matches, strict=True)):
        n = len(t["labels"])
        check_valid((pred, gt), nq, n)
        if n == 0:
            continue
        cost = ref_cost(m, logits[b].double(), segments[b].double(), t["labels"], t["segments"])
        got = cost[pred, gt].sum().item()
        assert got == pytest.approx(brute_force_min(cost), abs=1e-5)


@pytest.mark.parametrize("focal", [False, True])
def test_cost_matrix_matches_float64_reference(focal):
    m = HungarianMatcher(cost_class=2.0, cost_l1=3.0, cost_iou=4.0, focal=focal)
    logits, segments, targets = random_batch(7, 4, [3])
    t = targets[0]
    got = m.cost_matrix(logits[0], segments[0], t["labels"], t["segments"])
    want = ref_cost(m, logits[0].double(), segments[0].double(), t["labels"], t["segments"])
    assert got.shape == (4, 3)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_obvious_match():
    # Query 2 sits on the GT with the right class; query 0 has the class but the wrong place.
    logits = torch.full((1, 3, 3), -5.0)
    logits[0, :, 2] = 5.0  # background everywhere ...
    logits[0, 0, 1] = logits[0, 2, 1] = 5.0  # ... except class 1 on queries 0 and 2
    segments = torch.tensor([[[0.7, 0.9], [0.2, 0.4], [0.2, 0.4]]])
    targets = [{"labels": torch.tensor([1]), "segments": torch.tensor([[0.2, 0.4]])}]
    ((pred, gt),) = HungarianMatcher()(logits, segments, targets)
    assert pred.tolist() == [2] and gt.tolist() == [0]


def test_empty_targets_give_empty_matches():
    logits, segments, _ = random_batch(0, 4, [0, 0])
    empty = {"labels": torch.zeros(0, dtype=torch.long), "segments": torch.zeros(0, 2)}
    for matches in (
        HungarianMatcher()(logits, segments, [empty, empty]),
        HungarianMatcher()(logits, segments, [empty, random_batch(1, 4, [2])[2][0]]),
    ):
        assert len(matches[0][0]) == 0 and len(matches[0][1]) == 0
        assert matches[0][0].dtype == torch.int64
    assert len(matches[1][0]) == 2


def test_more_ground_truths_than_queries_matches_every_query():
    logits, segments, targets = random_batch(3, 2, [5])
    ((pred, gt),) = HungarianMatcher()(logits, segments, targets)
    assert sorted(pred.tolist()) == [0, 1]
    assert len(set(gt.tolist())) == 2


def test_match_layers_equals_matching_each_layer():
    g = torch.Generator().manual_seed(11)
    m = HungarianMatcher()
    logits = torch.randn(3, 2, 5, 4, generator=g)
    segments = torch.rand(3, 2, 5, 2, generator=g).sort(dim=-1).values
    _, _, targets = random_batch(12, 5, [2, 3])
    per_layer = m.match_layers(logits, segments, targets)
    for layer in range(3):
        one = m(logits[layer], segments[layer], targets)
        for (p1, g1), (p2, g2) in zip(per_layer[layer], one, strict=True):
            assert torch.equal(p1, p2) and torch.equal(g1, g2)


def test_no_gradients_through_matching():
    logits, segments, targets = random_batch(2, 4, [2])
    logits.requires_grad_(True)
    segments.requires_grad_(True)
    m = HungarianMatcher()
    cost = m.cost_matrix(logits[0], segments[0], targets[0]["labels"], targets[0]["segments"])
    assert not cost.requires_grad
    pred, gt = m(logits, segments, targets)[0]
    assert not pred.requires_grad and not gt.requires_grad


def test_from_config():
    m = HungarianMatcher.from_config(LossConfig(cost_class=1.0, focal=True, focal_gamma=1.5))
    assert (m.cost_class, m.cost_l1, m.cost_iou, m.focal, m.focal_gamma) == (1, 5, 5, True, 1.5)


def test_bad_targets_and_predictions_are_clear_errors():
    logits, segments, targets = random_batch(0, 3, [1, 2])
    m = HungarianMatcher()
    bad = [targets[0], {"labels": torch.tensor([0, 3]), "segments": targets[1]["segments"]}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\]\[1\]: label 3 is outside"):
        m(logits, segments, bad)
    bad = [targets[0], {"labels": torch.tensor([0, 1]), "segments": torch.zeros(3, 2)}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['segments'\]: expected shape \(2, 2\)"):
        m(logits, segments, bad)
    nan_seg = targets[1]["segments"].clone()
    nan_seg[1, 0] = float("nan")
    bad = [targets[0], {"labels": targets[1]["labels"], "segments": nan_seg}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['segments'\]\[1\]: non-finite"):
        m(logits, segments, bad)
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        m(torch.cat([logits, logits[:1]]), torch.cat([segments, segments[:1]]), targets)
    broken = segments.clone()
    broken[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="sample 1, query 2: non-finite matching cost"):
        m(logits, broken, targets)


@pytest.mark.parametrize("n", [(1, 1), (8, 3), (384, 40), (5, 0)])
def test_cdist_l1_is_the_broadcast_sum_bit_for_bit(n):
    """The matcher's L1 cost is torch.cdist(p=1); it gives the same float32 bits as the
    broadcast |a[:, None] - b[None]|.sum(-1) it replaced (so matches and results are unchanged)."""
    g = torch.Generator().manual_seed(sum(n))
    a, b = torch.rand(n[0], 2, generator=g), torch.rand(n[1], 2, generator=g)
    want = (a[:, None, :] - b[None, :, :]).abs().sum(-1)
    assert torch.equal(torch.cdist(a, b, p=1), want)
