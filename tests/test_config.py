import pytest

from detect.config import Config, config_from_dict, load_config
from extract.config import ConfigError, config_to_dict, to_toml


def test_defaults_are_the_paper_settings():
    c = Config()
    assert (c.model.num_queries, c.model.num_points, c.model.num_layers) == (48, 30, 4)
    assert c.model.mamba.layers == 2 and c.model.query_mixer == "mamba_mhsa"
    assert c.data.window == 128 and c.train.lr == 1e-4


def test_toml_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nhidden_dim = 256\n[model.mamba]\nbackend = "torch"\n')
    c = load_config(p, ["train.lr=3e-4", "model.mamba.bidirectional=true", "name=abl"])
    assert c.model.hidden_dim == 256 and c.model.mamba.backend == "torch"
    assert c.train.lr == 3e-4 and c.model.mamba.bidirectional is True and c.name == "abl"


def test_int_is_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, msg",
    [
        ("model.hiden_dim=3", "unknown key"),
        ("modle.x=3", "unknown key"),
        ("model.hidden_dim=1.5", "model.hidden_dim"),
        ("train.amp=1", "train.amp"),
        ("nokey", "section.key=value"),
    ],
)
def test_bad_overrides_are_errors(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [override])


def test_unknown_key_in_file_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[data]\nwindw = 3\n")
    with pytest.raises(ConfigError, match="bad.toml.*windw"):
        load_config(p)


def test_resolved_config_roundtrips_through_toml(tmp_path):
    c = load_config(None, ["model.hidden_dim=64", "eval.iou_thresholds=[0.5]"])
    p = tmp_path / "resolved.toml"
    p.write_text(to_toml(config_to_dict(c)))
    assert load_config(p) == c
    assert config_from_dict(config_to_dict(c)) == c


def test_base_chain_overrides_and_detects_loops(tmp_path):
    (tmp_path / "a.toml").write_text('name = "a"\n[model]\nhidden_dim = 256\nnum_points = 20\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\nname = "b"\n[model]\nnum_points = 12\n')
    c = load_config(tmp_path / "b.toml")
    assert (c.name, c.model.hidden_dim, c.model.num_points) == ("b", 256, 12)
    (tmp_path / "x.toml").write_text('base = "y.toml"\n')
    (tmp_path / "y.toml").write_text('base = "x.toml"\n')
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "x.toml")


def test_shipped_configs_load():
    from pathlib import Path

    from classify.config import load_classify_config

    # configs/classify/ holds the clip classifier's configs, everything else the detector's.
    files = sorted(Path("configs").rglob("*.toml"))
    detector = [f for f in files if "classify" not in f.parts]
    classifier = [f for f in files if "classify" in f.parts]
    assert len(detector) >= 8 and classifier
    for f in detector:
        load_config(f)
    for f in classifier:
        load_classify_config(f)
    # The published classification setting ships as a config (issue 28).
    pub = load_classify_config("configs/classify/published.toml")
    assert (pub.rgb.enabled, pub.rgb.weights, pub.rgb.frames, pub.rgb.size) == (
        True, "kinetics", 16, 224)
    # No shipped config pins CPU threads: they follow the machine unless a user sets them.
    assert all(load_classify_config(f).train.threads == 0 for f in classifier)


def test_a_bad_set_is_blamed_not_the_file(tmp_path):
    p = tmp_path / "good.toml"
    p.write_text("[train]\nepochs = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, ["train.lr=3e-4", "train.epochs=abc"])
    assert str(e.value).startswith("--set train.epochs=abc: train.epochs: expected int")
    assert "good.toml" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^--set train.grad_accum=0: .*must be >= 1"):
        load_config(p, ["train.grad_accum=0"])
    p.write_text("[train]\nepochs = 'x'\n")  # the file's own mistake still names the file
    with pytest.raises(ConfigError, match=r"good.toml: train.epochs: expected int"):
        load_config(p, ["train.lr=1e-3"])


def test_a_missing_base_names_the_file_that_refers_to_it(tmp_path):
    (tmp_path / "abl").mkdir()
    child = tmp_path / "abl" / "child.toml"
    child.write_text('base = "../smg.toml"\n[model]\nnum_points = 12\n')
    with pytest.raises(ConfigError) as e:
        load_config(child)
    msg = str(e.value)
    assert msg.startswith(f"{child}: base config '../smg.toml' not found"), msg


@pytest.mark.parametrize("override, msg", [
    ("model.encoder_layers=-1", "model.encoder_layers must be >= 0"),
    ("model.encoder_kernel=4", "model.encoder_kernel must be odd"),
    ("loss.iou_loss=l2", "loss.iou_loss.*not one of iou, giou, diou"),
])
def test_bad_encoder_settings_are_named(override, msg):
    from detect.config import check_config
    with pytest.raises(ConfigError, match=msg):
        check_config(load_config(None, [override]))
