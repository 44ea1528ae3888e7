"""Configuration as plain dataclasses, loaded from TOML with `section.key=value` overrides.

The one loader of every stage (`detect` and `classify` configs use it too): unknown keys, values
of the wrong type and choices outside a `Literal[...]` are errors naming the key, so a typo in a
config never silently falls back to a default. `ExtractConfig` is stage one's own config.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomllib

from extract.decode import DecodeSettings

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is malformed."""


# The feature backbones (extract.i3d): pytorchvideo's ResNet-50 I3D, and DeepMind's
# Inception-v1 I3D with AFSD's MaxPool3d_5a (temporal stride 4, so no stride 2).
Model = Literal["i3d_r50", "inception_i3d"]


@dataclass
class ExtractConfig:
    """Resolved options of one extraction run (see `python -m extract features --help`)."""

    weights: str = "kinetics"
    seed: int = 0
    stride: int = 4
    short_side: int = 256
    crop: int = 224
    res4: bool = False
    dtype: str = "float16"
    chunk_frames: int | None = None
    device: str = "auto"
    workers: int = 1
    batch_chunks: int = 4
    fps: float = 10.0
    save_frames: bool = False
    frames_short_side: int = 0  # 0: the same as short_side
    threads: int = 0  # torch CPU threads; 0: extract/threads.py's policy (no cap: I3D is large)
    model: Model = "i3d_r50"

    def __post_init__(self) -> None:
        if self.model not in typing.get_args(Model):
            raise ValueError(f"model must be one of {', '.join(typing.get_args(Model))}, got "
                             f"{self.model!r}")
        if self.model == "inception_i3d" and self.stride % 4:
            raise ValueError(f"stride {self.stride} is finer than inception_i3d's temporal "
                             "stride of 4 frames: use 4 or 8")
        if self.frames_short_side < 0:
            raise ValueError(f"frames_short_side must be >= 0, got {self.frames_short_side}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")
        if self.stride not in (2, 4, 8):
            raise ValueError(f"stride must be 2, 4 or 8, got {self.stride}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        DecodeSettings(self.fps, self.short_side, self.crop)  # validates



def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting int to float where a float is due."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ConfigError(f"{where}: {value!r} is not one of "
                              f"{', '.join(str(c) for c in choices)}")
        return value
    return _coerce_plain(value, tp, where)


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    for arg in typing.get_args(tp):
        try:
            return _coerce(value, arg, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: {value!r} is not a {tp}")


def _coerce_plain(value: Any, tp: Any, where: str) -> Any:
    """None, bool, int, float, str: ints become floats where a float is due, never bools."""
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected none, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def positive(v: float) -> bool:
    return v > 0


def at_least_1(v: int) -> bool:
    return v >= 1


def nonnegative(v: float) -> bool:
    return v >= 0


def fraction(v: float) -> bool:  # [0, 1)
    return 0 <= v < 1


Ranges = dict[str, tuple[Callable[[Any], bool], str]]


def check_ranges(cfg: Any, ranges: Ranges) -> None:
    """ConfigError naming the first dotted key of `ranges` whose value fails its test:
    "{key}: must be {rule}, got {value}"."""
    for key, (ok, rule) in ranges.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise ConfigError(f"{key}: must be {rule}, got {value!r}")


def build_dataclass(cls: type[T], data: dict[str, Any]) -> T:
    """`cls` from a nested dict, with the checks of `load_dataclass` (no `check`)."""
    return _build(cls, data, "")


def _parse_value(text: str) -> Any:
    """A TOML value (`3`, `1e-4`, `true`, `"x"`, `[1, 2]`), or the bare text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_nested(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a table")
    node[parts[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict; a top-level `base = "other.toml"` (relative to the file) is read
    first and this file's keys override it, so ablations state only what they change."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `base` chain loops back to itself")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from e
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be a path string")
    if not (path.parent / base).is_file():
        raise ConfigError(f"{path}: base config {base!r} not found (looked for "
                          f"{path.parent / base})")
    return _merge(read_toml(path.parent / base, (*_seen, path.resolve())), data)


def load_dataclass(
    cls: type[T], path: Path | str | None = None, overrides: list[str] | None = None,
    check: Callable[[T], None] | None = None,
) -> T:
    """Defaults of dataclass `cls`, then the TOML at `path` (and its `base`), then
    `section.key=value` overrides; unknown keys and wrong types are ConfigErrors, and `check`
    validates each step. Shared by `detect` and `classify` configs."""

    def checked(data: dict[str, Any]) -> T:
        cfg = _build(cls, copy.deepcopy(data), "")
        if check is not None:
            check(cfg)
        return cfg

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path)
        try:
            checked(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e
    # One override at a time, so an error names the --set that caused it, not the file.
    cfg = checked(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        try:
            _set_nested(data, key.strip(), _parse_value(value.strip()))
            cfg = checked(data)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from e
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of scalars, lists and tables as TOML (enough for our configs)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise ConfigError(f"cannot write {v!r} as TOML")

    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        plain = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix and plain:
            lines.append(f"[{prefix}]")
        for k, v in plain.items():
            lines.append(f"{k} = {scalar(v)}")
        if plain:
            lines.append("")
        for k, v in subs.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines)
