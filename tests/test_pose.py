"""Pose feature sets (`python -m extract pose`): the 10 fps tick mapping against a loop and
against the RGB decoder, SMG's Kinect CSVs and iMiGUE's OpenPose files through the whole run
(shapes, timestamps, centring and scaling by hand, velocities, confidences, missing joints and
people, failures.json, resume, the key), BlazePose's landmark conversion, and the joint tables."""

from __future__ import annotations

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from extract.__main__ import app
from extract.cache import FeatureSet, feature_timestamps, read_video, settings_key
from extract.decode import DecodeSettings, decode_all
from extract.pipeline import inspect_featureset
from extract.pose import PoseError
from extract.pose.features import feature_names, num_ticks, step_features, tick_indices
from extract.pose.joints import (
    BLAZEPOSE,
    BLAZEPOSE_33,
    COMMON_JOINTS,
    KINECT,
    KINECT_V2,
    LAYOUTS,
    OPENPOSE,
    to_common,
)
from extract.pose.kinect import read_kinect_csv, read_smg_data
from extract.pose.mediapipe_pose import blazepose_points, video_points
from extract.pose.openpose import (
    BODY_25,
    LEFT_HAND,
    NUM_KEYPOINTS,
    find_imigue_keypoints,
    write_openpose_dir,
)
from extract.pose.run import (
    KinectSource,
    OpenPoseSource,
    VideoSource,
    pose_settings,
    run_pose_extraction,
)
from tests.videos import cfr_times, write_noise_video, write_video

J = len(COMMON_JOINTS)
C = 5 * J


def idx(name: str) -> int:
    return COMMON_JOINTS.index(name)


def pos_x(name: str) -> int:
    return 2 * idx(name)


def vel_x(name: str) -> int:
    return 2 * J + 2 * idx(name)


def conf(name: str) -> int:
    return 4 * J + idx(name)


# ---------------------------------------------------------------- ticks


def reference_ticks(n: int, source_fps: float, fps: float) -> list[int]:
    """For each tick k / fps <= t_last, the last source frame i with i / source_fps <= k / fps."""
    src, rate = Fraction(source_fps), Fraction(fps)
    t_last = Fraction(n - 1) / src
    out, k = [], 0
    while Fraction(k) / rate <= t_last:
        i = 0
        while i + 1 < n and Fraction(i + 1) / src <= Fraction(k) / rate:
            i += 1
        out.append(i)
        k += 1
    return out


@pytest.mark.parametrize("source_fps", [30.0, 28.5, 25.0, 10.0, 7.5])
@pytest.mark.parametrize("n", [1, 2, 29, 90, 301])
def test_tick_mapping_matches_a_loop(source_fps, n):
    got = tick_indices(n, source_fps, 10.0)
    assert got.tolist() == reference_ticks(n, source_fps, 10.0)
    assert len(got) == num_ticks(n, source_fps, 10.0)


def test_tick_mapping_picks_the_frames_the_rgb_decoder_picks(tmp_path):
    """A 28.5 fps video decoded by extract.decode shows the source frames tick_indices names."""
    n = 40
    path = write_video(tmp_path / "v.mp4", cfr_times(Fraction(57, 2), n))
    frames, res = decode_all(path, DecodeSettings(10.0, 0, 0))
    ticks = tick_indices(n, 28.5, 10.0)
    assert res.num_frames == len(ticks) == frames.shape[0]
    assert np.round(np.asarray(res.chosen_pts) * 28.5).astype(int).tolist() == ticks.tolist()


# ---------------------------------------------------------------- Kinect


NECK_XY = (320.0, 200.0)
SHOULDER_W = 80.0


def kinect_row(i: int) -> np.ndarray:
    """One frame of a standing figure (25 x 11 numbers) whose right wrist moves 2 px a frame."""
    image = {
        "Head": (320, 150), "SpineShoulder": NECK_XY, "Neck": (320, 180),
        "ShoulderR": (280, 200), "ElbowR": (260, 240), "WristR": (250 + 2 * i, 280),
        "HandR": (248 + 2 * i, 290), "ShoulderL": (360, 200), "ElbowL": (380, 240),
        "WristL": (390, 280), "HandL": (392, 290), "SpineBase": (320, 300),
        "SpineMid": (320, 250), "HipR": (300, 300), "KneeR": (300, 360), "AnkleR": (300, 420),
        "FootR": (295, 430), "HipL": (340, 300), "KneeL": (340, 360), "AnkleL": (340, 420),
        "FootL": (345, 430), "HandTipL": (394, 300), "ThumbL": (388, 292),
        "HandTipR": (246 + 2 * i, 300), "ThumbR": (252 + 2 * i, 292),
    }  # fmt: skip
    row = np.zeros((25, 11))
    for j, name in enumerate(KINECT_V2):
        row[j, :3] = (0.1 * j, 0.5, 2.0)  # world metres
        row[j, 3:7] = (1, 0, 0, 0)  # orientation
        row[j, 7:9] = image[name]
    return row


def kinect_table(n: int = 90) -> np.ndarray:
    """(n, 25, 11): left knee untracked in frames 10-19, nobody in frames 60-62."""
    t = np.stack([kinect_row(i) for i in range(n)])
    t[10:20, KINECT_V2.index("KneeL")] = 0
    t[60:63] = 0
    return t


def write_kinect(folder: Path, sample: str, table: np.ndarray, fps: float | None = 30.0,
                 header: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sample}_skeleton.csv"
    lines = [",".join(f"{v:g}" for v in row.reshape(-1)) for row in table]
    path.write_text("\n".join(lines) + "\n")
    if fps is not None:
        values = f"{len(table)},{fps:g},4000\n"
        (folder / f"{sample}_data.csv").write_text(
            ("numFrames,fps,maxDepth\n" if header else "") + values)
    return path


def test_kinect_csv_reader_and_data_csv(tmp_path):
    path = write_kinect(tmp_path, "Sample0001", kinect_table(70), header=False)
    pts = read_kinect_csv(path)
    assert pts.shape == (70, 25, 3)
    knee = KINECT_V2.index("KneeL")
    assert pts[5, KINECT_V2.index("WristR")].tolist() == [260, 280, 1]
    assert (pts[10:20, knee] == 0).all() and (pts[20:, knee, 2][:40] == 1).all()
    assert (pts[60:63] == 0).all()
    assert read_smg_data(tmp_path / "Sample0001_data.csv").fps == 30.0
    (tmp_path / "d.csv").write_text("numFrames,fps,maxDepth\r\n70,28.5,4000\r\n")
    assert read_smg_data(tmp_path / "d.csv").fps == 28.5
    (tmp_path / "d.csv").write_text("numFrames,fps,maxDepth\n70,fast,4000\n")
    with pytest.raises(PoseError, match=r"d\.csv, row 2"):
        read_smg_data(tmp_path / "d.csv")


def test_kinect_bad_rows_name_file_and_row(tmp_path):
    path = write_kinect(tmp_path, "Sample0001", kinect_table(8))
    lines = path.read_text().splitlines()
    lines[4] = ",".join(lines[4].split(",")[:-1])  # 274 values
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PoseError, match=r"Sample0001_skeleton\.csv, row 5: 274 values"):
        read_kinect_csv(path)
    lines = path.read_text().splitlines()
    lines[4] = lines[3]
    lines[2] = lines[2].replace("320", "abc", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PoseError, match=r"row 3: 'abc' is not a number"):
        read_kinect_csv(path)
    path.write_text("")
    with pytest.raises(PoseError, match="empty"):
        read_kinect_csv(path)


def test_kinect_features_by_hand(tmp_path):
    root = tmp_path / "smg" / "smg_skeleton_train"
    write_kinect(root / "Sample0001", "Sample0001", kinect_table(90))
    s = run_pose_extraction(KinectSource(tmp_path / "smg"), tmp_path / "out", progress=False)
    assert s.ok and s.done == ["Sample0001"]
    v = FeatureSet.open(s.featureset).load("Sample0001")
    # 90 frames at 30 fps: t_last 89/30 s -> 30 ticks at 10 fps -> 7 steps of 4
    assert v.features.shape == (7, C) and v.features.dtype == np.float32
    np.testing.assert_array_equal(v.timestamps, feature_timestamps(7, 4, 10.0))
    m = v.meta
    assert (m.model, m.num_frames, m.source_fps, m.stride, m.fps) == ("kinect-v2-25", 30, 30.0,
                                                                      4, 10.0)
    assert m.duration == pytest.approx(3.0)
    f = v.features
    # step 0 = ticks 0-3 = source frames 0, 3, 6, 9; centre the neck (320, 200), scale 80 px
    wrist_x = np.mean([250 + 2 * i for i in (0, 3, 6, 9)])
    assert f[0, pos_x("right_wrist")] == pytest.approx((wrist_x - NECK_XY[0]) / SHOULDER_W)
    assert f[0, pos_x("right_wrist") + 1] == pytest.approx((280 - 200) / SHOULDER_W)
    assert f[0, pos_x("head") + 1] == pytest.approx((150 - 200) / SHOULDER_W)
    assert f[0, pos_x("neck")] == 0 and f[0, pos_x("neck") + 1] == 0
    # velocity per 10 fps frame: 3 source frames x 2 px, over the 80 px body
    assert f[1, vel_x("right_wrist")] == pytest.approx(6 / SHOULDER_W)
    assert f[0, vel_x("right_wrist")] == pytest.approx(6 / SHOULDER_W)  # ticks 1-3 only
    assert f[1, vel_x("left_wrist")] == 0
    assert f[:, conf("head")].tolist() == [1.0] * 5 + [0.75, 1.0]  # nobody at tick 20
    # left knee untracked at source frames 10-19 = ticks 4, 5, 6 (frames 12, 15, 18)
    assert f[1, conf("left_knee")] == pytest.approx(0.25)
    assert f[1, pos_x("left_knee")] == pytest.approx((340 - 320) / SHOULDER_W)
    counts = m.extra["pose"]
    assert counts["missing_joint_ticks"]["left_knee"] == 3 + 1
    assert counts["missing_joint_ticks"]["head"] == 1
    assert counts["ticks_without_person"] == 1 and counts["ticks_centre_carried"] == 1
    assert counts["source_frames_without_person"] == 3 and counts["scale_px"] == SHOULDER_W
    assert s.counts["Sample0001"] == counts
    pts = read_video(s.featureset / "Sample0001.h5")
    assert pts.num_steps == 7
    report = inspect_featureset(s.featureset, progress=False)
    assert report.broken == {} and report.videos == 1


def test_kinect_run_failures_resume_and_cli(tmp_path):
    root = tmp_path / "smg"
    write_kinect(root / "Sample0001", "Sample0001", kinect_table(40))
    bad = write_kinect(root / "Sample0002", "Sample0002", kinect_table(40))
    lines = bad.read_text().splitlines()
    lines[6] += ",1"
    bad.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(app, ["pose", "--out", str(tmp_path / "out"), "--dataset", "smg",
                                 str(root), "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "FAILED Sample0002" in r.output and "row 7: 276 values" in r.output
    fs = FeatureSet.open(Path(r.output.strip().splitlines()[-1]))
    assert fs.video_ids() == ["Sample0001"]
    assert "Sample0002_skeleton.csv, row 7" in fs.failures()["Sample0002"]
    first = (fs.path / "Sample0001.h5").stat().st_mtime_ns
    again = run_pose_extraction(KinectSource(root), tmp_path / "out", progress=False)
    assert again.skipped == ["Sample0001"] and list(again.failed) == ["Sample0002"]
    assert (fs.path / "Sample0001.h5").stat().st_mtime_ns == first
    lines[6] = lines[5]
    bad.write_text("\n".join(lines) + "\n")
    fixed = run_pose_extraction(KinectSource(root), tmp_path / "out", progress=False)
    assert fixed.ok and fixed.done == ["Sample0002"] and fs.failures() == {}
    records = [json.loads(p.read_text()) for p in sorted((fs.path / "runs").glob("*.json"))]
    assert len(records) == 3 and "Sample0002" in records[-1]["counts"]


def test_missing_data_csv_needs_source_fps(tmp_path):
    root = tmp_path / "smg"
    write_kinect(root / "Sample0003", "Sample0003", kinect_table(40), fps=None)
    s = run_pose_extraction(KinectSource(root), tmp_path / "out", progress=False)
    assert "no Sample0003_data.csv beside it" in s.failed["Sample0003"]
    assert "--source-fps" in s.failed["Sample0003"]
    s = run_pose_extraction(KinectSource(root, 20.0), tmp_path / "out", progress=False)
    assert s.ok and FeatureSet.open(s.featureset).load("Sample0003").meta.source_fps == 20.0


def test_the_key_follows_every_setting(tmp_path):
    keys = {settings_key(*pose_settings(KinectSource(tmp_path), 10.0, 4))}
    for source, fps, stride in [(KinectSource(tmp_path), 10.0, 8),
                                (KinectSource(tmp_path), 5.0, 4),
                                (KinectSource(tmp_path, 30.0), 10.0, 4),
                                (OpenPoseSource(tmp_path), 10.0, 4),
                                (OpenPoseSource(tmp_path, 30.0), 10.0, 4)]:
        keys.add(settings_key(*pose_settings(source, fps, stride)))
    assert len(keys) == 6
    assert settings_key(*pose_settings(KinectSource(tmp_path / "x"), 10.0, 4)) in keys
    with pytest.raises(ValueError, match="--joints"):
        pose_settings(KinectSource(tmp_path), 10.0, 4, joints="native")


# ---------------------------------------------------------------- OpenPose


def openpose_figure(n: int, hands: bool = True) -> np.ndarray:
    """(n, 137, 3): an upper body whose right wrist moves 3 px a frame; the left hand's
    knuckles present when `hands`."""
    kp = np.zeros((n, NUM_KEYPOINTS, 3), np.float32)
    body = {"nose": (500, 200), "neck": (500, 300), "right_shoulder": (440, 300),
            "left_shoulder": (560, 300), "right_elbow": (420, 400), "left_elbow": (580, 400),
            "right_wrist": (430, 480), "left_wrist": (570, 480)}
    for name, xy in body.items():
        kp[:, BODY_25.index(name), :2] = xy
        kp[:, BODY_25.index(name), 2] = 0.8
    kp[:, BODY_25.index("right_wrist"), 0] += 3 * np.arange(n)
    kp[:, BODY_25.index("nose"), 2] = 0.5
    if hands:
        for p, x in zip((5, 9, 13, 17), (560, 570, 580, 590), strict=True):
            kp[:, LEFT_HAND.start + p] = (x, 520, 0.6)
        kp[:, LEFT_HAND.start + 9, 2] = 0.4
    return kp


def test_openpose_json_folder_run(tmp_path):
    root = tmp_path / "imigue"
    kp = openpose_figure(50)
    kp[12] = 0  # nobody at frame 12 (tick 5)
    write_openpose_dir(root / "0007" / "0007_openpose", "0007", kp)
    (root / "0007" / "0007_openpose" / "0007_000000000020_keypoints.json").unlink()  # tick 8
    write_noise_video(root / "0007" / "0007.mp4", 2.0, fps=20)
    write_openpose_dir(root / "Data" / "skeleton" / "raw" / "9", "9", openpose_figure(30))
    assert find_imigue_keypoints(root) == {
        "0007": root / "0007" / "0007_openpose", "0009": root / "Data/skeleton/raw/9"}
    s = run_pose_extraction(OpenPoseSource(root), tmp_path / "out", progress=False)
    assert s.ok and s.done == ["0007", "0009"]
    fs = FeatureSet.open(s.featureset)
    v = fs.load("0007")
    # fps 20 from the video beside: 50 frames, t_last 2.45 s -> 25 ticks -> 6 steps
    assert v.meta.source_fps == 20.0 and v.meta.extra["fps_from"].endswith("0007.mp4")
    assert v.features.shape == (6, C) and v.meta.model == "openpose-body25"
    f = v.features
    assert f[0, pos_x("right_wrist")] == pytest.approx((430 + 3 * 3 - 500) / 120)  # frames 0..6
    assert f[2, vel_x("right_wrist")] == pytest.approx(3 * 2 / 120)
    assert f[0, conf("head")] == pytest.approx(0.5) and f[0, conf("neck")] == pytest.approx(0.8)
    # the left hand is its four knuckles' mean with the lowest confidence; the right has none
    assert f[0, pos_x("left_hand")] == pytest.approx((575 - 500) / 120)
    assert f[0, conf("left_hand")] == pytest.approx(0.4) and f[0, conf("right_hand")] == 0
    assert f[0, conf("mid_hip")] == 0 and f[0, pos_x("mid_hip")] == 0
    assert f[1, conf("neck")] == pytest.approx(0.6)  # tick 5 shows frame 12: nobody
    counts = v.meta.extra["pose"]
    assert counts["ticks_without_person"] == 2 and counts["source_frames_without_person"] == 2
    assert counts["missing_joint_ticks"]["right_hand"] == 25
    w = fs.load("0009")  # no video beside: iMiGUE's 25 fps; 30 frames -> 12 ticks -> 3 steps
    assert w.meta.source_fps == 25.0 and w.features.shape == (3, C)
    assert w.meta.extra["fps_from"] == "--source-fps"


def light_hand_csv(path: Path, kp: np.ndarray, tips: np.ndarray) -> None:
    """MiGA's `_light_hand.csv`: a header, then BODY_25 and 5 right, 5 left fingertips per row."""
    rows = ["," .join(f"c{i}" for i in range(105))]
    for body, hand in zip(kp[:, :25], tips, strict=True):
        rows.append(",".join(f"{v:g}" for v in np.concatenate([body, hand]).reshape(-1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def test_openpose_table_run_and_bad_row(tmp_path):
    root = tmp_path / "imigue"
    kp = openpose_figure(40, hands=False)
    tips = np.zeros((40, 10, 3), np.float32)
    tips[:, :5] = [(400, 600, 0.9), (410, 600, 0.9), (420, 600, 0.7), (430, 600, 0.9),
                   (440, 600, 0.9)]  # right thumb, index, middle, ring, little tips
    tips[:20, 5:] = [(600, 610, 0.5)] * 5
    light_hand_csv(root / "0008" / "0008_light_hand.csv", kp, tips)
    (root / "0008" / "0008_light.csv").write_text("not read: the light_hand table wins\n")
    light_hand_csv(root / "0010" / "0010_light_hand.csv", kp, tips)
    bad = (root / "0010" / "0010_light_hand.csv").read_text().splitlines()
    bad[3] = bad[3].replace("0.8", "x", 1)
    (root / "0010" / "0010_light_hand.csv").write_text("\n".join(bad) + "\n")
    assert find_imigue_keypoints(root)["0008"].name == "0008_light_hand.csv"
    s = run_pose_extraction(OpenPoseSource(root), tmp_path / "out", progress=False)
    assert s.done == ["0008"] and list(s.failed) == ["0010"]
    assert "0010_light_hand.csv, row 4: 'x' is not a number" in s.failed["0010"]
    assert "0010" in FeatureSet.open(s.featureset).failures()
    f = FeatureSet.open(s.featureset).load("0008").features
    # 40 frames at 25 fps -> 16 ticks -> 4 steps; the right hand from the 4 finger tips
    assert f.shape == (4, C)
    assert f[0, pos_x("right_hand")] == pytest.approx((425 - 500) / 120)
    assert f[0, pos_x("right_hand") + 1] == pytest.approx((600 - 300) / 120)
    assert f[0, conf("right_hand")] == pytest.approx(0.7)
    assert f[0, conf("left_hand")] == pytest.approx(0.5) and f[3, conf("left_hand")] == 0


def test_classify_keeps_its_names_and_error_type(tmp_path):
    from classify.data.openpose import read_keypoints
    from detect.data.converters.common import DatasetError

    (tmp_path / "k.csv").write_text("1,2\n")
    with pytest.raises(DatasetError, match=r"k\.csv, row 1: 2 columns"):
        read_keypoints(tmp_path / "k.csv")


# ---------------------------------------------------------------- BlazePose


def blazepose_landmarks(n: int) -> np.ndarray:
    """(n, 33, 4) normalised landmarks of a 640x480 frame; frame 1 (if any) finds nobody."""
    lm = np.zeros((n, 33, 4), np.float32)
    lm[:, :, :2] = 0.5
    lm[:, :, 3] = 0.9
    at = {"nose": (0.5, 0.2), "left_shoulder": (0.6, 0.4), "right_shoulder": (0.4, 0.4),
          "left_pinky": (0.7, 0.7), "left_index": (0.72, 0.68), "left_hip": (0.55, 0.8),
          "right_hip": (0.45, 0.8)}
    for name, xy in at.items():
        lm[:, BLAZEPOSE_33.index(name), :2] = xy
    lm[:, BLAZEPOSE_33.index("left_index"), 3] = 0.3
    lm[:, BLAZEPOSE_33.index("right_shoulder"), 0] += 0.01 * np.arange(n)
    lm[1:2] = 0
    return lm


def test_blazepose_conversion():
    pts = blazepose_points(blazepose_landmarks(4), 640, 480)
    assert pts.shape == (4, 33, 3)
    assert pts[0, BLAZEPOSE_33.index("nose")].tolist() == pytest.approx([320, 96, 0.9])
    assert (pts[1] == 0).all()
    common = to_common(pts, BLAZEPOSE)
    assert common.shape == (4, J, 3)
    assert common[0, idx("neck")].tolist() == pytest.approx([320, 192, 0.9])  # mid-shoulders
    assert common[2, idx("neck")].tolist() == pytest.approx([(0.42 + 0.6) / 2 * 640, 192, 0.9])
    assert common[0, idx("left_hand")].tolist() == pytest.approx([454.4, 331.2, 0.3])
    assert common[0, idx("mid_hip")].tolist() == pytest.approx([320, 384, 0.9])
    assert (common[1] == 0).all()
    steps = step_features(common, 2, "test")
    # the median shoulder width of frames 0, 2, 3: 128, 115.2, 108.8 px
    assert steps.features.shape == (2, C) and steps.scale == pytest.approx(115.2)
    assert steps.counts["ticks_without_person"] == 1
    with pytest.raises(ValueError, match=r"\(N, 33, 4\)"):
        blazepose_points(np.zeros((2, 25, 4)), 640, 480)


class FakeBlazePose:
    """A pose estimator that finds the figure of `blazepose_landmarks` in every frame."""

    weights = "fake-blazepose"
    weights_sha256 = "0" * 64

    def settings(self):
        return {"fake": True}

    def tracker(self):
        from contextlib import nullcontext

        return nullcontext(lambda frame: blazepose_landmarks(1)[0])


def test_video_source_runs_the_estimator_on_10fps_frames(tmp_path):
    (tmp_path / "v").mkdir()
    video = write_noise_video(tmp_path / "v" / "Sample0005_color.mp4", 2.0, fps=25)
    pts, res = video_points(video, 10.0, FakeBlazePose())
    assert pts.shape == (res.num_frames, 33, 3) and pts[0, 0].tolist() == pytest.approx(
        [32, 9.6, 0.9])  # 64x48 frames
    s = run_pose_extraction(VideoSource([tmp_path / "v"], FakeBlazePose()), tmp_path / "out",
                            progress=False)
    assert s.ok and s.done == ["Sample0005"]
    v = FeatureSet.open(s.featureset).load("Sample0005")
    assert v.meta.model == "blazepose-33-full" and v.features.shape == (res.num_frames // 4, C)
    assert v.meta.source_fps == 25.0


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None,
                    reason="mediapipe is installed")
def test_videos_without_mediapipe_say_how_to_install(tmp_path):
    video = write_noise_video(tmp_path / "v.mp4", 0.5, fps=10)
    r = CliRunner().invoke(app, ["pose", str(video), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "pip install -e '.[pose]'" in r.output
    assert not (tmp_path / "out").exists()


def test_blazepose_with_mediapipe(tmp_path):
    pytest.importorskip("mediapipe")
    from extract.pose.mediapipe_pose import BlazePose

    est = BlazePose()
    assert len(est.weights_sha256) == 64
    video = write_noise_video(tmp_path / "v.mp4", 1.0, fps=10)
    pts, res = video_points(video, 10.0, est)
    assert pts.shape == (res.num_frames, 33, 3)


def test_cli_usage_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["pose", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "give videos, or --dataset" in r.output
    r = runner.invoke(app, ["pose", "--out", str(tmp_path), "--dataset", "ntu", str(tmp_path)])
    assert r.exit_code == 2 and "smg or imigue" in r.output
    r = runner.invoke(app, ["pose", "--out", str(tmp_path / "o"), "--dataset", "smg",
                            str(tmp_path)])
    assert r.exit_code == 2 and "no SMG skeletons" in r.output


# ---------------------------------------------------------------- joint tables


def test_joint_tables_cover_the_common_joints_with_valid_points():
    assert set(LAYOUTS) == {"kinect-v2-25", "openpose-body25", "blazepose-33-full"}
    assert (len(KINECT_V2), len(BLAZEPOSE_33), OPENPOSE.num_points) == (25, 33, NUM_KEYPOINTS)
    for layout in (KINECT, OPENPOSE, BLAZEPOSE):
        assert tuple(layout.table) == COMMON_JOINTS, layout.model
        for name, alternatives in layout.table.items():
            assert alternatives and all(group for group in alternatives), (layout.model, name)
            assert all(0 <= i < layout.num_points for g in alternatives for i in g)
    assert KINECT_V2[KINECT.table["neck"][0][0]] == "SpineShoulder"
    assert KINECT_V2[KINECT.table["left_hand"][0][0]] == "HandL"
    assert BODY_25[OPENPOSE.table["right_wrist"][0][0]] == "right_wrist"
    assert [BLAZEPOSE_33[i] for i in BLAZEPOSE.table["left_hand"][0]] == ["left_pinky",
                                                                         "left_index"]
    assert len(feature_names()) == C and feature_names()[conf("head")] == "conf:head"
