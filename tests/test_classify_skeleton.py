"""Skeleton side of `classify`: OpenPose files in and out, the BODY_25 graph, normalisation,
bones and frame sampling against loops, 2s-AGCN's graph convolution against a float64 loop, and
the clip metrics on hand-computed cases."""

import json

import numpy as np
import pytest
import torch

from classify.config import AGCNConfig
from classify.data.openpose import (
    FINGERTIPS,
    LEFT_HAND,
    NUM_KEYPOINTS,
    RIGHT_HAND,
    read_keypoint_table,
    read_keypoints,
    read_openpose_frame,
    write_openpose_dir,
)
from classify.data.skeleton import (
    BODY_25_PARENTS,
    EDGES,
    adjacency_subsets,
    bones,
    clip_input,
    normalise,
    sample_frames,
)
from classify.metrics import classification_report, confusion_matrix, topk_accuracy
from classify.model.agcn import AGCN, GraphConv
from detect.data.converters.common import DatasetError


def random_keypoints(t: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kp = np.concatenate([rng.uniform(0, 640, (t, NUM_KEYPOINTS, 2)),
                         rng.uniform(0.1, 1.0, (t, NUM_KEYPOINTS, 1))], -1).astype(np.float32)
    return np.round(kp, 3)


def test_openpose_json_round_trip_people_and_gaps(tmp_path):
    kp = random_keypoints(4)
    kp[2] = 0  # nobody in frame 2
    write_openpose_dir(tmp_path / "v", "0001", kp)
    files = sorted(p.name for p in (tmp_path / "v").iterdir())
    assert files[0] == "0001_000000000000_keypoints.json" and len(files) == 4
    assert not (tmp_path / "v.partial").exists()
    (tmp_path / "v" / files[3]).unlink()  # frame 3 missing, frame 4 present
    other = random_keypoints(1, seed=1)[0]
    doc = json.loads((tmp_path / "v" / files[1]).read_text())
    weak = {k: [v * 0.5 if i % 3 == 2 else v for i, v in enumerate(x)] if isinstance(x, list)
            and k.endswith("2d") else x for k, x in doc["people"][0].items()}
    doc["people"] = [weak, doc["people"][0]]  # a less confident second person comes first
    (tmp_path / "v" / files[1]).write_text(json.dumps(doc))
    with open(tmp_path / "v" / "0001_000000000004_keypoints.json", "w") as f:
        f.write(json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d":
                                                        other[:25].reshape(-1).tolist()}]}))
    got = read_keypoints(tmp_path / "v")
    assert got.shape == (5, NUM_KEYPOINTS, 3)
    np.testing.assert_allclose(got[:3], kp[:3], atol=1e-3)
    assert not got[3].any()
    np.testing.assert_allclose(got[4, :25], other[:25], atol=1e-3)
    assert not got[4, 25:].any()  # no face / hands given: zeros


def test_openpose_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "x_000000000000_keypoints.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="x_000000000000_keypoints.json: not a readable"):
        read_openpose_frame(bad)
    bad.write_text(json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 74}]}))
    with pytest.raises(DatasetError, match="pose_keypoints_2d has 74 numbers, expected 75"):
        read_openpose_frame(bad)
    bad.write_text(json.dumps({"frames": []}))
    with pytest.raises(DatasetError, match="no `people` list"):
        read_openpose_frame(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no OpenPose"):
        read_keypoints(tmp_path / "empty")


def test_keypoint_tables_csv_and_xlsx(tmp_path):
    kp = random_keypoints(3)
    rows = ["frame," + ",".join(f"k{i}_{c}" for i in range(NUM_KEYPOINTS) for c in "xyc")]
    rows += [f"{i}," + ",".join(f"{v:.3f}" for v in kp[i].reshape(-1)) for i in range(3)]
    (tmp_path / "full.csv").write_text("\n".join(rows) + "\n")
    np.testing.assert_allclose(read_keypoints(tmp_path / "full.csv"), kp, atol=1e-3)
    # MiGA's light_hand: a leading column, BODY_25, 5 right-hand then 5 left-hand points.
    light = np.concatenate([kp[:, :25], kp[:, 116:121], kp[:, 95:100]], 1)
    (tmp_path / "0001_light_hand.csv").write_text("\n".join(
        f"{i}," + ",".join(f"{v:.3f}" for v in light[i].reshape(-1)) for i in range(3)))
    got = read_keypoints(tmp_path / "0001_light_hand.csv")
    np.testing.assert_allclose(got[:, :25], kp[:, :25], atol=1e-3)
    np.testing.assert_allclose(got[:, [RIGHT_HAND.start + f for f in FINGERTIPS]],
                               kp[:, 116:121], atol=1e-3)
    np.testing.assert_allclose(got[:, [LEFT_HAND.start + f for f in FINGERTIPS]],
                               kp[:, 95:100], atol=1e-3)
    assert not got[:, 25:95].any()
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    for i in range(3):
        sheet.append([float(v) for v in kp[i, :25].reshape(-1)])  # BODY_25 only, no frame column
    book.save(tmp_path / "0002.xlsx")
    got = read_keypoints(tmp_path / "0002.xlsx")
    np.testing.assert_allclose(got[:, :25], kp[:, :25], atol=1e-3)
    assert got.shape == (3, NUM_KEYPOINTS, 3) and not got[:, 25:].any()


def test_keypoint_table_errors_name_file_and_row(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("\n".join([",".join(["1"] * 75), ",".join(["1"] * 74)]))
    with pytest.raises(DatasetError, match=r"s.csv, row 2: 74 columns, expected 75"):
        read_keypoint_table(p)
    p.write_text("\n".join([",".join(["1"] * 75), ",".join(["1"] * 74 + ["abc"])]))
    with pytest.raises(DatasetError, match=r"s.csv, row 2: 'abc' is not a number"):
        read_keypoint_table(p)
    p.write_text(",".join(["1"] * 10))
    with pytest.raises(DatasetError, match=r"s.csv, row 1: 10 columns"):
        read_keypoint_table(p)
    p.write_text("\n".join(["0," + ",".join(["1"] * 75)] * 2))
    with pytest.raises(DatasetError, match="frame numbers .* repeat"):
        read_keypoint_table(p)
    with pytest.raises(DatasetError, match="no such skeleton"):
        read_keypoints(tmp_path / "missing.csv")


def test_graph_partition_matches_the_tree():
    A = adjacency_subsets()
    assert A.shape == (3, 25, 25)
    np.testing.assert_array_equal(A[0], np.eye(25))
    assert len(EDGES) == 24  # a tree over 25 joints
    for child, parent in EDGES:
        assert A[1, child, parent] > 0 and A[2, parent, child] > 0
    # Column-normalised: every receiver averages its senders.
    for k in (1, 2):
        cols = A[k].sum(0)
        np.testing.assert_allclose(cols[cols > 0], 1.0, rtol=1e-6)
    # Loop: each parent receives inward from exactly its children.
    for parent in range(25):
        children = [c for c, p in EDGES if p == parent]
        np.testing.assert_allclose(A[1][:, parent].nonzero()[0], sorted(children))


def test_normalise_is_translation_and_scale_free_and_keeps_misses():
    kp = random_keypoints(6)[:, :25]
    kp[2, 7] = 0  # a missed wrist
    a = normalise(kp)
    moved = kp.copy()
    moved[..., :2] = kp[..., :2] * 2.5 + np.array([30.0, -12.0])
    moved[2, 7] = 0
    np.testing.assert_allclose(normalise(moved), a, atol=1e-4)
    assert not a[2, 7].any()
    np.testing.assert_allclose(a[..., 1:2, :2].mean((0, 1)), 0.0, atol=1e-5)  # mean neck at 0
    shoulder = np.linalg.norm(a[:, 2, :2] - a[:, 5, :2], axis=-1).mean()
    assert shoulder == pytest.approx(1.0, rel=1e-4)


def test_bones_and_sampling_against_loops():
    j = normalise(random_keypoints(5)[:, :25])
    j[1, 3] = 0
    b = bones(j)
    for t in range(5):
        for v in range(25):
            p = BODY_25_PARENTS[v]
            conf = min(j[t, v, 2], j[t, p, 2])
            want = (j[t, v, :2] - j[t, p, :2]) if conf > 0 else np.zeros(2)
            np.testing.assert_allclose(b[t, v, :2], want, atol=1e-6)
            assert b[t, v, 2] == pytest.approx(conf)
    assert not b[:, 1, :2].any()  # the root's bone is zero
    np.testing.assert_array_equal(sample_frames(10, 5), [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(sample_frames(3, 6), [0, 0, 1, 1, 2, 2])
    rng = np.random.default_rng(0)
    for length in (1, 7, 40, 301):
        idx = sample_frames(length, 16, rng)
        edges = np.linspace(0, length, 17)
        assert (idx >= np.floor(edges[:-1]) - 1e-9).all() and (idx <= length - 1).all()
        assert (np.diff(idx) >= 0).all()
    x = clip_input(random_keypoints(30), 8, "bone")
    assert x.shape == (3, 8, 25) and x.dtype == np.float32


def graph_conv_reference(gc: GraphConv, x: torch.Tensor) -> torch.Tensor:
    """GraphConv.forward in float64 with explicit loops over subsets and receivers."""
    gc = gc.double().eval()
    x = x.double()
    n, c, t, v = x.shape
    y = 0
    for k in range(gc.A.shape[0]):
        a = gc.theta[k](x)  # (N, e, T, V)
        b = gc.phi[k](x)
        sim = torch.zeros(n, v, v, dtype=torch.float64)
        for i in range(v):
            for j in range(v):
                sim[:, i, j] = (a[:, :, :, i] * b[:, :, :, j]).sum((1, 2)) / (a.shape[1] * t)
        sim = torch.softmax(sim, dim=1)
        graph = gc.A[k] + gc.B[k] + sim  # (N, V, V)
        agg = torch.zeros_like(x)
        for w in range(v):  # receiver w sums senders u
            agg[..., w] = (x * graph[:, None, None, :, w]).sum(-1)
        y = y + gc.conv[k](agg)
    return torch.relu(gc.bn(y) + gc.down(x))


def test_graph_conv_equals_a_float64_loop():
    torch.manual_seed(0)
    A = torch.as_tensor(adjacency_subsets())
    gc = GraphConv(3, 8, A)
    with torch.no_grad():
        gc.B.normal_(0, 0.1)
        gc.bn.weight.fill_(1.0)
        gc.bn.running_mean.normal_(0, 0.1)
    gc.eval()
    x = torch.randn(2, 3, 5, 25)
    with torch.no_grad():
        got = gc(x)
        want = graph_conv_reference(gc, x)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


def test_agcn_shapes_and_it_learns_which_joint_moves():
    torch.manual_seed(0)
    model = AGCN(AGCNConfig(channels=[16, 16, 32], strides=[1, 2, 1]), num_classes=3)
    x = torch.randn(4, 3, 16, 25)
    assert model(x).shape == (4, 3) and model.tokens(x).shape == (4, 8, 25, 32)
    # Class k: joint (4, 7, 11)[k] oscillates; a few steps fit it.
    g = torch.Generator().manual_seed(1)
    y = torch.arange(24) % 3
    x = torch.randn(24, 3, 16, 25, generator=g) * 0.05
    t = torch.arange(16, dtype=torch.float32)
    for i, k in enumerate(y.tolist()):
        x[i, 0, :, (4, 7, 11)[k]] += torch.sin(t)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):  # enough for batch norm's running statistics too
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(-1) == y).float().mean() == 1.0


def test_metrics_hand_computed():
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.2, 0.2, 0.2], [0.0, 0.1, 0.9]])
    labels = np.array([1, 0, 2, 1])
    # Ranks (ties to the lower id): [1,2,0], [2,0,1], [0,1,2], [2,1,0].
    assert topk_accuracy(scores, labels, 1) == 0.25
    assert topk_accuracy(scores, labels, 2) == 0.75
    assert topk_accuracy(scores, labels, 3) == 1.0
    cm = confusion_matrix(np.array([1, 2, 0, 2]), labels, 3)
    np.testing.assert_array_equal(cm, [[0, 0, 1], [0, 1, 1], [1, 0, 0]])
    rep = classification_report(scores, labels, ["a", "b", "c"])
    assert rep["top1"] == 0.25 and rep["clips"] == 4
    assert rep["per_class"]["b"] == {"accuracy": 0.5, "clips": 2}
    assert rep["mean_class_accuracy"] == pytest.approx((0 + 0.5 + 0) / 3)
    rep = classification_report(scores[:2], labels[:2], ["a", "b", "c"])
    assert set(rep["per_class"]) == {"a", "b"}  # class c has no clips: left out of the mean
