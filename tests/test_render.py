import json
from collections import Counter

import av
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from detect.apps.convert import synth_videos
from detect.data.converters.smg import convert_smg
from detect.synthetic.videos import (
    CAMERA_DEPTH_M,
    FIGURE_TO_KINECT,
    FOCAL_HEIGHTS,
    GESTURES,
    JOINTS,
    KINECT_JOINTS,
    MAX_DEPTH_MM,
    PlannedGesture,
    class_names,
    draw_capsules,
    envelope,
    joint_groups,
    plan_timeline,
    render_dataset,
    render_video,
    synthetic_split,
)


def _decode(path):
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(st)])
        return frames.astype(np.float32), float(st.average_rate)


def _energy(frames, ys=slice(None), xs=slice(None)):
    """Mean absolute frame difference in a region: (T,), entry t compares frames t-1 and t."""
    d = np.abs(np.diff(frames[:, ys, xs], axis=0)).mean(axis=(1, 2, 3))
    return np.concatenate([[0.0], d])


def test_envelope_shape():
    env = envelope(45, 30.0)
    assert np.all(env > 0) and env.max() == 1.0
    np.testing.assert_allclose(env, env[::-1])
    assert np.all(np.diff(env[:22]) >= 0)


def test_draw_capsules_matches_a_pixel_loop():
    rng = np.random.default_rng(0)
    n, h, w = 3, 12, 14
    a = rng.uniform(-2, 15, size=(n, 2))
    b = rng.uniform(-2, 15, size=(n, 2))
    b[1] = a[1]  # a disc
    color = np.array([255.0, 128.0, 7.0])
    r = 2.3
    canvas = np.full((n, h, w, 3), 40.0, np.float32)
    draw_capsules(canvas, a, b, r, color)
    ref = np.full((n, h, w, 3), 40.0)
    for k in range(n):
        d = b[k] - a[k]
        for i in range(h):
            for j in range(w):
                p = np.array([j, i], dtype=np.float64) - a[k]
                t = 0.0 if d @ d == 0 else min(max((p @ d) / (d @ d), 0.0), 1.0)
                dist = np.linalg.norm(p - t * d)
                alpha = min(max(r + 0.5 - dist, 0.0), 1.0)
                ref[k, i, j] = 40.0 + alpha * (color - 40.0)
    np.testing.assert_allclose(canvas, ref, atol=1e-3)


def test_timeline_statistics():
    fps, classes = 30.0, 12
    plan = plan_timeline(int(60 * 60 * fps), fps, classes, np.random.default_rng(5))
    again = plan_timeline(int(60 * 60 * fps), fps, classes, np.random.default_rng(5))
    assert plan == again
    lengths = np.array([p.end - p.start + 1 for p in plan]) / fps
    assert lengths.min() >= 0.5 - 1 / fps and lengths.max() <= 6.0 + 1 / fps
    assert 1.0 < np.median(lengths) < 2.5
    assert [p.start for p in plan] == sorted(p.start for p in plan)
    # One gesture at a time per body part; other body parts may overlap.
    overlaps = 0
    for i, p in enumerate(plan):
        for q in plan[i + 1 :]:
            if q.start > p.end:
                break
            overlaps += 1
            assert not joint_groups(p.label, p.side) & joint_groups(q.label, q.side)
    assert 0.02 * len(plan) < overlaps < 0.25 * len(plan)
    # Imbalanced, every class present, bursts.
    counts = Counter(p.label for p in plan)
    assert set(counts) == set(range(classes))
    assert counts[0] > 3 * counts[classes - 1]
    gaps = np.array([q.start - p.end for p, q in zip(plan, plan[1:], strict=False)]) / fps
    assert np.mean(gaps < 1.0) > 0.3


def test_rendered_motion_matches_labels(tmp_path):
    fps, size, n = 30.0, (96, 72), 240
    eyes = [g.name for g in GESTURES].index("rubbing eyes")
    legs = [g.name for g in GESTURES].index("moving legs")
    plan = [PlannedGesture(eyes, -1, 30, 89), PlannedGesture(legs, +1, 150, 209)]
    path = tmp_path / "v.mp4"
    render_video(path, n, plan, size, fps, seed=3)
    frames, rate = _decode(path)
    assert frames.shape == (n, 72, 96, 3) and rate == fps
    w, h = size
    # The figure's right arm is on the image's left, its left leg low on the right.
    arm = _energy(frames, slice(0, int(0.55 * h)), slice(0, w // 2))
    leg = _energy(frames, slice(int(0.6 * h), h), slice(w // 2, w))
    quiet = np.ones(n, bool)
    for p in plan:
        quiet[p.start : p.end + 2] = False
    quiet[0] = False
    arm_span, leg_span = slice(31, 90), slice(151, 210)
    assert arm[arm_span].mean() > 10 * arm[quiet].mean()
    assert leg[leg_span].mean() > 10 * leg[quiet].mean()
    # Each limb moves only in its own gesture.
    assert arm[leg_span].mean() < 0.1 * arm[arm_span].mean()
    assert leg[arm_span].mean() < 0.1 * leg[leg_span].mean()


def test_skeleton_is_smgs_kinect_format_with_the_figures_exact_joints(tmp_path):
    fps, size, n = 25.0, (96, 72), 40
    hair = [g.name for g in GESTURES].index("playing with hair")
    legs = [g.name for g in GESTURES].index("crossing legs")
    plan = [PlannedGesture(hair, -1, 2, 30), PlannedGesture(legs, +1, 5, 35)]
    csv = tmp_path / "Sample0001_skeleton.csv"
    joints = render_video(tmp_path / "v.mp4", n, plan, size, fps, seed=4, skeleton=csv)
    frames, _ = _decode(tmp_path / "v.mp4")
    float(csv.read_text().split(",", 1)[0])  # no header: the first field is a number
    rows = np.loadtxt(csv, delimiter=",", ndmin=2)
    assert rows.shape == (len(frames), 25 * 11) == (n, 275)
    skel = rows.reshape(n, 25, 11)
    assert len(KINECT_JOINTS) == 25 and KINECT_JOINTS[20] == "SpineShoulder"
    k = {name: i for i, name in enumerate(KINECT_JOINTS)}
    # The image columns are the figure's joints, to the printed 3 decimals.
    assert set(FIGURE_TO_KINECT) == set(JOINTS)
    for name, idx in FIGURE_TO_KINECT.items():
        np.testing.assert_allclose(skel[:, idx, 7:9], joints[name], atol=6e-4, err_msg=name)
    assert FIGURE_TO_KINECT["hand_R"] == k["HandRight"] and FIGURE_TO_KINECT["head"] == k["Head"]
    np.testing.assert_allclose(skel[:, k["HandLeft"], 7:9], joints["hand_L"], atol=6e-4)
    pelvis = (joints["hip_L"] + joints["hip_R"]) / 2
    np.testing.assert_allclose(skel[:, k["SpineBase"], 7:9], pelvis, atol=6e-4)
    np.testing.assert_allclose(skel[:, k["WristRight"], 7:9], joints["hand_R"], atol=6e-4)
    # The gestures moved the joints, so the check above is not of a still figure.
    assert np.ptp(joints["hand_R"][:, 1]) > 10 and np.ptp(joints["foot_L"][:, 0]) > 5
    # Every joint is tracked (no all-zero joint), with the identity orientation.
    assert np.all(np.abs(skel).sum(axis=2) > 0)
    np.testing.assert_array_equal(skel[..., 3:7], np.broadcast_to([1.0, 0, 0, 0], (n, 25, 4)))
    np.testing.assert_array_equal(skel[..., 9:], 0.0)
    # World: one pinhole back-projection, x to the sensor's left (the image's left), y up.
    metres_per_pixel = CAMERA_DEPTH_M / (FOCAL_HEIGHTS * size[1])
    np.testing.assert_allclose(skel[..., 2], CAMERA_DEPTH_M)
    centre = np.array(size) / 2
    np.testing.assert_allclose(
        skel[..., :2], (skel[..., 7:9] - centre) * [-1, -1] * metres_per_pixel, atol=2e-5
    )
    a, b = k["ShoulderLeft"], k["ShoulderRight"]
    world = np.linalg.norm(skel[:, a, :3] - skel[:, b, :3], axis=1)
    pixels = np.linalg.norm(skel[:, a, 7:9] - skel[:, b, 7:9], axis=1)
    np.testing.assert_allclose(world / pixels, metres_per_pixel, rtol=1e-3)
    assert 0.35 < world.mean() < 0.5  # shoulders of a person
    assert np.all(skel[:, k["HandRight"], 0] > skel[:, k["SpineBase"], 0])  # the person's right
    assert np.all(skel[:, k["Head"], 1] > skel[:, k["FootLeft"], 1])
    # Derived joints stay on their limb: the tip beyond the hand, the ankle above the foot.
    tip, hand, elbow = (skel[:, k[j], 7:9] for j in ("HandTipLeft", "HandLeft", "ElbowLeft"))
    np.testing.assert_allclose(
        np.linalg.norm(tip - elbow, axis=1),
        np.linalg.norm(hand - elbow, axis=1) + np.linalg.norm(tip - hand, axis=1), atol=2e-3,
    )
    assert np.all(skel[:, k["AnkleRight"], 8] < skel[:, k["FootRight"], 8])


def test_render_dataset_labels_layout_and_resume(tmp_path):
    out = tmp_path / "synth"
    kw = dict(videos=3, minutes=0.25, classes=12, seed=1, size=(96, 72), fps=30.0)
    paths = render_dataset(out, progress=False, **kw)
    assert [p.name for p in paths] == [f"Sample000{i}_color.mp4" for i in (1, 2, 3)]
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["classes"] == class_names(12)
    assert (out / "classes.txt").read_text().split("\n")[:12] == class_names(12)
    # The SMG converter reads the rendered set back to the same annotations.
    back = convert_smg(out, None, split=synthetic_split(3), classes=class_names(12), verbose=False)
    assert back == ann
    assert [v["subset"] for v in ann["database"].values()] == ["train", "val", "test"]
    inside_all, outside_all = [], []
    for i, path in enumerate(paths, start=1):
        frames, rate = _decode(path)
        assert frames.shape == (450, 72, 96, 3) and rate == 30.0
        rows = np.loadtxt(path.parent / f"Sample000{i}_finelabels.csv", delimiter=",", ndmin=2)
        plan = plan_timeline(450, 30.0, 12, np.random.default_rng([1, i, 0]))
        assert rows.astype(int).tolist() == [[p.label + 1, p.start, p.end] for p in plan]
        skel = np.loadtxt(path.parent / f"Sample000{i}_skeleton.csv", delimiter=",", ndmin=2)
        assert skel.shape == (450, 25 * 11)
        data = (path.parent / f"Sample000{i}_data.csv").read_text().splitlines()
        assert data == ["numFrames,fps,maxDepth", f"450,30,{MAX_DEPTH_MM}"]
        # Pixels move inside the labelled spans and stay nearly still outside them.
        energy = _energy(frames)
        inside = np.zeros(450, bool)
        for p in plan:
            inside[p.start + 1 : p.end + 1] = True
        near = np.convolve(inside, np.ones(3), "same") > 0
        near[:10] = True  # the encoder's first frames still refine the picture
        inside_all.append(energy[inside])
        outside_all.append(energy[~near])
    inside_e, outside_e = np.concatenate(inside_all), np.concatenate(outside_all)
    assert inside_e.mean() > 8 * outside_e.mean()
    assert np.percentile(outside_e, 95) < 0.4 * inside_e.mean()
    # A second run skips the finished videos; other settings need another folder.
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert render_dataset(out, progress=False, **kw) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    assert json.loads((out / "annotations.json").read_text()) == ann
    with pytest.raises(ValueError, match="render.json"):
        render_dataset(out, progress=False, **{**kw, "seed": 2})


def test_synth_videos_command(tmp_path):
    app = typer.Typer()
    app.command("synth-videos")(synth_videos)

    @app.callback()
    def main() -> None:
        pass

    out = tmp_path / "s"
    args = ["synth-videos", "--out", str(out), "--videos", "1", "--minutes", "0.02",
            "--classes", "3", "--size", "64x48"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["classes"] == class_names(3) and ann["database"]["Sample0001"]["duration"] == 1.2
    res = CliRunner().invoke(app, [*args[:-1], "64x47"])
    assert res.exit_code == 2 and "even" in res.output
