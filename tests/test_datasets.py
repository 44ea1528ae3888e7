import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detect.apps.convert import app
from detect.data.converters.activitynet import convert_activitynet
from detect.data.converters.common import (
    DatasetError,
    frames_to_seconds,
    parse_split_spec,
    seconds_to_frames,
    summarize,
)
from detect.data.converters.imigue import IMIGUE_CLASSES, convert_imigue
from detect.data.converters.smg import SMG_CLASSES, convert_smg, find_videos
from extract.pipeline import video_id_from_path

# ---------------------------------------------------------------------------------------------
# frame <-> second convention


@pytest.mark.parametrize("fps", [25.0, 30.0, 28.57, 30000 / 1001])
@pytest.mark.parametrize("base", [0, 1])
def test_frames_seconds_round_trip(fps, base):
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a = int(rng.integers(base, 40_000))
        b = a + int(rng.integers(0, 600))
        s, e = frames_to_seconds(a, b, fps, base)
        assert e - s == pytest.approx((b - a + 1) / fps)
        assert seconds_to_frames(s, e, fps, base) == (a, b)


def test_frame_convention_by_hand():
    # Frames 0..29 at 30 fps are the first second; a single frame lasts one frame period.
    assert frames_to_seconds(0, 29, 30.0) == (0.0, 1.0)
    assert frames_to_seconds(1, 30, 30.0, base=1) == (0.0, 1.0)
    assert frames_to_seconds(15, 15, 30.0) == (0.5, pytest.approx(16 / 30))
    assert seconds_to_frames(0.0, 1.0, 30.0) == (0, 29)
    # A zero-length segment still names one frame; the end never precedes the start.
    assert seconds_to_frames(2.0, 2.0, 25.0) == (50, 50)
    assert seconds_to_frames(0.51, 0.52, 10.0, base=1) == (6, 6)


def test_split_spec():
    assert parse_split_spec("train=1-3,5;val=4 test=6") == {
        "train": [1, 2, 3, 5], "val": [4], "test": [6],
    }  # fmt: skip
    with pytest.raises(ValueError, match="both"):
        parse_split_spec("train=1-3;val=3")
    with pytest.raises(ValueError, match="bad split"):
        parse_split_spec("training=1-3")


# ---------------------------------------------------------------------------------------------
# SMG


def _smg_seq(root: Path, vid: str, labels: str | None, frames: int = 900, fps: str = "30"):
    d = root / vid
    d.mkdir(parents=True)
    (d / f"{vid}_color.mp4").write_bytes(b"")
    (d / f"{vid}_data.csv").write_text(f"{frames},{fps},4000\n")
    (d / f"{vid}_skeleton.csv").write_text("0\n")
    if labels is not None:
        (d / f"{vid}_finelabels.csv").write_text(labels)
    return d


@pytest.fixture
def smg_root(tmp_path):
    root = tmp_path / "smg"
    _smg_seq(root / "smg_rgb_train", "Sample0001", "15,100,176\n5,1,30\n17,300,300\n")
    _smg_seq(root / "smg_rgb_train", "Sample0002", "9,10,39\n9,20,50\n", fps="28")
    _smg_seq(root / "smg_rgb_validate", "Sample0031", "1,899,899\n")
    _smg_seq(root / "Phase2" / "smg_rgb_test", "Sample0036", None)  # hidden test labels
    return root


def test_smg_nested_release(smg_root, tmp_path):
    out = tmp_path / "ann.json"
    ann = convert_smg(smg_root, out, verbose=False)
    assert json.loads(out.read_text()) == ann
    assert ann["classes"] == list(SMG_CLASSES)
    assert len(SMG_CLASSES) == 17 and SMG_CLASSES[16] == "illustrative hand gestures"
    db = ann["database"]
    assert {k: v["subset"] for k, v in db.items()} == {
        "Sample0001": "train", "Sample0002": "train", "Sample0031": "val", "Sample0036": "test",
    }  # fmt: skip
    s1 = db["Sample0001"]
    assert s1["fps"] == 30.0 and s1["duration"] == 30.0
    # Sorted by start; frames inclusive, base 0.
    assert s1["annotations"] == [
        {"label": "moving legs", "label_id": 4, "segment": [1 / 30, 31 / 30]},
        {"label": "pulling shirt collar", "label_id": 14, "segment": [100 / 30, 177 / 30]},
        {"label": "illustrative hand gestures", "label_id": 16, "segment": [10.0, 301 / 30]},
    ]
    s2 = db["Sample0002"]
    assert s2["fps"] == 28.0 and s2["duration"] == pytest.approx(900 / 28)
    # Overlapping instances are kept.
    assert [a["segment"] for a in s2["annotations"]] == [[10 / 28, 40 / 28], [20 / 28, 51 / 28]]
    assert db["Sample0031"]["annotations"][0]["segment"] == [899 / 30, 30.0]
    assert db["Sample0036"]["annotations"] == []


def test_smg_frame_base_one(smg_root):
    ann = convert_smg(smg_root, None, frame_base=1, verbose=False)
    segs = [a["segment"] for a in ann["database"]["Sample0001"]["annotations"]]
    assert segs[1] == [99 / 30, 176 / 30]
    # Frame 0 does not exist with base 1.
    (smg_root / "smg_rgb_train/Sample0001/Sample0001_finelabels.csv").write_text("5,0,29\n")
    with pytest.raises(DatasetError, match=r"Sample0001_finelabels\.csv, line 1: start frame 0"):
        convert_smg(smg_root, None, frame_base=1, verbose=False)


def test_smg_videos_and_ids(smg_root):
    vids = find_videos(smg_root)
    assert [video_id_from_path(p) for p in vids] == [
        "Sample0001", "Sample0002", "Sample0031", "Sample0036",
    ]  # fmt: skip
    assert all(p.name.endswith("_color.mp4") for p in vids)
    assert video_id_from_path("/x/Sample0007_color.mp4") == "Sample0007"
    assert video_id_from_path("other.mp4") == "other"


@pytest.mark.parametrize(
    "row, message",
    [
        ("3,10", "expected 3 columns, got 2"),
        ("3,10,20,5", "expected 3 columns, got 4"),
        ("x,10,20", "class 'x' is not a number"),
        ("3,ten,20", "start frame 'ten' is not a number"),
        ("3,10.5,20", "is not an integer"),
        ("3,20,10", "end frame 10 is before start frame 20"),
        ("18,10,20", "unknown class 18"),
        ("0,10,20", "unknown class 0"),
        ("3,10,900", "beyond the video's 900 frames"),
        ("3,-1,5", "before the first frame"),
    ],
)
def test_smg_malformed_rows_name_file_and_line(tmp_path, row, message):
    d = _smg_seq(tmp_path, "Sample0003", f"1,0,5\n\n{row}\n")
    with pytest.raises(DatasetError) as e:
        convert_smg(tmp_path, None, verbose=False)
    text = str(e.value)
    assert str(d / "Sample0003_finelabels.csv") in text
    assert "line 3" in text and message in text


def test_smg_bad_data_csv(tmp_path):
    _smg_seq(tmp_path, "Sample0003", "1,0,5\n", frames="lots")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=r"Sample0003_data\.csv, line 1: numFrames 'lots'"):
        convert_smg(tmp_path, None, verbose=False)


def test_smg_duplicate_sequence_is_an_error(tmp_path):
    _smg_seq(tmp_path / "a", "Sample0001", "1,0,5\n")
    _smg_seq(tmp_path / "b", "Sample0001", "1,0,5\n")
    with pytest.raises(DatasetError, match=r"Sample0001 found twice, in .*a.*Sample0001 and in"):
        convert_smg(tmp_path, None, verbose=False)


def test_smg_split_options(smg_root):
    with pytest.raises(DatasetError, match="Sample0036 is in no subset"):
        convert_smg(smg_root, None, split="train=1-2;val=31", verbose=False)
    ann = convert_smg(smg_root, None, split="train=31,36;test=1-2", verbose=False)
    assert ann["database"]["Sample0001"]["subset"] == "test"
    mapping = {"Sample0001": "val", "Sample0002": "train", "Sample0031": "train",
               "Sample0036": "test"}  # fmt: skip
    ann = convert_smg(smg_root, None, split=mapping, verbose=False)
    assert {k: v["subset"] for k, v in ann["database"].items()} == mapping


def test_smg_custom_classes_and_summary(smg_root, capsys):
    with pytest.raises(DatasetError, match="unknown class 15"):
        convert_smg(smg_root, None, classes=["a", "b"], verbose=False)
    ann = convert_smg(smg_root, None)
    printed = capsys.readouterr().out
    text = summarize(ann)
    assert text in printed and "1 sequences without labels: Sample0036" in printed
    width = max(map(len, SMG_CLASSES))
    lines = {ln[5 : 5 + width].strip(): ln.split() for ln in text.splitlines()}
    # Arms akimbo (id 8): 2 train instances, 0 val, 0 test, 2 total.
    assert lines["arms akimbo"][-4:] == ["2", "0", "0", "2"]
    assert lines["turtling neck and shoulder"][-4:] == ["0", "1", "0", "1"]
    assert lines["instances"][-4:] == ["5", "1", "0", "6"]
    assert lines["videos"][-4:] == ["2", "1", "1", "4"]


# ---------------------------------------------------------------------------------------------
# iMiGUE

HEADER = (
    "video_id,label_id,start_time,start_frame,end_time,end_frame,class,subject_id,"
    "subject_gender,subject_nationality,win_or_lose\n"
)


def _orig_csv(path: Path, extra: str = "") -> Path:
    path.write_text(
        HEADER
        + "371,1,6.8553,171,9.8553,246,20,1,F,United States,Win\n"
        + "371,2,9.8954,247,12.7597,318,99,1,F,United States,Win\n"
        + "184,1,24.0763,601,27.4979,687,23,2,F,Australia,Win\n"
        + "184,2,27.2536,681,29.8911,747,24,2,F,Australia,Win\n"
        + extra
    )
    return path


def _write_mp4(path: Path, frames: int, fps: int = 25) -> None:
    import av

    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=Fraction(fps))
        st.width, st.height, st.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            img = np.full((32, 32, 3), 8 * i % 256, np.uint8)
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)


def test_imigue_original_csv_only(tmp_path):
    csv = _orig_csv(tmp_path / "labels_20200831.csv")
    ann = convert_imigue(csv, None, verbose=False)
    assert ann["classes"] == list(IMIGUE_CLASSES) and len(IMIGUE_CLASSES) == 32
    db = ann["database"]
    # Subject 2 is a training subject of the official protocol, subject 1 is not.
    assert db["0184"]["subset"] == "train" and db["0371"]["subset"] == "test"
    a = db["0371"]["annotations"]
    assert a[0] == {"label": "moving torso", "label_id": 19, "segment": [171 / 25, 247 / 25]}
    assert a[1]["label_id"] == 31 and a[1]["label"] == "illustrative hand gestures"
    # Overlapping instances (681..687) are kept; no video: duration is the last label's end.
    b = db["0184"]["annotations"]
    assert len(b) == 2 and b[1]["segment"][0] < b[0]["segment"][1]
    assert db["0184"]["duration"] == 748 / 25 and db["0184"]["fps"] == 25.0
    # Same result when the CSV lies in a folder given as the root; custom subject split.
    ann2 = convert_imigue(tmp_path, None, split="train=1;val=rest", verbose=False)
    assert ann2["database"]["0371"]["subset"] == "train"
    assert ann2["database"]["0184"]["subset"] == "val"
    assert ann2["database"]["0371"]["annotations"] == a


@pytest.mark.parametrize(
    "row, message",
    [
        ("371,3,1,10,2,20,7,1,F,US\n", "expected 11 columns, got 10"),
        ("371,3,1,10,2,5,7,1,F,US,Win\n", "end frame 5 is before start frame 10"),
        ("371,3,1,10,2,20,33,1,F,US,Win\n", "unknown class 33"),
        ("371,3,1,x,2,20,7,1,F,US,Win\n", "start_frame 'x' is not a number"),
        ("371,3,1,10,2,20,7,2,F,US,Win\n", "video 0371 has subject 2, earlier rows say 1"),
    ],
)
def test_imigue_original_csv_errors(tmp_path, row, message):
    csv = _orig_csv(tmp_path / "labels_20200831.csv", extra=row)
    with pytest.raises(DatasetError) as e:
        convert_imigue(csv, None, verbose=False)
    assert f"{csv}, line 6: " in str(e.value) and message in str(e.value)


def test_imigue_per_video_release(tmp_path):
    root = tmp_path / "imigue"
    (root / "0371").mkdir(parents=True)
    (root / "0371/0371_label.csv").write_text("20,0,3\n99,2,9\n")
    _write_mp4(root / "0371/0371.mp4", frames=10)
    (root / "0184").mkdir()
    (root / "0184/0184_label.csv").write_text("23,100,140\n")
    _orig_csv(root / "labels_20200831.csv")
    ann = convert_imigue(root, tmp_path / "a.json", verbose=False)
    db = ann["database"]
    # Labels from the per-video files, subjects from the original CSV, duration from the video.
    assert db["0371"]["duration"] == pytest.approx(10 / 25)
    assert [a["segment"] for a in db["0371"]["annotations"]] == [[0.0, 4 / 25], [2 / 25, 10 / 25]]
    assert [a["label_id"] for a in db["0371"]["annotations"]] == [19, 31]
    assert db["0184"]["annotations"][0]["segment"] == [4.0, 141 / 25]
    assert db["0184"]["subset"] == "train" and db["0371"]["subset"] == "test"
    # A label beyond the video's 10 frames.
    (root / "0371/0371_label.csv").write_text("20,0,3\n99,2,10\n")
    with pytest.raises(DatasetError, match=r"0371_label\.csv, line 2: end frame 10 is beyond"):
        convert_imigue(root, None, verbose=False)


def test_imigue_needs_subjects_or_mapping(tmp_path):
    (tmp_path / "0005").mkdir()
    (tmp_path / "0005/0005_label.csv").write_text("1,0,3\n")
    with pytest.raises(DatasetError, match="no subject id for video 0005"):
        convert_imigue(tmp_path, None, verbose=False)
    ann = convert_imigue(tmp_path, None, split={"0005": "val"}, verbose=False)
    assert ann["database"]["0005"]["subset"] == "val"


# ---------------------------------------------------------------------------------------------
# ActivityNet-style JSON


def _anet(path: Path, db: dict) -> Path:
    path.write_text(json.dumps({"version": "1.3", "database": db}))
    return path


def test_activitynet_conversion(tmp_path):
    src = _anet(
        tmp_path / "anet.json",
        {
            "v1": {"subset": "training", "duration": 20.0, "fps": 25, "annotations": [
                {"label": "b", "segment": [5.0, 7.5]}, {"label": "a", "segment": [1.0, 2.0]}]},
            "v2": {"subset": "validation", "duration": 10.0, "annotations": [
                {"label": "c", "segment": [0.0, 0.0]}]},
            "v3": {"subset": "testing", "duration": 8.0, "annotations": []},
        },
    )  # fmt: skip
    ann = convert_activitynet(src, tmp_path / "out.json", default_fps=30.0, verbose=False)
    assert ann["classes"] == ["a", "b", "c"]
    db = ann["database"]
    assert [db[v]["subset"] for v in ("v1", "v2", "v3")] == ["train", "val", "test"]
    assert db["v1"]["fps"] == 25.0 and db["v2"]["fps"] == 30.0
    assert db["v1"]["annotations"] == [
        {"label": "a", "label_id": 0, "segment": [1.0, 2.0]},
        {"label": "b", "label_id": 1, "segment": [5.0, 7.5]},
    ]
    assert json.loads((tmp_path / "out.json").read_text()) == ann


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"subset": "train2", "duration": 1.0}, "video v: subset 'train2'"),
        ({"subset": "training"}, "video v: 'duration' is missing"),
        ({"subset": "training", "duration": 9, "annotations": [{"label": "a"}]},
         "video v, annotation 1: needs 'label' and 'segment'"),
        ({"subset": "training", "duration": 9, "annotations": [
            {"label": "a", "segment": [1, 2]}, {"label": "a", "segment": [3, 2]}]},
         "video v, annotation 2: segment end 2.0 is before start 3.0"),
        ({"subset": "training", "duration": 9, "annotations": [{"label": "a", "segment": [1]}]},
         "annotation 1: segment [1] is not [start, end]"),
        ({"subset": "training", "duration": 9, "annotations": [
            {"label": "a", "segment": ["x", 2]}]}, "segment time 'x' is not a finite number"),
    ],
)  # fmt: skip
def test_activitynet_errors(tmp_path, entry, message):
    src = _anet(tmp_path / "anet.json", {"v": entry})
    with pytest.raises(DatasetError) as e:
        convert_activitynet(src, None, verbose=False)
    assert str(src) in str(e.value) and message in str(e.value)


def test_activitynet_bad_json(tmp_path):
    src = tmp_path / "x.json"
    src.write_text('{"database": {\n"v": }')
    with pytest.raises(DatasetError, match=r"x\.json, line 2: not valid JSON"):
        convert_activitynet(src, None, verbose=False)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_commands(smg_root, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.json"
    res = runner.invoke(app, ["smg", str(smg_root), "--out", str(out), "--frame-base", "1"])
    assert res.exit_code == 0, res.output
    assert "moving legs" in res.output
    seg = json.loads(out.read_text())["database"]["Sample0001"]["annotations"][1]["segment"]
    assert seg == [99 / 30, 176 / 30]
    names = tmp_path / "names.txt"
    names.write_text("one\ntwo\n")
    res = runner.invoke(app, ["smg", str(smg_root), "--out", str(out), "--classes", str(names)])
    assert res.exit_code == 2 and "unknown class" in res.output
    src = _anet(tmp_path / "a.json", {"v": {"subset": "testing", "duration": 3.0}})
    res = runner.invoke(app, ["activitynet", str(src), "--out", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text())["database"]["v"]["subset"] == "test"
    csv = _orig_csv(tmp_path / "labels_20200831.csv")
    res = runner.invoke(app, ["imigue", str(csv), "--out", str(out)])
    assert res.exit_code == 0 and set(json.loads(out.read_text())["database"]) == {"0184", "0371"}


def test_smg_without_data_csv_reads_the_video(tmp_path):
    d = tmp_path / "Sample0002"
    d.mkdir()
    _write_mp4(d / "Sample0002_color.mp4", frames=12, fps=30)
    (d / "Sample0002_finelabels.csv").write_text("2,3,11\n")
    ann = convert_smg(tmp_path, None, verbose=False)
    v = ann["database"]["Sample0002"]
    assert v["fps"] == 30.0 and v["duration"] == pytest.approx(0.4)
    assert v["annotations"][0]["segment"] == [0.1, 0.4]
    (d / "Sample0002_finelabels.csv").write_text("2,3,12\n")
    with pytest.raises(DatasetError, match="line 1: end frame 12 is beyond the video's 12 frames"):
        convert_smg(tmp_path, None, verbose=False)
    (d / "Sample0002_color.mp4").write_bytes(b"not a video")
    with pytest.raises(DatasetError, match=r"Sample0002_color\.mp4: not a readable video"):
        convert_smg(tmp_path, None, verbose=False)
