import copy
import json

import numpy as np
import pytest

from detect.data.annotations import AnnotationError, load_annotations, save_annotations
from extract.cache import FeatureMeta, FeatureSet, write_video
from extract.io import atomic_write_json


def _data() -> dict:
    return {
        "classes": ["rub", "fold", "akimbo"],
        "database": {
            "v1": {
                "subset": "train",
                "duration": 20.0,
                "fps": 30.0,
                "annotations": [
                    {"label": "fold", "label_id": 1, "segment": [1.0, 2.5]},
                    {"label": "rub", "label_id": 0, "segment": [2.0, 2.0]},  # zero length
                    {"label": "akimbo", "label_id": 2, "segment": [1.5, 4.0]},  # overlaps
                ],
            },
            "v2": {"subset": "test", "duration": 5, "fps": 25, "annotations": []},
        },
    }


def _write(tmp_path, data) -> object:
    p = tmp_path / "annotations.json"
    p.write_text(json.dumps(data))
    return p


def test_load_roundtrip_and_subset(tmp_path):
    ann = load_annotations(_write(tmp_path, _data()))
    assert ann.classes == ["rub", "fold", "akimbo"]
    v1 = ann.videos["v1"]
    assert v1.segments.dtype == np.float64 and v1.segments.shape == (3, 2)
    np.testing.assert_array_equal(v1.labels, [1, 0, 2])
    assert v1.labels.dtype == np.int64
    assert ann.videos["v2"].segments.shape == (0, 2) and ann.videos["v2"].fps == 25.0
    assert list(ann.subset("test").videos) == ["v2"]
    assert ann.num_instances() == 3
    with pytest.raises(AnnotationError, match="subset 'dev'"):
        ann.subset("dev")
    out = tmp_path / "again.json"
    save_annotations(out, ann)
    again = load_annotations(out)
    assert again.classes == ann.classes
    np.testing.assert_array_equal(again.videos["v1"].segments, v1.segments)
    assert json.loads(out.read_text()) == json.loads(json.dumps(ann.to_dict()))


def _broken(mutate) -> dict:
    d = copy.deepcopy(_data())
    mutate(d)
    return d


def _entry(d, i=0):
    return d["database"]["v1"]["annotations"][i]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: _entry(d, 2).update(segment=[4.0, 3.0]), "annotation 2: end 3.0 is before"),
        (lambda d: _entry(d).update(label="wave"), "annotation 0: unknown label 'wave'"),
        (lambda d: _entry(d).update(label_id=3), r"annotation 0: label_id 3 out of range"),
        (lambda d: _entry(d).update(label_id=2), "annotation 0: label 'fold' and label_id 2"),
        (lambda d: _entry(d, 1).update(segment=[-0.5, 1.0]), "annotation 1: negative start"),
        (lambda d: d["database"]["v1"].update(subset="training"), "video 'v1': subset 'training'"),
        (lambda d: d["database"]["v2"].pop("fps"), "video 'v2': key 'fps' is missing"),
        (lambda d: _entry(d, 1).pop("segment"), "annotation 1: key 'segment' is missing"),
        (lambda d: _entry(d).update(segment=[1.0]), "annotation 0: segment must be"),
        (lambda d: _entry(d).update(segment=[1.0, "x"]), "annotation 0, segment end"),
        (lambda d: _entry(d).update(label_id=1.0), "annotation 0: label_id must be an integer"),
        (lambda d: d.pop("classes"), "key 'classes' is missing"),
        (lambda d: d.update(classes=["a", "a"]), "duplicate class"),
    ],
)
def test_errors_name_file_video_and_entry(tmp_path, mutate, message):
    path = _write(tmp_path, _broken(mutate))
    with pytest.raises(AnnotationError, match=message) as info:
        load_annotations(path)
    assert str(path) in str(info.value)


def test_bad_json_and_missing_file(tmp_path):
    p = tmp_path / "annotations.json"
    p.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_annotations(p)
    with pytest.raises(AnnotationError, match="not found"):
        load_annotations(tmp_path / "nope.json")


def test_video_missing_from_feature_set(tmp_path):
    fs = FeatureSet.create(tmp_path / "feats", "t", {"fps": 10.0, "stride": 4})
    meta = FeatureMeta(
        video_id="v1", fps=10.0, stride=4, source_path="v1.mp4", source_fps=30.0, duration=2.0,
        num_frames=20, model="synthetic", weights="none", weights_sha256="", layers=["x"],
        mgdet_version="0",
    )
    write_video(fs.video_path("v1"), np.zeros((5, 4)), np.arange(5.0), meta)
    atomic_write_json(fs.path / "failures.json", {"v2": "cannot decode"})
    path = _write(tmp_path, _data())
    with pytest.raises(AnnotationError, match="'v2' \\(extraction failed: cannot decode\\)"):
        load_annotations(path, feature_set=fs)
    load_annotations(path)  # without a feature set nothing is checked
