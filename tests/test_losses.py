import math

import pytest
import torch
import torch.distributed as dist

from detect.config import LossConfig
from detect.train.losses import SetCriterion
from detect.train.matching import HungarianMatcher


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def ref_layer_losses(cfg, logits, segments, targets, matches, num_gt):
    """Float64, loop-by-loop reference of one layer's (ce, l1, iou) for a given matching."""
    batch, nq, c1 = logits.shape
    target = [[c1 - 1] * nq for _ in range(batch)]
    pairs = []
    for b, (pred, gt) in enumerate(matches):
        for q, j in zip(pred.tolist(), gt.tolist(), strict=True):
            target[b][q] = int(targets[b]["labels"][j])
            pairs.append((segments[b, q].tolist(), targets[b]["segments"][j].tolist()))
    num, den, focal = 0.0, 0.0, 0.0
    for b in range(batch):
        for q in range(nq):
            z = logits[b, q].tolist()
            t = target[b][q]
            w = cfg.background_weight if t == c1 - 1 else 1.0
            num += w * -(z[t] - math.log(sum(math.exp(v) for v in z)))
            den += w
            for k in range(c1 - 1):
                y = 1.0 if k == t else 0.0
                p = 1 / (1 + math.exp(-z[k]))
                bce = softplus(z[k]) - y * z[k]
                p_t = p * y + (1 - p) * (1 - y)
                a_t = cfg.focal_alpha * y + (1 - cfg.focal_alpha) * (1 - y)
                focal += a_t * (1 - p_t) ** cfg.focal_gamma * bce
    ce = focal / num_gt if cfg.focal else num / den
    l1 = iou = 0.0
    for (s, e), (gs, ge) in pairs:
        l1 += abs((s + e) / 2 - (gs + ge) / 2) + abs((e - s) - (ge - gs))
        cs, cend = min(max(s, 0.0), 1.0), min(max(e, 0.0), 1.0)
        inter = max(0.0, min(cend, ge) - max(cs, gs))
        iou += 1 - inter / ((cend - cs) + (ge - gs) - inter + 1e-8)
    return ce, l1 / num_gt, iou / num_gt


def ref_dense(dense_logits, dense):
    x, y = dense_logits.flatten().tolist(), dense.flatten().tolist()
    return sum(softplus(a) - b * a for a, b in zip(x, y, strict=True)) / len(x)


def random_case(seed, n_layers=2, nq=4, sizes=(2, 1, 0), num_classes=3, width=6):
    g = torch.Generator().manual_seed(seed)
    b = len(sizes)
    outputs = {
        "logits": torch.randn(n_layers, b, nq, num_classes + 1, generator=g) * 2,
        "segments": (torch.rand(n_layers, b, nq, 2, generator=g) * 1.4 - 0.2).sort(-1).values,
        "dense_logits": torch.randn(b, width, num_classes, generator=g),
    }
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,), generator=g),
            "segments": torch.rand(n, 2, generator=g).sort(-1).values,
        }
        for n in sizes
    ]
    dense = (torch.rand(b, width, num_classes, generator=g) > 0.7).float()
    return outputs, targets, dense


def test_two_query_case_by_hand():
    # One GT (class 0, [0.2, 0.5]); query 0 predicts class 0 on [-0.1, 0.5], query 1 is elsewhere.
    outputs = {
        "logits": torch.tensor([[[[2.0, 0.0, 1.0], [0.0, 0.5, 1.5]]]]),
        "segments": torch.tensor([[[[-0.1, 0.5], [0.6, 0.9]]]]),
        "dense_logits": torch.tensor([[[0.0, 1.0], [-1.0, 2.0]]]),
    }
    targets = [{"labels": torch.tensor([0]), "segments": torch.tensor([[0.2, 0.5]])}]
    dense = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    total, logged = SetCriterion(LossConfig(aux=False), num_classes=2)(outputs, targets, dense)

    # Query 0 is matched (class prob 0.67 and overlap vs 0.14 and none), query 1 is background.
    nll0 = math.log(math.e**2 + 1 + math.e) - 2  # -log softmax([2, 0, 1])[0]
    nll1 = math.log(1 + math.e**0.5 + math.e**1.5) - 1.5  # -log softmax([0, .5, 1.5])[2]
    ce = (1.0 * nll0 + 0.1 * nll1) / (1.0 + 0.1)
    # (c, l): pred (0.2, 0.6) unclamped, GT (0.35, 0.3) -> |0.15| + |0.3|.
    l1 = 0.45
    # IoU on the clamped prediction [0, 0.5] vs [0.2, 0.5]: 0.3 / 0.5.
    iou = 1 - 0.6
    bce = (
        math.log(2) + math.log(1 + math.e) + math.log(1 + 1 / math.e) + math.log(1 + math.e**2) - 2
    )
    bce /= 4
    assert sorted(logged) == ["loss_ce", "loss_dense", "loss_iou", "loss_l1"]
    assert logged["loss_ce"].item() == pytest.approx(ce, abs=1e-6)
    assert logged["loss_l1"].item() == pytest.approx(l1, abs=1e-6)
    assert logged["loss_iou"].item() == pytest.approx(iou, abs=1e-6)
    assert logged["loss_dense"].item() == pytest.approx(bce, abs=1e-6)
    assert total.item() == pytest.approx(ce + 5 * l1 + 5 * iou + 10 * bce, abs=1e-5)


@pytest.mark.parametrize("focal", [False, True])
def test_all_layers_match_float64_reference(focal):
    cfg = LossConfig(focal=focal, background_weight=0.2, class_weight=2.0, l1_weight=3.0)
    outputs, targets, dense = random_case(1)
    total, logged = SetCriterion(cfg, num_classes=3)(outputs, targets, dense)
    matcher = HungarianMatcher.from_config(cfg)
    num_gt = 3.0
    want_total = cfg.dense_weight * ref_dense(outputs["dense_logits"], dense)
    for layer, suffix in ((0, "_0"), (1, "")):
        lg, sg = outputs["logits"][layer].double(), outputs["segments"][layer].double()
        matches = matcher(outputs["logits"][layer], outputs["segments"][layer], targets)
        ce, l1, iou = ref_layer_losses(cfg, lg, sg, targets, matches, num_gt)
        assert logged[f"loss_ce{suffix}"].item() == pytest.approx(ce, rel=1e-5, abs=1e-6)
        assert logged[f"loss_l1{suffix}"].item() == pytest.approx(l1, rel=1e-5, abs=1e-6)
        assert logged[f"loss_iou{suffix}"].item() == pytest.approx(iou, rel=1e-5, abs=1e-6)
        want_total += cfg.class_weight * ce + cfg.l1_weight * l1 + cfg.iou_weight * iou
    assert logged["loss_dense"].item() == pytest.approx(ref_dense(outputs["dense_logits"], dense))
    assert total.item() == pytest.approx(want_total, rel=1e-5)


@pytest.mark.parametrize("focal", [False, True])
def test_gradients_reach_logits_segments_and_dense_head(focal):
    outputs, targets, dense = random_case(2, sizes=(2, 1))
    for v in outputs.values():
        v.requires_grad_(True)
    crit = SetCriterion(LossConfig(focal=focal), num_classes=3)
    total, logged = crit(outputs, targets, dense)
    total.backward()
    assert all(not v.requires_grad for v in logged.values())
    assert (outputs["logits"].grad.abs().sum(-1) > 0).all()  # every query of every layer
    assert outputs["dense_logits"].grad.abs().sum() > 0
    seg_grad = outputs["segments"].grad.abs().sum(-1)  # (L, B, Nq)
    matcher = crit.matcher
    for layer in range(2):
        matches = matcher(outputs["logits"][layer], outputs["segments"][layer], targets)
        for b, (pred, _) in enumerate(matches):
            moved = seg_grad[layer, b] > 0
            assert moved[pred].all()  # L1 always has a gradient on matched pairs
            unmatched = torch.ones_like(moved)
            unmatched[pred] = False
            assert not moved[unmatched].any()  # segment losses only see matched queries


@pytest.mark.parametrize("focal", [False, True])
def test_batch_without_ground_truth_is_finite(focal):
    outputs, targets, dense = random_case(3, sizes=(0, 0))
    outputs["logits"].requires_grad_(True)
    outputs["segments"].requires_grad_(True)
    cfg = LossConfig(focal=focal)
    total, logged = SetCriterion(cfg, num_classes=3)(outputs, targets, dense)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(outputs["logits"].grad).all()
    assert all(torch.isfinite(v) for v in logged.values())
    assert logged["loss_l1"].item() == 0 and logged["loss_iou_0"].item() == 0
    no_match = [(torch.zeros(0, dtype=torch.long),) * 2] * 2
    lg, sg = outputs["logits"][1].detach().double(), outputs["segments"][1].detach().double()
    ce, _, _ = ref_layer_losses(cfg, lg, sg, targets, no_match, num_gt=1.0)
    assert logged["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert (outputs["segments"].grad == 0).all()


def test_aux_toggle_changes_the_terms():
    outputs, targets, dense = random_case(4, n_layers=3)
    with_aux, logged_aux = SetCriterion(LossConfig(aux=True), 3)(outputs, targets, dense)
    last, logged = SetCriterion(LossConfig(aux=False), 3)(outputs, targets, dense)
    assert len(logged_aux) == 3 * 3 + 1 and len(logged) == 3 + 1
    assert {"loss_ce_0", "loss_l1_1", "loss_iou_1"} <= set(logged_aux)
    assert not any(k.endswith(("_0", "_1")) for k in logged)
    for k, v in logged.items():
        assert torch.equal(v, logged_aux[k])  # the last layer is the same either way
    cfg = LossConfig()
    aux_part = sum(
        cfg.class_weight * logged_aux[f"loss_ce_{i}"]
        + cfg.l1_weight * logged_aux[f"loss_l1_{i}"]
        + cfg.iou_weight * logged_aux[f"loss_iou_{i}"]
        for i in range(2)
    )
    assert with_aux.item() == pytest.approx((last + aux_part).item(), rel=1e-6)


def test_distributed_normalisation_with_one_process():
    outputs, targets, dense = random_case(5)
    crit = SetCriterion(LossConfig(), 3)
    alone, _ = crit(outputs, targets, dense)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        together, _ = crit(outputs, targets, dense)
    finally:
        dist.destroy_process_group()
    assert together.item() == pytest.approx(alone.item(), rel=1e-6)


def test_bfloat16_outputs_give_float32_losses():
    outputs, targets, dense = random_case(6)
    crit = SetCriterion(LossConfig(), 3)
    half = {k: v.bfloat16() for k, v in outputs.items()}
    total, _ = crit(half, targets, dense)
    ref, _ = crit({k: v.float() for k, v in half.items()}, targets, dense)
    assert total.dtype == torch.float32 and total.item() == pytest.approx(ref.item(), rel=1e-6)


def test_bad_outputs_are_clear_errors():
    outputs, targets, dense = random_case(7)
    crit = SetCriterion(LossConfig(), num_classes=4)
    with pytest.raises(ValueError, match=r"outputs\['logits'\] must be \(L, B, Nq, 5\)"):
        crit(outputs, targets, dense)
    crit = SetCriterion(LossConfig(), num_classes=3)
    with pytest.raises(ValueError, match="dense targets"):
        crit(outputs, targets, dense[:, :-1])
    with pytest.raises(KeyError, match="dense_logits"):
        crit({k: v for k, v in outputs.items() if k != "dense_logits"}, targets, dense)
    with pytest.raises(ValueError, match=r"outputs\['segments'\]"):
        crit({**outputs, "segments": outputs["segments"][:, :, :2]}, targets, dense)
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]\[1\]: label 3"):
        bad = [{**targets[0], "labels": torch.tensor([0, 3])}, *targets[1:]]
        crit(outputs, bad, dense)


@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_focal_class_loss_is_retinanets_formula(alpha):
    """The focal class loss (torchvision's sigmoid_focal_loss) against the RetinaNet formula
    in float64, element by element, with and without the alpha balance."""
    from torchvision.ops import sigmoid_focal_loss

    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 4, generator=g) * 4
    t = (torch.rand(3, 7, 4, generator=g) > 0.7).float()
    got = sigmoid_focal_loss(x, t, alpha, 2.0)
    for z, y, v in zip(x.flatten().tolist(), t.flatten().tolist(), got.flatten().tolist(),
                       strict=True):
        p = 1 / (1 + math.exp(-z))
        p_t = p if y else 1 - p
        want = -math.log(p_t) * (1 - p_t) ** 2
        if alpha >= 0:
            want *= alpha if y else 1 - alpha
        assert v == pytest.approx(want, rel=1e-5, abs=1e-7)
