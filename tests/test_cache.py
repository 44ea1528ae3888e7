import json

import numpy as np
import pytest

from extract.cache import (
    CacheError,
    FeatureMeta,
    FeatureSet,
    feature_timestamps,
    read_video,
    settings_key,
    write_video,
)
from extract.io import atomic_write_json


def _meta(vid: str = "v1") -> FeatureMeta:
    return FeatureMeta(
        video_id=vid, fps=10.0, stride=4, source_path="/x.mp4", source_fps=30.0, duration=8.0,
        num_frames=80, model="i3d_r50", weights="random", weights_sha256="ab" * 32,
        layers=["res5"], mgdet_version="0.1.0", extra={"source_size": 12},
    )


def test_timestamps_are_interval_centres():
    ts = feature_timestamps(3, stride=4, fps=10.0)
    np.testing.assert_allclose(ts, [0.2, 0.6, 1.0])


def test_key_depends_on_every_setting_and_is_stable():
    a = settings_key("i3d", {"fps": 10, "stride": 4})
    assert a == settings_key("i3d", {"stride": 4, "fps": 10})
    assert a != settings_key("i3d", {"fps": 10, "stride": 8})
    assert a.startswith("i3d-")


def test_roundtrip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    ts = feature_timestamps(5, 4, 10.0)
    write_video(tmp_path / "v1.h5", feats, ts, _meta(), res4=feats[:, :4], dtype="float32")
    v = read_video(tmp_path / "v1.h5", with_res4=True)
    np.testing.assert_array_equal(v.features, feats)
    np.testing.assert_array_equal(v.res4, feats[:, :4])
    assert v.meta == _meta()
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_float16_default_and_errors(tmp_path):
    feats = np.ones((2, 3), np.float32)
    write_video(tmp_path / "a.h5", feats, feature_timestamps(2, 4, 10.0), _meta("a"))
    assert read_video(tmp_path / "a.h5").features.dtype == np.float32
    with pytest.raises(CacheError, match="timestamps"):
        write_video(tmp_path / "b.h5", feats, np.zeros(3), _meta("b"))
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="bad.h5"):
        read_video(tmp_path / "bad.h5")


def test_feature_set_create_open(tmp_path):
    fs = FeatureSet.create(tmp_path, "i3d", {"fps": 10.0, "stride": 4})
    assert FeatureSet.open(fs.path).key == fs.key
    assert fs.fps == 10.0 and fs.stride == 4
    write_video(fs.video_path("v2"), np.zeros((1, 2)), np.zeros(1), _meta("v2"))
    assert fs.video_ids() == ["v2"]
    with pytest.raises(CacheError, match="v3"):
        fs.load("v3")
    with pytest.raises(CacheError, match="not a feature set"):
        FeatureSet.open(tmp_path)


def test_atomic_json(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_find_single_or_named_feature_set(tmp_path):
    with pytest.raises(CacheError, match="no feature set"):
        FeatureSet.find(tmp_path)
    a = FeatureSet.create(tmp_path, "i3d", {"fps": 10.0, "stride": 4})
    assert FeatureSet.find(tmp_path).key == a.key
    assert FeatureSet.find(a.path).key == a.key
    FeatureSet.create(tmp_path, "i3d", {"fps": 10.0, "stride": 8})
    with pytest.raises(CacheError, match="several"):
        FeatureSet.find(tmp_path)
